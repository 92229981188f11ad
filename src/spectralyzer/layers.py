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
linear         3-D expert stack ``[E, a, b]``                  one matrix per expert (and
                                                             per part of a fused gate_up):
                                                             :mod:`spectralyzer.layouts`
=============  ============================================  ===========================

Fused q/k/v and gate/up tensors become their parts (``name:q``, ``name:gate``);
2-D ``*bias`` tensors (GPT-OSS' ``[E, out]`` expert biases) and 3-D tensors of
no known layout are skipped with a reason.  Every matrix is oriented so that
``N >= M`` (transposed when needed), for both views; no hidden rescaling is applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import torch

from . import budget
from .choices import CONV_MODES, LAYER_TYPES
from .errors import OptionError
from .io.base import TensorInfo
from .layouts import Derivation, Part, cut, derive, is_expert_stack
from .roles import FAMILIES, ROLES, matches, role_of
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
_BIAS = re.compile(r"(^|[._])bias$")  # GPT-OSS' 2-D [E, out] *_proj_bias among them
_EXPERTISH = re.compile(r"expert", re.IGNORECASE)  # a 3-D tensor of experts is no conv
_DIGITS = re.compile(r"(\d+)")
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
    source: str = ""  # the tensor the matrix is cut from; "" means ``name``
    part: Part | None = None  # how it is cut (expert, fused split); None: the whole tensor
    note: str = ""  # why a fused tensor was kept whole, when it was

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.name)

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
    roles: tuple[str, ...] | None = None  # roles or role families (spectralyzer.roles)

    def __post_init__(self) -> None:
        for key in ("layers", "exclude"):
            _check_pattern(key, getattr(self, key))
        if self.roles is not None:
            object.__setattr__(self, "roles", _check_roles(self.roles))
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


def _check_roles(roles: object) -> tuple[str, ...]:
    """A tuple of known roles or role families."""
    if isinstance(roles, str) or not isinstance(roles, (tuple, list)):
        raise OptionError("roles", f"must be a sequence of role names, not {roles!r}")
    if not all(isinstance(r, str) for r in roles):
        raise OptionError("roles", f"must be a sequence of role names, not {roles!r}")
    unknown = sorted(set(roles) - set(ROLES) - set(FAMILIES))
    if unknown:
        choices = ", ".join(dict.fromkeys((*FAMILIES, *ROLES)))
        raise OptionError("roles", f"unknown role(s) {unknown}; choose from {choices}")
    return tuple(roles)


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
        if _BIAS.search(name):
            return None
        if _GPT2_CONV1D.search(name):
            return "gpt2-conv1d"
        if _EMBEDDING.search(name):
            return "embedding"
        return "linear"
    if is_expert_stack(info):
        return "linear"
    if 3 <= ndim <= 5 and name.endswith("weight") and not _EXPERTISH.search(name):
        return f"conv{ndim - 2}d"
    return None


