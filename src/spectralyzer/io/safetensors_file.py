"""``.safetensors`` files: header validated by hand, tensors memory-mapped one at a time."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open

from ..errors import InputError
from ._common import describe, reading, require_tensors
from .base import Checkpoint, TensorInfo
from .sniff import MAX_SAFETENSORS_HEADER

#: safetensors dtype codes -> torch dtype names.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}

_LENGTH = struct.Struct("<Q")


class HeaderEntry(NamedTuple):
    """One tensor as the header describes it; offsets are relative to the data section."""

    info: TensorInfo
    begin: int
    end: int


def read_header(path: str | os.PathLike[str]) -> list[HeaderEntry]:
    """Parse and validate a safetensors header without touching tensor data.

    Entries come in file order. Raises ``InputError`` for a truncated file, an
    implausible header length, a header that is not UTF-8 JSON, unknown dtypes,
    offsets that disagree with shape and dtype, or offsets beyond the end of file.
    """
    path = Path(path)
    with reading(path, "cannot read safetensors header"):
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = _header_length(path, f.read(_LENGTH.size), size)
            raw = f.read(length)
    entries = sorted(
        (
            _entry(path, name, spec)
            for name, spec in _decode(path, raw).items()
            if name != "__metadata__"
        ),
        key=lambda entry: (entry.begin, entry.end),
    )
    _check_data_size(path, entries, available=size - _LENGTH.size - length)
    return entries


def _header_length(path: Path, prefix: bytes, size: int) -> int:
    """The u64 header length, checked against the file size."""
    if len(prefix) < _LENGTH.size:
        raise InputError(path, "truncated: too short for a safetensors header")
    (length,) = _LENGTH.unpack(prefix)
    if not 2 <= length <= MAX_SAFETENSORS_HEADER:
        raise InputError(
            path, f"implausible safetensors header length {length} (file has {size} bytes)"
        )
    if _LENGTH.size + length > size:
        raise InputError(
            path,
            f"truncated: header says it is {length} bytes long, "
            f"file has {size - _LENGTH.size} bytes after the length",
        )
    return length


def _decode(path: Path, raw: bytes) -> dict:
    """The header's JSON object."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "safetensors header is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(path, f"safetensors header is not valid JSON ({describe(exc)})") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    return header


def _entry(path: Path, name: str, spec: object) -> HeaderEntry:
    """Validate one header entry: dtype, shape, and offsets consistent with both."""
    if not isinstance(spec, dict):
        raise InputError(path, f"safetensors header entry {name!r} is not an object")
    dtype = _dtype(path, name, spec.get("dtype"))
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if not _is_int_list(shape) or any(dim < 0 for dim in shape):
        raise InputError(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise InputError(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    needed = math.prod(shape) * getattr(torch, dtype).itemsize
    if end - begin != needed:
        raise InputError(
            path,
            f"header lies about {name!r}: shape {tuple(shape)} of {dtype} needs {needed} bytes, "
            f"data_offsets span {end - begin}",
        )
    return HeaderEntry(TensorInfo(name, tuple(shape), dtype), begin, end)


def _dtype(path: Path, name: str, code: object) -> str:
    """The torch dtype name for a safetensors dtype code this torch can hold."""
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise InputError(path, f"tensor {name!r} has unsupported dtype {code!r}")
    return dtype


def _is_int_list(value: object) -> bool:
    """A JSON array of integers (booleans excluded)."""
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    )


def _check_data_size(path: Path, entries: list[HeaderEntry], available: int) -> None:
    """Every tensor's bytes must lie inside the file."""
    needed = max((entry.end for entry in entries), default=0)
    if needed > available:
        raise InputError(
            path, f"truncated: header says {needed} bytes of data, file has {available}"
        )


class SafetensorsCheckpoint(Checkpoint):
    """A ``.safetensors`` file, memory-mapped; ``load()`` reads one tensor."""

    format = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        entries = read_header(self.path)
        self._infos = require_tensors(self.path, [entry.info for entry in entries])
        self._names = {info.name for info in self._infos}
        self._spans = {entry.info.name: (entry.begin, entry.end) for entry in entries}
        with reading(self.path, "cannot open safetensors file"):
            self._handle = safe_open(str(self.path), framework="pt")

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        if self._handle is None:
            raise ValueError(f"{self.path}: checkpoint is closed")
        with reading(self.path, f"cannot read tensor {name!r}"):
            return self._handle.get_tensor(name)

    def head_bytes(self, name: str, count: int) -> bytes:
        """Read from the file itself: one page, not the whole tensor."""
        begin, end = self._spans[name]
        with reading(self.path, f"cannot read tensor {name!r}"), self.path.open("rb") as f:
            (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
            f.seek(_LENGTH.size + length + begin)
            return f.read(min(count, end - begin))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None
