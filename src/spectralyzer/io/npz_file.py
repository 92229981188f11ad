"""NumPy ``.npz`` archives: one tensor per member, read when asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ._common import dtype_name, reading, require_tensors
from .base import Checkpoint, TensorInfo


class NpzCheckpoint(Checkpoint):
    """An ``np.savez`` archive, opened without pickle support.

    Listing reads only each member's ``.npy`` header. Arrays torch cannot hold
    (strings, dates, records, long doubles) are skipped and named in ``skipped``;
    object arrays, which need pickle, make the whole archive an InputError.
    """

    format = "npz"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        self.skipped: list[str] = []
        with reading(self.path, "cannot read .npz archive"):
            self._npz = np.load(self.path, allow_pickle=False)
            headers = {name: _member_header(self._npz, name) for name in self._npz.files}
        infos = [self._info(name, *header) for name, header in headers.items()]
        self._infos = require_tensors(self.path, [info for info in infos if info is not None])
        self._names = {info.name for info in self._infos}

    def _info(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> TensorInfo | None:
        """The TensorInfo of one member, or None (and noted in ``skipped``) if not numeric."""
        if dtype.hasobject:
            raise InputError(
                self.path, f"array {name!r} holds Python objects, which need pickle to load"
            )
        torch_dtype = _torch_dtype(dtype)
        if torch_dtype is None:
            self.skipped.append(name)
            return None
        return TensorInfo(name, tuple(shape), dtype_name(torch_dtype))

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        with reading(self.path, f"cannot read array {name!r}"):
            array = self._npz[name]
            return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))

    def close(self) -> None:
        self._npz.close()


def _member_header(npz: np.lib.npyio.NpzFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's ``.npy`` header, without reading its data."""
    with npz.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return shape, dtype


def _torch_dtype(dtype: np.dtype) -> torch.dtype | None:
    """The torch dtype ``torch.from_numpy`` gives for ``dtype``, or None if it has none."""
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype
    except (TypeError, ValueError):
        return None
