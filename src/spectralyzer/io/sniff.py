"""Tell a checkpoint's format from its content (magic bytes), not from its name."""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ._common import describe
from .folder_files import SAFETENSORS_INDEX_GLOB, TORCH_INDEX, candidates, is_adapter_folder

FORMATS = (
    "safetensors",
    "torch-zip",
    "torchscript",
    "torch-legacy",
    "npz",
    "gguf",
    "onnx",
    "hf-folder",
    "peft-adapter",
)

UNKNOWN_FORMAT = (
    "not a recognised checkpoint format (expected .safetensors, torch .pt/.pth/.bin, "
    "TorchScript, .npz, .gguf, .onnx, a Hugging Face folder or a PEFT adapter folder)"
)

#: safetensors refuses headers above 100 MB; anything larger is not a header.
MAX_SAFETENSORS_HEADER = 100_000_000

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header, empty archive
_PICKLE_PROTO = b"\x80"  # torch's legacy format starts with a pickled magic number
_GGUF_MAGIC = b"GGUF"
#: An ONNX ModelProto starts with field 1 (ir_version, a small varint), then one of
#: fields 2-14 (producer, domain, graph, opset_import, ...) as varint or bytes.
_ONNX_FIELD_TAGS = frozenset((field << 3) | wire for field in range(2, 15) for wire in (0, 2))
_HEAD_BYTES = 16


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of the checkpoint at ``path``: one of :data:`FORMATS`.

    Raises ``InputError`` for a missing, empty, unreadable or unrecognised path.
    """
    path = Path(path)
    mode = _stat(path).st_mode
    if stat.S_ISDIR(mode):
        return _folder_format(path)
    if not stat.S_ISREG(mode):
        raise InputError(path, "not a regular file")
    head = _head(path)
    if head.startswith(_ZIP_MAGICS):
        return _zip_format(path)
    if looks_like_safetensors(head):
        return "safetensors"
    if head.startswith(_PICKLE_PROTO):
        return "torch-legacy"
    if head.startswith(_GGUF_MAGIC):
        return "gguf"
    if looks_like_onnx(head):
        return "onnx"
    by_suffix = {".safetensors": "safetensors", ".onnx": "onnx"}.get(path.suffix.lower())
    if by_suffix:
        return by_suffix  # let that format's reader say what is wrong with the file
    raise InputError(path, UNKNOWN_FORMAT)


def looks_like_safetensors(head: bytes) -> bool:
    """A plausible u64 little-endian header length followed by a JSON object."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def looks_like_onnx(head: bytes) -> bool:
    """``ir_version`` (field 1, a varint of 1 to 127) followed by another ModelProto field.

    Protobuf has no magic number; ONNX writers serialise fields in number order,
    so a model starts ``08 <ir_version> <tag>``.
    """
    return (
        len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _ONNX_FIELD_TAGS
    )


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` with its failures as InputErrors."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise InputError(path, "no such file or directory") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        raise InputError(path, f"cannot access ({describe(exc)})") from exc


def _head(path: Path) -> bytes:
    """The first bytes of a regular file; an empty file is an error."""
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({describe(exc)})") from exc
    if not head:
        raise InputError(path, "empty file")
    return head


def _zip_format(path: Path) -> str:
    """torchscript, torch-zip or npz, from the archive's member names."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:  # the boundary to zipfile: anything it raises is a bad archive
        raise InputError(path, f"corrupt or truncated zip archive ({describe(exc)})") from exc
    members = [PurePosixPath(name).parts for name in names]
    if any(_is_torchscript_member(parts) for parts in members):
        return "torchscript"
    if any(parts[1:] == ("data.pkl",) for parts in members):
        return "torch-zip"
    files = [name for name in names if not name.endswith("/")]
    if files and all(name.endswith(".npy") for name in files):
        return "npz"
    if not files:
        raise InputError(path, "empty zip archive")
    raise InputError(path, "zip archive holds neither a PyTorch checkpoint nor .npy arrays")


def _is_torchscript_member(parts: tuple[str, ...]) -> bool:
    """``<archive>/constants.pkl`` or ``<archive>/code/...``: only TorchScript has these."""
    return parts[1:] == ("constants.pkl",) or (len(parts) > 2 and parts[1] == "code")


def _folder_format(path: Path) -> str:
    """ "peft-adapter" for an adapter folder, "hf-folder" for one with checkpoint files."""
    globs = (SAFETENSORS_INDEX_GLOB, TORCH_INDEX)
    try:
        if is_adapter_folder(path):
            return "peft-adapter"
        found = bool(candidates(path)) or any(
            entry.is_file() for pattern in globs for entry in path.glob(pattern)
        )
    except OSError as exc:
        raise InputError(path, f"cannot list folder ({describe(exc)})") from exc
    if not found:
        raise InputError(
            path,
            "folder holds no checkpoint (expected *.safetensors or pytorch_model*.bin files, "
            "or adapter_config.json with adapter_model.safetensors)",
        )
    return "hf-folder"