def _not_a_layer(info: TensorInfo) -> str:
    """Why a tensor of 2 or more dimensions with no layer type is not analysed."""
    if len(info.shape) == 2 and _BIAS.search(info.name):
        return "bias, not a weight matrix"
    if len(info.shape) >= 3:
        dims = len(info.shape)
        return (
            f"{dims}-D tensor of unknown layout (neither a convolution kernel nor a known "
            "expert stack): not analysed"
        )
    return "not a layer weight matrix"


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


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key putting ``h.2`` before ``h.10`` and ``[2]`` before ``[10]``."""
    pieces = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(pieces))


def plan(
    infos: Iterable[TensorInfo],
    selection: Selection,
    *,
    randomize: bool = False,
    available: int | None = None,
    config: Mapping[str, Any] | None = None,
    split: bool = True,
    experts: str = "each",
) -> tuple[list[LayerSpec], list[Skipped]]:
    """Choose the matrices to analyse; every other weight-like tensor gets a reason.

    Tensors with fewer than two dimensions (biases, norm scales, scalars) are
    dropped silently: they are never layer weights.  Expert stacks and fused
    projections become one spec per matrix they hold (:mod:`spectralyzer.layouts`,
    ``config`` being the checkpoint's ``config.json``; ``split=False`` keeps fused
    projections whole; ``experts="skip"`` leaves expert matrices out with a reason).
    Also skipped, from shapes alone: tensors the loader flagged
    (``TensorInfo.problem``, e.g. an overlapping view), tensors with a dimension of
    size 0, and matrices whose estimated memory need
    (:func:`spectralyzer.budget.matrix_need`, with ``randomize``) exceeds
    ``available`` bytes (measured now when None).  Specs and skipped tensors come
    in natural order of their names (:func:`natural_key`).
    """
    infos = [info for info in infos if len(info.shape) >= 2]
    siblings = {info.name: info for info in infos}
    available = budget.available_memory() if available is None else available
    specs: list[LayerSpec] = []
    skipped: list[Skipped] = []
    for info in infos:
        if info.problem is not None:  # flagged by the reader (overlapping view, scales, ...)
            if _selected(info.name, selection):
                skipped.append(Skipped(info.name, info.shape, info.problem))
            continue
        kind = layer_type(info)
        if kind is None:
            if _selected(info.name, selection):
                skipped.append(Skipped(info.name, info.shape, _not_a_layer(info)))
            continue
        derivation = derive(info, config, siblings, split)
        rows = _rows(info, kind, selection, derivation)
        if not rows:
            continue
        if experts == "skip" and any(role.startswith("expert") for _, _, _, role in rows):
            skipped.append(
                Skipped(info.name, info.shape, "expert matrix, left out (--expert-rows skip)")
            )
            continue
        for name, shape, part, _ in rows:
            reason = _unanalysable(
                info, shape, part, selection, randomize, available, kind == "lora"
            )
            if reason is not None:
                skipped.append(Skipped(name, shape, reason))
                continue
            N, M, slices = _matrix_shape(shape, selection.conv_mode)
            view = _view(shape, selection.conv_mode)
            note = derivation.note if derivation else ""
            spec = LayerSpec(
                name, kind, shape, info.dtype, N, M, slices, view, info.name, part, note
            )
            specs.append(spec)
    specs.sort(key=lambda spec: natural_key(spec.source))  # stable: parts keep their order
    skipped.sort(key=lambda s: natural_key(s.name))
    return specs, skipped


Row = tuple[str, tuple[int, ...], Part | None, str]  # name, shape, cut, role


def _rows(
    info: TensorInfo, kind: str, selection: Selection, derivation: Derivation | None
) -> list[Row]:
    """The matrices of one tensor that the selection keeps (name, type and role filters)."""
    if derivation is None:
        candidates: list[tuple[str, tuple[int, ...], Part | None]] = [
            (info.name, tuple(info.shape), None)
        ]
    else:
        candidates = [(d.name, d.shape, d.part) for d in derivation.matrices]
    if selection.types and kind not in selection.types:
        return []
    rows = []
    for name, shape, part in candidates:
        role = role_of(name, kind)
        if not _selected(name, selection):
            continue
        if selection.roles and not matches(role, selection.roles):
            continue
        rows.append((name, shape, part, role))
    return rows


def _selected(name: str, selection: Selection) -> bool:
    """``--layers``/``--exclude``, searched in a row's name (the tensor's name is its prefix)."""
    if selection.layers and not re.search(selection.layers, name):
        return False
    return not (selection.exclude and re.search(selection.exclude, name))


def _unanalysable(
    info: TensorInfo,
    shape: tuple[int, ...],
    part: Part | None,
    selection: Selection,
    randomize: bool,
    available: int | None,
    whole_spectrum: bool = False,
) -> str | None:
    """Why a matrix of a selected type cannot be analysed, or None.

    ``whole_spectrum``: the matrix's eigenvalues are all there is (a LoRA update's r),
    so ``min_evals`` does not apply."""
    if info.problem is not None:
        return info.problem
    if info.dtype not in _FLOAT_DTYPES:
        return f"{info.dtype} tensor, not floating point"
    if 0 in shape:
        return f"empty: shape {'x'.join(map(str, shape))} has a dimension of size 0"
    N, M, slices = _matrix_shape(shape, selection.conv_mode)
    if M < selection.min_evals and not whole_spectrum:
        return f"{M} eigenvalues per matrix, fewer than min_evals {selection.min_evals}"
    if selection.max_evals and M > selection.max_evals:
        return f"{M} eigenvalues per matrix, more than max_evals {selection.max_evals}"
    itemsize = getattr(torch, info.dtype).itemsize
    need = budget.matrix_need(N, M, slices, itemsize, randomize)
    if part is not None:  # the whole source tensor is held while its matrices are cut
        need += prod(info.shape) * itemsize
    if available is not None and need > available:
        grams = f"{M}x{M} Gram matrix" if slices == 1 else f"{slices} {M}x{M} Gram matrices"
        return (
            f"needs about {budget.format_bytes(need)} of memory (data and float64 {grams}), "
            f"more than the {budget.format_bytes(available)} available"
        )
    return None


def to_matrices(tensor: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """The ``(num_slices, N, M)`` stack of matrices of one weight tensor, N >= M.

    ``spec.part`` (an expert or a fused part) is cut first (:func:`layouts.cut`);
    ``spec.view`` (chosen by :func:`plan`) says how: per-kernel-position slices of
    a conv kernel ``(out, in, *k)`` are ``W[:, :, i1, .., id]``; the unfolded view
    is ``W.reshape(out, in * K)``.
    """
    if spec.part is not None:
        tensor = cut(tensor, spec.part)
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
