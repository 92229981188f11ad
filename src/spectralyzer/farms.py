"""FARMS ESDs computed in batches by the engine (docs/theory.md section 6.1).

The windows of a matrix (:mod:`spectralyzer.windows`) all have one shape, so
they form a ``(num_windows, r, c)`` stack like the engine's stacks of equal
layers: :func:`spectralyzer.engine.gram_eigenvalues` takes them in batches of
at most ``batch_elements`` window entries (the engine's limit; a layer's windows
may span several batches, and windows of equal shape from different layers
share one), on the analysis' device, with the engine's float64 Gram matrices
and exact power-of-two scaling.  Only the windows of one batch are ever
copied, and one layer tensor is held at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import torch

from . import interrupts
from .engine import ESD, gram_eigenvalues
from .io.base import Checkpoint
from .layers import LayerSpec, to_matrices
from .windows import FarmsSettings, WindowGrid, window_grid, window_views

Piece = tuple[LayerSpec, int, int]  # a layer and a range of its window numbers
_NATIVE = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def farms_cost(spec: LayerSpec, settings: FarmsSettings) -> float:
    """Work of a layer's windows in the units of :func:`spectralyzer.pipeline.cost`."""
    grid = window_grid(spec.N, spec.M, settings)
    return float(spec.num_slices * grid.count * (grid.rows * grid.cols**2 + grid.cols**3))


def batches(
    specs: list[LayerSpec], grids: dict[str, WindowGrid], batch_elements: int
) -> Iterator[list[Piece]]:
    """Runs of windows of one shape, at most ``batch_elements`` entries (one window at least)."""
    by_shape: dict[tuple[int, int], list[LayerSpec]] = defaultdict(list)
    for spec in specs:
        by_shape[(grids[spec.name].rows, grids[spec.name].cols)].append(spec)
    for (rows, cols), group in by_shape.items():
        per_batch = max(1, batch_elements // (rows * cols))
        batch: list[Piece] = []
        room = per_batch
        for spec in group:
            total, start = spec.num_slices * grids[spec.name].count, 0
            while start < total:
                take = min(room, total - start)
                batch.append((spec, start, start + take))
                start, room = start + take, room - take
                if room == 0:
                    yield batch
                    batch, room = [], per_batch
        if batch:
            yield batch


def compute_farms_spectra(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    settings: FarmsSettings,
    *,
    device: torch.device | None = None,
    batch_elements: int = 2**25,
    progress: Callable[[list[LayerSpec]], None] | None = None,
) -> dict[str, ESD]:
    """The pooled ESD of every layer's windows, keyed by parameter name.

    ``specs`` must have finite weights (the full ESD tells); eigenvalues beyond
    the float64 range give an ``overflow`` ESD.  ``progress`` is called with the
    layers whose windows a batch completed.
    """
    grids = {spec.name: window_grid(spec.N, spec.M, settings) for spec in specs}
    total = {spec.name: spec.num_slices * grids[spec.name].count for spec in specs}
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    held: tuple[str, torch.Tensor | None] = ("", None)
    for batch in batches(specs, grids, batch_elements):
        interrupts.check()
        views, owners = [], []
        for spec, start, stop in batch:
            if held[0] != spec.name:
                held = ("", None)  # release the previous layer before loading the next
                held = (spec.name, _matrices(checkpoint, spec))
            views += window_views(held[1], grids[spec.name], start, stop)
            owners.append((spec.name, stop - start))
        stack = torch.stack(views)
        del views
        evals = interrupts.abandonable(gram_eigenvalues, stack, torch.float64, device).numpy()
        del stack
        row = 0
        for name, count in owners:
            parts[name].append(evals[row : row + count].reshape(-1))
            row += count
        if progress:
            ends = [spec for spec, _, stop in batch if stop == total[spec.name]]
            progress(ends)
    return {spec.name: _pooled(parts[spec.name]) for spec in specs}


def _matrices(checkpoint: Checkpoint, spec: LayerSpec) -> torch.Tensor:
    stack = to_matrices(checkpoint.load(spec.name), spec)
    return stack if stack.dtype in _NATIVE else stack.float()  # float8: no stack kernels


def _pooled(parts: list[np.ndarray]) -> ESD:
    values = np.concatenate(parts) if parts else np.empty(0)
    if not np.isfinite(values).all():
        return ESD(np.empty(0), finite=False, overflow=True)
    return ESD(np.sort(values))
