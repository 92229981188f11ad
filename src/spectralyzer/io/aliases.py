"""Tensors that hold the same data under two names (tied embeddings, shared layers).

A model that ties its output head to its input embedding, or shares one layer
between blocks, stores one matrix under several parameter names; analysing each
name counted that matrix twice in the model means.  Two tensors are aliases
when

* their checkpoint says they share storage (``Checkpoint.storage_key``: same
  storage, offset, strides, shape and dtype, as ``torch.save`` keeps them), or
* otherwise (safetensors cannot express sharing, so tied weights are saved as
  copies) their bytes are identical and their shape and dtype equal.

Bytes are compared only between tensors of one shape and dtype, first on a
sample of leading bytes (one page per tensor for memory-mapped files) and in
full only when the samples agree, so a model without aliases costs no
extra full read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Protocol

import torch

from .base import Checkpoint, tensor_bytes

#: Leading bytes compared before whole tensors are hashed.
SAMPLE_BYTES = 4096


class Named(Protocol):
    """Anything with a tensor's name, shape and dtype (TensorInfo, LayerSpec)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def find_aliases(checkpoint: Checkpoint, tensors: Iterable[Named]) -> dict[str, str]:
    """``{alias: canonical}``: each later tensor holding the same data as an earlier one,
    mapped to the first (in the order given)."""
    groups: dict[tuple[tuple[int, ...], str], list[str]] = defaultdict(list)
    for t in tensors:
        groups[(tuple(t.shape), t.dtype)].append(t.name)
    aliases: dict[str, str] = {}
    for names in groups.values():
        if len(names) > 1:
            aliases.update(_same_data(checkpoint, names))
    return aliases


def _same_data(checkpoint: Checkpoint, names: list[str]) -> dict[str, str]:
    """Aliases among tensors of one shape and dtype: by storage where the checkpoint
    knows it, else by bytes (a sample, then a hash where the samples agree)."""
    seen: dict[Hashable, str] = {}
    aliases: dict[str, str] = {}
    sampled: dict[bytes, list[str]] = defaultdict(list)
    for name in names:
        key = checkpoint.storage_key(name)
        if key is None:
            sampled[checkpoint.head_bytes(name, SAMPLE_BYTES)].append(name)
        else:
            _note(seen, ("storage", key), name, aliases)
    for group in sampled.values():
        if len(group) > 1:
            for name in group:
                _note(seen, ("bytes", digest(checkpoint.load(name))), name, aliases)
    return aliases


def _note(seen: dict[Hashable, str], key: Hashable, name: str, aliases: dict[str, str]) -> None:
    """Record ``name`` under ``key``: an alias of the first name recorded there."""
    canonical = seen.setdefault(key, name)
    if canonical != name:
        aliases[name] = canonical


def digest(tensor: torch.Tensor) -> bytes:
    """A hash of a tensor's bytes (its dtype and shape are compared by the caller)."""
    return hashlib.blake2b(tensor_bytes(tensor)).digest()
