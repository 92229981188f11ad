"""Parameter tensors -> named weight matrices (docs/theory.md section 1).

Only names, shapes and dtypes are needed to plan the analysis, so planning reads
no tensor data; :func:`to_matrices` turns one loaded tensor into the stack of
``N x M`` matrices (``N >= M``) whose eigenvalues make up that layer's ESD.

Layer types, inferred from the parameter name and shape:

=============  ============================================  ===========================
type           tensor                                        matrices
=============  ============================================  ===========================
linear         2-D ``(out, in)``                              the weight itself
gpt2-conv1d    2-D ``(in, out)`` of GPT-2 ``c_attn/c_fc/..``   the weight itself
embedding      2-D ``(vocab, dim)`` named ``*embed*/wte/wpe``  the weight itself
lstm/gru/rnn   2-D ``weight_ih_l*`` / ``weight_hh_l*``         the stacked gate matrix
conv1d/2d/3d   ``(out, in, k1, ..., kd)``                     ``slices``: K = k1*..*kd
                                                             matrices ``(out, in)`` pooled
                                                             into one ESD; ``unfold``:
                                                             one ``(out, in*K)`` matrix
=============  ============================================  ===========================

Every matrix is oriented so that ``N >= M`` (transposed when needed), for both
views; no hidden rescaling is applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

import torch

from . import budget
from .choices import CONV_MODES, LAYER_TYPES
from .errors import OptionError
from .io.base import TensorInfo
from .variants import LORA_SUFFIX, target_of

_FLOAT_DTYPES = {
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
}
_EMBEDDING = re.compile(r"(embed|(^|\.)wte\.|(^|\.)wpe\.|(^|\.)shared\.weight$)", re.IGNORECASE)
_GPT2_CONV1D = re.compile(r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$")
_RECURRENT = re.compile(r"(^|\.)weight_(ih|hh)(_l\d+)?(_reverse)?$")  # nn.LSTM/GRU/RNN and *Cell


@dataclass(frozen=True)
class LayerSpec:
    """One tensor selected for analysis, with the matrices it will become."""

    name: str
    layer_type: str
    shape: tuple[int, ...]
    dtype: str
    N: int  # rows of each matrix, N >= M
    M: int  # columns of each matrix = eigenvalues per matrix
    num_slices: int  # matrices pooled into the layer's ESD
    view: str = "matrix"  # how the tensor becomes matrices: "matrix", "slices" or "unfold"

    @property
    def num_evals(self) -> int:
        return self.M * self.num_slices


@dataclass(frozen=True)
class Skipped:
    """A tensor that was not analysed, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Selection:
    """Which parameters to analyse (all filters must pass).

    Every value is checked on construction: a bad one raises
    :class:`~spectralyzer.errors.OptionError` naming the field, so the library
    and the CLI (which maps fields to flags) refuse the same values.
    """

    layers: str | None = None  # regex searched in the parameter name: keep matches
    exclude: str | None = None  # regex searched in the parameter name: drop matches
    types: tuple[str, ...] | None = None  # subset of LAYER_TYPES
    min_evals: int = 8  # skip matrices with fewer eigenvalues per slice (weightwatcher: 8)
    max_evals: int | None = 16384  # skip matrices whose M exceeds this; 0 or None: no cap
    conv_mode: str = "slices"

    def __post_init__(self) -> None:
        for key in ("layers", "exclude"):
            _check_pattern(key, getattr(self, key))
        if self.types is not None:
            if isinstance(self.types, str) or not all(isinstance(t, str) for t in self.types):
                raise OptionError(
                    "types", f"must be a sequence of layer type names, not {self.types!r}"
                )
            unknown = sorted(set(self.types) - set(LAYER_TYPES))
            if unknown:
                raise OptionError(
                    "types",
                    f"unknown layer type(s) {unknown}; choose from {', '.join(LAYER_TYPES)}",
                )
            object.__setattr__(self, "types", tuple(self.types))
        if not _is_int(self.min_evals) or self.min_evals < 1:
            raise OptionError("min_evals", f"must be an integer >= 1, not {self.min_evals!r}")
        if self.max_evals is not None and (not _is_int(self.max_evals) or self.max_evals < 0):
            raise OptionError("max_evals", f"must be >= 0 (0: no cap), not {self.max_evals!r}")
        if self.conv_mode not in CONV_MODES:
            raise OptionError(
                "conv_mode", f"must be one of {', '.join(CONV_MODES)}, not {self.conv_mode!r}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_pattern(key: str, pattern: object) -> None:
    """A regular expression that compiles, or None."""
    if pattern is None:
        return
    if not isinstance(pattern, str):
        raise OptionError(key, f"must be a regular expression (a string), not {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as err:
        raise OptionError(key, f"{pattern!r} is not a valid regular expression: {err}") from None


def layer_type(info: TensorInfo) -> str | None:
    """The layer type of a weight tensor, or None when it is not a weight matrix.

    A LoRA update (``<weight>@lora``, :mod:`spectralyzer.variants`) is ``lora``;
    a merged ``<weight>@merged`` is typed as ``<weight>``."""
    if info.name.endswith(LORA_SUFFIX):
        return "lora"
    name, ndim = target_of(info.name), len(info.shape)
    if ndim == 2:
        recurrent = _RECURRENT.search(name)
        if recurrent:
            hidden = info.shape[1] if recurrent.group(2) == "hh" else None
            if hidden:
                gates = info.shape[0] // hidden
                return {4: "lstm", 3: "gru"}.get(gates, "rnn")
            return "lstm" if info.shape[0] % 4 == 0 else "rnn"
        if _GPT2_CONV1D.search(name):
            return "gpt2-conv1d"
        if _EMBEDDING.search(name):
            return "embedding"
        return "linear"
    if 3 <= ndim <= 5 and name.endswith("weight"):
        return f"conv{ndim - 2}d"
    return None


def _view(shape: tuple[int, ...], conv_mode: str) -> str:
    """How a tensor of this shape becomes matrices: itself, or a conv kernel's view."""
    return "matrix" if len(shape) == 2 else conv_mode


def _matrix_shape(shape: tuple[int, ...], conv_mode: str) -> tuple[int, int, int]:
    """(N, M, num_slices) of the matrices a tensor of this shape becomes."""
    view = _view(shape, conv_mode)
    if view == "matrix":
        rows, cols, slices = shape[0], shape[1], 1
    elif view == "slices":
        rows, cols, slices = shape[0], shape[1], prod(shape[2:])
    else:
        rows, cols, slices = shape[0], prod(shape[1:]), 1
    return max(rows, cols), min(rows, cols), slices


def plan(
    infos: Iterable[TensorInfo],
    selection: Selection,
    *,
    randomize: bool = False,
    available: int | None = None,
) -> tuple[list[LayerSpec], list[Skipped]]:
    """Choose the tensors to analyse; every other weight-like tensor gets a reason.

    Tensors with fewer than two dimensions (biases, norm scales, scalars) are
    dropped silently: they are never layer weights.  Also skipped, from shapes
    alone: tensors the loader flagged (``TensorInfo.problem``, e.g. an
    overlapping view), tensors with a dimension of size 0, and matrices whose
    estimated memory need (:func:`spectralyzer.budget.matrix_need`, with
    ``randomize``) exceeds ``available`` bytes (measured now when None).
    """
    include = re.compile(selection.layers) if selection.layers else None
    exclude = re.compile(selection.exclude) if selection.exclude else None
    available = budget.available_memory() if available is None else available
    specs: list[LayerSpec] = []
    skipped: list[Skipped] = []
    for info in infos:
        if len(info.shape) < 2:
            continue
        if include and not include.search(info.name):
            continue
        if exclude and exclude.search(info.name):
            continue
        kind = layer_type(info)
        if kind is None:
            skipped.append(Skipped(info.name, info.shape, "not a layer weight matrix"))
            continue
        if selection.types and kind not in selection.types:
            continue
        reason = _unanalysable(info, selection, randomize, available, kind == "lora")
        if reason is not None:
            skipped.append(Skipped(info.name, info.shape, reason))
            continue
        N, M, slices = _matrix_shape(info.shape, selection.conv_mode)
        view = _view(info.shape, selection.conv_mode)
        specs.append(LayerSpec(info.name, kind, tuple(info.shape), info.dtype, N, M, slices, view))
    return specs, skipped


def _unanalysable(
    info: TensorInfo,
    selection: Selection,
    randomize: bool,
    available: int | None,
    whole_spectrum: bool = False,
) -> str | None:
    """Why a weight tensor of a selected type cannot be analysed, or None.

    ``whole_spectrum``: the matrix's eigenvalues are all there is (a LoRA update's r),
    so ``min_evals`` does not apply."""
    if info.problem is not None:
        return info.problem
    if info.dtype not in _FLOAT_DTYPES:
        return f"{info.dtype} tensor, not floating point"
    if 0 in info.shape:
        return f"empty: shape {'x'.join(map(str, info.shape))} has a dimension of size 0"
    N, M, slices = _matrix_shape(info.shape, selection.conv_mode)
    if M < selection.min_evals and not whole_spectrum:
        return f"{M} eigenvalues per matrix, fewer than min_evals {selection.min_evals}"
    if selection.max_evals and M > selection.max_evals:
        return f"{M} eigenvalues per matrix, more than max_evals {selection.max_evals}"
    itemsize = getattr(torch, info.dtype).itemsize
    need = budget.matrix_need(N, M, slices, itemsize, randomize)
    if available is not None and need > available:
        grams = f"{M}x{M} Gram matrix" if slices == 1 else f"{slices} {M}x{M} Gram matrices"
        return (
            f"needs about {budget.format_bytes(need)} of memory (data and float64 {grams}), "
            f"more than the {budget.format_bytes(available)} available"
        )
    return None


def to_matrices(tensor: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """The ``(num_slices, N, M)`` stack of matrices of one weight tensor, N >= M.

    ``spec.view`` (chosen by :func:`plan`) says how: per-kernel-position slices of
    a conv kernel ``(out, in, *k)`` are ``W[:, :, i1, .., id]``; the unfolded view
    is ``W.reshape(out, in * K)``.
    """
    if spec.view == "matrix":
        stack = tensor.unsqueeze(0)
    elif spec.view == "slices":
        out_ch, in_ch = tensor.shape[:2]
        stack = tensor.reshape(out_ch, in_ch, -1).permute(2, 0, 1)
    else:
        stack = tensor.reshape(tensor.shape[0], -1).unsqueeze(0)
    if stack.shape[1] < stack.shape[2]:
        stack = stack.transpose(1, 2)
    assert stack.shape == (spec.num_slices, spec.N, spec.M), (stack.shape, spec)
    return stack
