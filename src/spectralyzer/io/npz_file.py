"""NumPy ``.npz`` archives: one tensor per member, read when asked for."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .. import budget
from ..errors import InputError
from ._common import check_zip_expansion, dtype_name, reading, require_tensors
from .base import Checkpoint, TensorInfo


class NpzCheckpoint(Checkpoint):
    """An ``np.savez`` archive, opened without pickle support.

    Listing reads only each member's ``.npy`` header. Arrays torch cannot hold
    (strings, dates, records, long doubles) are skipped and named in ``skipped``;
    object arrays, which need pickle, make the whole archive an InputError.

    NumPy allocates a member's whole array from its ``.npy`` header before
    decompressing it, so sizes are checked first: a header must not promise
    more data than its zip entry's ``file_size`` holds, and no member (or, when
    loaded, no array) may expand beyond the available memory
    (:func:`spectralyzer.budget.available_memory`) -- a 1.9 MB
    ``np.savez_compressed`` of zeros can hold a 6 GB array.
    """

    format = "npz"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        self.skipped: list[str] = []
        with reading(self.path, "cannot read .npz archive"):
            self._npz = np.load(self.path, allow_pickle=False)
            check_zip_expansion(self.path, self._npz.zip)
            headers = {name: _member_header(self._npz, name) for name in self._npz.files}
        infos = [self._info(name, shape, dtype) for name, (shape, dtype, _) in headers.items()]
        self._sizes = {name: self._checked_size(name, *header) for name, header in headers.items()}
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

    def _checked_size(self, name: str, shape: tuple[int, ...], dtype: np.dtype, room: int) -> int:
        """Bytes of the array a member holds; InputError when its header promises more."""
        size = math.prod(shape) * dtype.itemsize
        if size > room:
            raise InputError(
                self.path,
                f"array {name!r}: header says shape {tuple(shape)} of {dtype} ({size} bytes), "
                f"the member holds {room} bytes",
            )
        return size

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        available = budget.available_memory()
        if available is not None and self._sizes[name] > available:
            raise InputError(
                self.path,
                f"array {name!r} needs {budget.format_bytes(self._sizes[name])} of memory, "
                f"more than the {budget.format_bytes(available)} available",
            )
        with reading(self.path, f"cannot read array {name!r}"):
            array = self._npz[name]
            return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))

    def close(self) -> None:
        self._npz.close()


def _member_header(npz: np.lib.npyio.NpzFile, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and the bytes left after the header, without reading the data."""
    info = npz.zip.getinfo(f"{name}.npy")
    with npz.zip.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        return shape, dtype, info.file_size - member.tell()


def _torch_dtype(dtype: np.dtype) -> torch.dtype | None:
    """The torch dtype ``torch.from_numpy`` gives for ``dtype``, or None if it has none."""
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype.newbyteorder("="))).dtype
    except (TypeError, ValueError):
        return None
