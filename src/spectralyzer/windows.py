"""FARMS windows: fixed-shape sub-matrices of a layer's matrices (docs/theory.md section 6.1).

Fixed-Aspect-Ratio Matrix Subsampling (FARMS, ICML 2025; released code
``HUST-AI-HYZ/FARMS``, ``LLM_Pruning/lib/sampling.py::fixed_sampling``): the
fitted alpha of an ``N x M`` matrix drifts with ``Q = N/M``, so every matrix is
cut into windows of one shape and their eigenvalues pooled into one ESD.

On an ``N x M`` matrix (``N >= M``, as :func:`spectralyzer.layers.to_matrices`
orients it) the window is ``r x c`` with ``c = min(n_req, M, floor(N / Q'))``
columns and ``r = floor(Q' c)`` rows, so its aspect ratio is ``Q'`` (with
``Q' = 1``, the released setting, ``r = c = min(n_req, N, M)`` exactly as
released).  Along a dimension of size ``d`` with window size ``w`` the offsets are
``0, s, 2s, ...`` with ``s = max(1, floor((d - w) / (K - 1)))``, at most ``K``
of them and none past ``d - w`` (one offset when ``d = w`` or ``K = 1``), so a
matrix gives up to ``K^2`` windows.  Conv layers: each per-kernel-position slice
is cut the same way.  Released settings: LLMs ``n_req = 2000, K = 15``; vision
``n_req = 100, K = 9``; both ``Q' = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .errors import OptionError

FARMS_LLM = (2000, 15)  # released LLM settings (n_req, K), the defaults
FARMS_VISION = (100, 9)  # released image-classification settings


@dataclass(frozen=True)
class FarmsSettings:
    """Window size, positions per dimension and aspect ratio; checked on construction."""

    size: int = FARMS_LLM[0]  # n_req: the window's short side, at most
    windows: int = FARMS_LLM[1]  # K: offsets per dimension
    ratio: float = 1.0  # Q': window rows / window columns

    def __post_init__(self) -> None:
        for key, low in (("size", 2), ("windows", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise OptionError(f"farms_{key}", f"must be an integer >= {low}, not {value!r}")
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise OptionError("farms_ratio", f"must be a number >= 1, not {ratio!r}")
        if not (math.isfinite(ratio) and ratio >= 1.0):
            raise OptionError("farms_ratio", f"must be a finite number >= 1, not {ratio!r}")
        object.__setattr__(self, "ratio", float(ratio))

    def record(self) -> dict[str, Any]:
        return {"size": self.size, "windows": self.windows, "ratio": self.ratio}


@dataclass(frozen=True)
class WindowGrid:
    """The windows of one ``N x M`` matrix: their shape and top-left offsets."""

    rows: int
    cols: int
    row_offsets: tuple[int, ...]
    col_offsets: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)


def offsets(dim: int, size: int, k: int) -> tuple[int, ...]:
    """Start positions of windows of ``size`` along ``dim`` (module docstring)."""
    span = dim - size
    if span <= 0 or k == 1:
        return (0,)
    step = max(1, span // (k - 1))
    return tuple(i * step for i in range(min(k, span // step + 1)))


def window_grid(N: int, M: int, settings: FarmsSettings) -> WindowGrid:
    """The window shape and offsets for an ``N x M`` matrix, ``N >= M``."""
    cols = max(1, min(settings.size, M, math.floor(N / settings.ratio)))
    rows = min(N, max(cols, math.floor(settings.ratio * cols)))
    k = settings.windows
    return WindowGrid(rows, cols, offsets(N, rows, k), offsets(M, cols, k))


def window_views(
    stack: torch.Tensor, grid: WindowGrid, start: int, stop: int
) -> list[torch.Tensor]:
    """Windows ``start .. stop-1`` of a ``(S, N, M)`` stack, as ``r x c`` views (no copy).

    Windows are numbered slice by slice, then row offset, then column offset.
    """
    per_row = len(grid.col_offsets)
    views = []
    for index in range(start, stop):
        piece, rest = divmod(index, grid.count)
        top, left = grid.row_offsets[rest // per_row], grid.col_offsets[rest % per_row]
        views.append(stack[piece, top : top + grid.rows, left : left + grid.cols])
    return views
