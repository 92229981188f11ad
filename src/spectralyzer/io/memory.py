"""A checkpoint held in memory: a state dict or an ``nn.Module`` from Python."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .base import Checkpoint, TensorInfo


class MemoryCheckpoint(Checkpoint):
    """Wraps a mapping of names to tensors (or a module's ``state_dict()``)."""

    format = "in-memory"

    def __init__(
        self, tensors: Mapping[str, torch.Tensor] | torch.nn.Module, label: str = "<memory>"
    ):
        super().__init__(Path(label))
        if isinstance(tensors, torch.nn.Module):
            tensors = tensors.state_dict()
        self._tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}

    def tensors(self) -> list[TensorInfo]:
        return [
            TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for name, t in self._tensors.items()
        ]

    def load(self, name: str) -> torch.Tensor:
        return self._tensors[name].detach().cpu()
