"""GGUF files (llama.cpp) through the ``gguf`` package (the ``gguf`` extra).

Tensors are listed in file order with their shape in PyTorch order: GGUF's
``ne`` lists the fastest-varying dimension first, so a ``(out, in)`` weight has
``ne = [in, out]`` and the shape is ``ne`` reversed. Quantised types (q8_0,
q4_0, q4_K, q6_K, ...) are listed as float32 and dequantised on load by
``gguf.quants.dequantize``, the package's own numpy routines; f32, f16, bf16
and the integer types keep their dtype. Where the file names an architecture
the package knows, ``blk.N.attn_q.weight`` and the like are renamed to the
Hugging Face names of ``gguf``'s tensor-name map (``model.layers.N.self_attn.
q_proj.weight``), preferring the Llama-style ``model.*`` and ``lm_head`` names.
llama.cpp's converter permutes the rows of Llama's q and k weights; a row
permutation leaves the singular values, hence the ESD, unchanged.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import reading, require_tensors
from .base import Checkpoint, TensorInfo
from .extras import import_extra

#: GGML types held as they are (torch dtype names); every other type is dequantised.
PLAIN_TYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_SUFFIXES = ("weight", "bias")


class GGUFCheckpoint(Checkpoint):
    """A ``.gguf`` file, memory-mapped by ``gguf.GGUFReader``; ``load()`` reads one tensor."""

    format = "gguf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        self._gguf = import_extra(self.path, "gguf", "GGUF", "gguf")
        with reading(self.path, "cannot read GGUF file"):
            reader = self._gguf.GGUFReader(self.path, "r")
            tensors = list(reader.tensors)
            self.architecture = string_field(reader, "general.architecture")
            blocks = int_field(reader, f"{self.architecture}.block_count")
        names = hf_names(self._gguf, self.architecture, blocks, [t.name for t in tensors])
        self._reader: Any = reader
        self._tensors = {names.get(t.name, t.name): t for t in tensors}
        self._infos = require_tensors(
            self.path, [self._info(n, t) for n, t in self._tensors.items()]
        )
        self._renamed = sum(1 for t in tensors if t.name in names)

    def _info(self, name: str, tensor: Any) -> TensorInfo:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        kind = tensor.tensor_type.name
        return TensorInfo(name, shape, PLAIN_TYPES.get(kind, "float32"))

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        shape = tuple(int(d) for d in reversed(tensor.shape))
        kind = tensor.tensor_type.name
        with reading(self.path, f"cannot read tensor {name!r}"):
            if kind == "BF16":
                bits = np.array(tensor.data).view(np.int16).reshape(shape)
                return torch.from_numpy(bits).view(torch.bfloat16)
            if kind in PLAIN_TYPES:
                return torch.from_numpy(np.array(tensor.data).reshape(shape))
            values = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))

    def notes(self) -> dict[str, Any]:
        notes: dict[str, Any] = {}
        kinds = Counter(t.tensor_type.name for t in self._tensors.values())
        quantised = {k: v for k, v in kinds.items() if k not in PLAIN_TYPES}
        if quantised:
            types = ", ".join(f"{k.lower()} ({v})" for k, v in sorted(quantised.items()))
            notes["quantisation"] = f"GGUF {types}; dequantised to float32 by gguf.quants"
        if self._renamed:
            notes["tensor_names"] = (
                f"{self._renamed} GGUF names mapped to Hugging Face names ({self.architecture})"
            )
        return notes

    def close(self) -> None:
        self._tensors = {}
        self._reader = None  # drops the memory map


def string_field(reader: Any, key: str) -> str:
    """A string metadata value, "" when absent or not a string."""
    field = reader.fields.get(key)
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (AttributeError, IndexError, TypeError, UnicodeDecodeError):
        return ""


def int_field(reader: Any, key: str) -> int | None:
    """An integer metadata value, None when absent."""
    field = reader.fields.get(key)
    try:
        return int(field.parts[field.data[0]][0])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def hf_names(gguf: Any, architecture: str, blocks: int | None, names: list[str]) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, for the names ``gguf``'s map knows.

    Names that would collide, and all names of an unknown architecture, are left out.
    """
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    if arch is None:
        return {}
    if blocks is None:
        found = [int(m.group(1)) for n in names if (m := _BLOCK.match(n))]
        blocks = max(found, default=-1) + 1
    candidates: dict[str, list[str]] = {}
    for key, (_, gguf_name) in gguf.get_tensor_name_map(arch, blocks).mapping.items():
        if key != gguf_name:
            candidates.setdefault(gguf_name, []).append(key)
    mapped: dict[str, str] = {}
    taken = set(names)
    for name in names:
        base, _, suffix = name.rpartition(".")
        options = candidates.get(base) if suffix in _SUFFIXES else None
        if not options:
            continue
        target = f"{min(options, key=_preference)}.{suffix}"
        if target not in taken:
            mapped[name] = target
            taken.add(target)
    return mapped


def _preference(candidate: str) -> int:
    """Llama-style Hugging Face names first (``model.*``, ``lm_head``); min() keeps map order."""
    return 0 if candidate.startswith("model.") or candidate == "lm_head" else 1
