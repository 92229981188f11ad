"""PyTorch ``torch.save`` files (zip and legacy pickle): state dicts, wrapped or not."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import InputError
from ._common import TensorDictCheckpoint, check_zip_expansion, reading, state_dict_of

NEEDS_CODE_EXECUTION = (
    "needs arbitrary code execution to unpickle (a full pickled model or unknown globals); "
    "re-run with --trust-code only if you trust this file"
)

UNSUPPORTED_OPCODES = (
    "uses pickle opcodes the safe loader does not support (a corrupt file, or a newer pickle "
    "protocol); re-run with --trust-code only if you trust this file"
)

#: What torch's weights-only unpickler says about an opcode it does not handle.
_OPCODE_HINT = "Unsupported operand"


class TorchCheckpoint(TensorDictCheckpoint):
    """A ``torch.save`` checkpoint.

    Zip files (``torch-zip``) are memory-mapped, so opening one reads only its
    pickle; legacy files (``torch-legacy``) cannot be mapped and are read whole.
    Unless ``trust_pickle``, only plain data and tensors are unpickled
    (``weights_only=True``); anything else is refused with an InputError.
    Sizes are checked before anything is expanded: compressed zip members
    (``check_zip_expansion``), nesting depth and aliases (``flatten``), and
    views whose strides overlap (``layout_problem``: listed with a problem,
    never read).
    """

    format = "torch-zip"

    def __init__(
        self, path: str | os.PathLike[str], *, trust_pickle: bool = False, mmap: bool = True
    ) -> None:
        super().__init__(Path(path))
        self.format = "torch-zip" if mmap else "torch-legacy"
        if mmap:
            with reading(self.path, "cannot read PyTorch checkpoint"):
                with zipfile.ZipFile(self.path) as archive:
                    check_zip_expansion(self.path, archive)
        obj = load_pickled(self.path, trust_pickle=trust_pickle, mmap=mmap)
        self._tensors = state_dict_of(self.path, obj)


def load_pickled(path: Path, *, trust_pickle: bool, mmap: bool) -> object:
    """``torch.load`` onto the CPU, refusing code execution unless trusted."""
    with reading(path, "cannot read PyTorch checkpoint"):
        try:
            return torch_load(path, weights_only=not trust_pickle, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if trust_pickle:
                raise
            raise InputError(path, _refusal(exc)) from exc


def torch_load(path: Path, *, weights_only: bool, mmap: bool) -> object:
    """``torch.load`` of a path (to memory-map it) or else of an open file.

    ``torch.load`` hands any *path* ending in ".safetensors" to safetensors, so
    such a name, whatever its content, is passed as an open file, unmapped.
    """
    if mmap and not str(path).endswith(".safetensors"):
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    with path.open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=weights_only)


def _refusal(exc: pickle.UnpicklingError) -> str:
    """Why a weights-only load failed: forbidden globals, or opcodes it cannot handle."""
    return UNSUPPORTED_OPCODES if _OPCODE_HINT in str(exc) else NEEDS_CODE_EXECUTION
