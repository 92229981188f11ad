"""TorchScript archives (``torch.jit.save``): parameters and buffers of the scripted module."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._common import TensorDictCheckpoint, reading, state_dict_of


class TorchScriptCheckpoint(TensorDictCheckpoint):
    """A TorchScript archive, loaded with ``torch.jit.load`` onto the CPU.

    TorchScript deserialisation runs no arbitrary Python, so it needs no trust
    flag. The format forces reading every tensor when the archive is opened.
    """

    format = "torchscript"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        with reading(self.path, "cannot read TorchScript archive"):
            module = torch.jit.load(str(self.path), map_location="cpu")
        self._tensors = state_dict_of(self.path, module)
