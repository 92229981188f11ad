"""A checkpoint held in memory: a state dict or an ``nn.Module`` from Python."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ._common import TensorDictCheckpoint


class MemoryCheckpoint(TensorDictCheckpoint):
    """Wraps a mapping of names to tensors (or a module's ``state_dict()``); non-tensors are ignored."""

    format = "in-memory"

    def __init__(
        self, tensors: Mapping[str, torch.Tensor] | torch.nn.Module, label: str = "<memory>"
    ) -> None:
        super().__init__(Path(label))
        if isinstance(tensors, torch.nn.Module):
            tensors = tensors.state_dict()
        self._tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}

    def load(self, name: str) -> torch.Tensor:
        return super().load(name).cpu()

    def config(self) -> None:
        """Tensors from Python have no config.json (none is looked for in the working folder)."""
        return None
