"""Matrices cut from one tensor: expert stacks and fused projections (docs/theory.md section 1.8).

LLM checkpoints store several weight matrices in one tensor. Splitting them
changes no number (each part is a block of rows of the tensor) but lets rows be
compared across architectures that store q, k and v apart. From names, shapes
and ``config.json`` alone (no tensor data), :func:`derive` says which matrices a
tensor holds; :func:`cut` takes one of them out of the loaded tensor.

==========================================  ===============  =================================
tensor                                      stored as        becomes
==========================================  ===============  =================================
``*.experts.weight``, ``input_linear``,      [E, out, in]     ``name[e]`` (``input_linear`` of
``output_linear`` (Granite, JetMoE)                           an MLP: ``[e]:gate``, ``[e]:up``)
``experts.gate_up_proj`` (Mixtral, Qwen-MoE, [E, 2i, h]       ``name[e]:gate``, ``name[e]:up``
Granite in transformers 5)                                    (halves, gate first)
``experts.down_proj`` (same)                 [E, h, i]        ``name[e]``
``experts.gate_up_proj`` (GPT-OSS)           [E, h, 2i]       ``[e]:gate`` / ``[e]:up`` (columns
                                                              interleaved: gate 0::2, up 1::2)
``experts.gate_up_proj`` (Llama-4)           [E, h, 2i]       ``[e]:gate`` / ``[e]:up`` (halves)
``experts.down_proj`` (GPT-OSS, Llama-4)     [E, i, h]        ``name[e]``
``query_key_value`` (GPT-NeoX, Bloom)        [3 h, h]         ``:q :k :v``, rows interleaved per
                                                              head as [heads, 3, head_dim]
``Wqkv``, ``qkv_proj``, ``in_proj_weight``,  [q+2kv, h]       ``:q :k :v``, contiguous blocks
``attn.qkv`` (Phi, Phi-3, MPT, ViT, torch)                    (GQA sizes from config.json)
``c_attn`` (GPT-2 Conv1D)                    [h, 3 h]         ``:q :k :v`` of the columns
``gate_up_proj`` (Phi-3, 2-D)                [2i, h]          ``:gate``, ``:up`` (halves)
==========================================  ===============  =================================

The orientation of a 3-D ``gate_up_proj``/``down_proj`` comes from
``config.json``'s ``model_type`` (GPT-OSS and Llama-4 store [E, in, out], the
rest of transformers 5 [E, out, in]); without a config it is read from the
shapes of the ``gate_up_proj``/``down_proj`` pair when only one orientation
fits. Whatever cannot be told is kept whole with a note, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .io.base import TensorInfo

#: ``model_type`` values whose 3-D expert projections are stored [E, in, out].
IN_OUT_MODELS = ("gpt_oss", "llama4", "llama4_text")
#: ``model_type`` values whose fused gate_up interleaves gate and up on the last dim.
INTERLEAVED_GATE_UP = ("gpt_oss",)
#: Per-head interleaved ``query_key_value`` ([heads, 3, head_dim] on the out dim).
_PER_HEAD_QKV = re.compile(r"(^|\.)query_key_value\.weight$")
_CONTIGUOUS_QKV = re.compile(
    r"(^|\.)(Wqkv\.weight|qkv_proj\.weight|in_proj_weight|attn\.qkv\.weight)$"
)
_C_ATTN = re.compile(r"(^|\.)c_attn\.weight$")
_GATE_UP_2D = re.compile(r"(^|\.)gate_up_proj\.weight$")
_EXPERT_WEIGHT = re.compile(r"(^|\.)(experts\.weight|input_linear\.weight|output_linear\.weight)$")
_GLU_INPUT = re.compile(r"(^|\.)(mlp|block_sparse_moe|moe)\.input_linear\.weight$")
_EXPERT_PROJ = re.compile(r"(^|\.)experts\.(gate_up_proj|down_proj|gate_proj|up_proj)$")
_EXPERT_INDEX = re.compile(r"\[\d+\]")
_EXPERT_NUMBER = re.compile(r"(^|\.)experts\.\d+\.")


@dataclass(frozen=True)
class Part:
    """How one ``(out, in)`` matrix is cut from its tensor.

    Take ``tensor[expert]`` (when set), transpose a stored ``(in, out)`` matrix,
    then keep the rows ``offset .. offset + width`` of each of ``count`` blocks
    of ``stride`` rows (``width`` None: every row).
    """

    label: str = ""  # "q", "k", "v", "gate", "up"; "" for the whole matrix
    expert: int | None = None
    transpose: bool = False
    offset: int = 0
    width: int | None = None
    stride: int = 0
    count: int = 1


@dataclass(frozen=True)
class Derived:
    """One matrix a tensor holds: its row name, ``(out, in)`` shape and cut."""

    name: str
    shape: tuple[int, int]
    part: Part


@dataclass(frozen=True)
class Derivation:
    """What :func:`derive` found: the matrices, and a note when a tensor stays whole."""

    matrices: tuple[Derived, ...]
    note: str = ""


def cut(tensor: torch.Tensor, part: Part) -> torch.Tensor:
    """The ``(out, in)`` matrix ``part`` of a loaded tensor (a view when possible)."""
    matrix = tensor[part.expert] if part.expert is not None else tensor
    if part.transpose:
        matrix = matrix.T
    if part.width is None:
        return matrix
    if part.count == 1:
        return matrix[part.offset : part.offset + part.width]
    cols = matrix.shape[1]
    blocks = matrix.reshape(part.count, part.stride, cols)
    return blocks[:, part.offset : part.offset + part.width].reshape(-1, cols)


def is_expert_stack(info: TensorInfo) -> bool:
    """A 3-D tensor holding one matrix per expert (by its name)."""
    return len(info.shape) == 3 and bool(
        _EXPERT_WEIGHT.search(info.name) or _EXPERT_PROJ.search(info.name)
    )


def expert_group(name: str) -> str | None:
    """``a.experts.gate_up_proj[*]:gate`` for ``a.experts.gate_up_proj[5]:gate`` (also
    ``experts.*.w1`` for ``experts.3.w1``); None for a matrix of no expert."""
    if _EXPERT_INDEX.search(name):
        return _EXPERT_INDEX.sub("[*]", name)
    if _EXPERT_NUMBER.search(name):
        return _EXPERT_NUMBER.sub(r"\1experts.*.", name)
    return None


def derive(
    info: TensorInfo,
    config: Mapping[str, Any] | None,
    siblings: Mapping[str, TensorInfo],
    split: bool = True,
) -> Derivation | None:
    """The matrices of an expert stack or a fused projection; None for any other tensor.

    ``siblings``: every tensor of the checkpoint by name (a gate_up/down pair
    tells its orientation when no config does). ``split=False`` keeps fused
    projections whole (experts are still one matrix each).
    """
    if is_expert_stack(info):
        return _experts(info, config or {}, siblings, split)
    if len(info.shape) != 2 or not split:
        return None
    name, (rows, cols) = info.name, info.shape
    if _C_ATTN.search(name):
        return _c_attn(name, rows, cols)
    if _CONTIGUOUS_QKV.search(name):
        return _contiguous_qkv(name, rows, cols, config or {})
    if _PER_HEAD_QKV.search(name):
        return _per_head_qkv(name, rows, cols, config)
    if _GATE_UP_2D.search(name):
        if rows % 2:
            return Derivation((_whole(name, rows, cols),), "odd row count: gate/up kept whole")
        return Derivation(_blocks(name, (("gate", rows // 2), ("up", rows // 2)), cols))
    return None


def _whole(name: str, rows: int, cols: int) -> Derived:
    return Derived(name, (rows, cols), Part())


def _blocks(
    name: str,
    sizes: tuple[tuple[str, int], ...],
    cols: int,
    transpose: bool = False,
    expert: int | None = None,
) -> tuple[Derived, ...]:
    """Contiguous row blocks ``name:label`` of an (out, in) matrix of ``cols`` columns."""
    out, offset = [], 0
    for label, size in sizes:
        part = Part(label, expert, transpose, offset, size)
        out.append(Derived(f"{name}:{label}", (size, cols), part))
        offset += size
    return tuple(out)


def _c_attn(name: str, rows: int, cols: int) -> Derivation:
    """GPT-2 Conv1D ``c_attn``: stored (in, out), q|k|v (cross-attention: k|v) on the columns."""
    if cols == 3 * rows:
        return Derivation(_blocks(name, (("q", rows), ("k", rows), ("v", rows)), rows, True))
    if cols == 2 * rows:
        return Derivation(_blocks(name, (("k", rows), ("v", rows)), rows, True))
    # whole, shown as stored like GPT-2's other Conv1D weights
    return Derivation((_whole(name, rows, cols),), "c_attn of unexpected shape: kept whole")


def _contiguous_qkv(name: str, rows: int, cols: int, config: Mapping[str, Any]) -> Derivation:
    """q|k|v stored one after the other on the out dim (GQA sizes from the config)."""
    dims = attention_dims(config)
    if dims is not None:
        heads, kv_heads, head_dim = dims
        q, kv = heads * head_dim, kv_heads * head_dim
        if q + 2 * kv == rows:
            return Derivation(_blocks(name, (("q", q), ("k", kv), ("v", kv)), cols))
    if rows == 3 * cols:
        return Derivation(_blocks(name, (("q", cols), ("k", cols), ("v", cols)), cols))
    note = "q/k/v sizes unknown (no num_attention_heads/num_key_value_heads fitting this shape): kept whole"
    return Derivation((_whole(name, rows, cols),), note)


def _per_head_qkv(name: str, rows: int, cols: int, config: Mapping[str, Any] | None) -> Derivation:
    """GPT-NeoX/Bloom ``query_key_value``: out rows ordered [heads, 3, head_dim]."""
    dims = attention_dims(config or {})
    model = model_type(config or {})
    if dims is None or model == "falcon" or dims[0] != dims[1] or rows != 3 * dims[0] * dims[2]:
        why = "config.json" if config is None else "a config.json with matching heads"
        note = f"query_key_value interleaves q/k/v per head: splitting needs {why}; kept whole"
        return Derivation((_whole(name, rows, cols),), note)
    heads, _, head_dim = dims
    parts = tuple(
        Derived(
            f"{name}:{label}",
            (heads * head_dim, cols),
            Part(label, None, False, i * head_dim, head_dim, 3 * head_dim, heads),
        )
        for i, label in enumerate(("q", "k", "v"))
    )
    return Derivation(parts)


def _experts(
    info: TensorInfo,
    config: Mapping[str, Any],
    siblings: Mapping[str, TensorInfo],
    split: bool,
) -> Derivation:
    """One matrix (or gate and up) per expert of an [E, a, b] stack."""
    name, (experts, a, b) = info.name, info.shape
    note = ""
    if _EXPERT_WEIGHT.search(name):  # nn.Linear-style stacks: [E, out, in]
        transpose, fused, interleaved = False, bool(_GLU_INPUT.search(name)), False
    else:
        transpose, note = _orientation(info, config, siblings)
        model = model_type(config)
        fused = name.endswith("gate_up_proj")
        interleaved = model in INTERLEAVED_GATE_UP
        if fused and transpose and not model:
            fused, note = False, "gate/up order unknown without config.json: each expert kept whole"
    out_dim, in_dim = (b, a) if transpose else (a, b)
    if fused and split and out_dim % 2 == 0:
        half = out_dim // 2
        matrices: list[Derived] = []
        for e in range(experts):
            base = f"{name}[{e}]"
            if interleaved:
                for i, label in enumerate(("gate", "up")):
                    part = Part(label, e, transpose, i, 1, 2, half)
                    matrices.append(Derived(f"{base}:{label}", (half, in_dim), part))
            else:
                sizes = (("gate", half), ("up", half))
                matrices.extend(_blocks(base, sizes, in_dim, transpose, e))
        return Derivation(tuple(matrices), note)
    whole = tuple(
        Derived(f"{name}[{e}]", (out_dim, in_dim), Part(expert=e, transpose=transpose))
        for e in range(experts)
    )
    return Derivation(whole, note)


def _orientation(
    info: TensorInfo, config: Mapping[str, Any], siblings: Mapping[str, TensorInfo]
) -> tuple[bool, str]:
    """(stored [E, in, out], note) of a 3-D ``gate_up_proj``/``down_proj``."""
    model = model_type(config)
    if model:
        return model in IN_OUT_MODELS, ""
    stem, _, kind = info.name.rpartition(".")
    pair = {"gate_up_proj": "down_proj", "down_proj": "gate_up_proj"}.get(kind)
    other = siblings.get(f"{stem}.{pair}") if pair else None
    if other is not None and len(other.shape) == 3:
        gate_up, down = (info, other) if kind == "gate_up_proj" else (other, info)
        (_, g1, g2), (_, d1, d2) = gate_up.shape, down.shape
        out_in = g1 == 2 * d2 and g2 == d1  # [E, 2i, h] with [E, h, i]
        in_out = g2 == 2 * d1 and g1 == d2  # [E, h, 2i] with [E, i, h]
        if out_in != in_out:
            return in_out, ""
    return False, "orientation unknown without config.json: taken as [E, out, in]"


def model_type(config: Mapping[str, Any]) -> str:
    """``config.json``'s ``model_type`` (of its ``text_config`` when it has one), or ""."""
    text = config.get("text_config")
    for scope in (text if isinstance(text, Mapping) else {}, config):
        value = scope.get("model_type")
        if isinstance(value, str) and value:
            return value
    return ""


def attention_dims(config: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """``(heads, kv_heads, head_dim)`` from a config, or None when it does not say."""
    heads = _number(config, "num_attention_heads", "n_head", "n_heads", "num_heads")
    if heads is None:
        return None
    kv_heads = _number(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or heads
    head_dim = _number(config, "head_dim")
    if head_dim is None:
        hidden = _number(config, "hidden_size", "n_embd", "d_model")
        if hidden is None or hidden % heads:
            return None
        head_dim = hidden // heads
    return heads, kv_heads, head_dim


def _number(config: Mapping[str, Any], *keys: str) -> int | None:
    """The first positive integer under ``keys``, in the config or its ``text_config``."""
    text = config.get("text_config")
    for scope in (config, text if isinstance(text, Mapping) else {}):
        for key in keys:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
