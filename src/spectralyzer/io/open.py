"""``open_checkpoint``: the one entry point from a path to a :class:`Checkpoint`."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..errors import InputError
from .base import Checkpoint
from .gguf_file import GGUFCheckpoint
from .hf_folder import HFFolderCheckpoint
from .npz_file import NpzCheckpoint
from .onnx_file import OnnxCheckpoint
from .quantised import dequantised
from .safetensors_file import SafetensorsCheckpoint
from .sniff import detect_format
from .torch_file import TorchCheckpoint
from .torchscript_file import TorchScriptCheckpoint


def open_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Checkpoint:
    """Open the checkpoint file or Hugging Face folder at ``path`` for reading.

    The format is detected from the content. Pickled PyTorch files are read
    with ``weights_only=True`` unless ``trust_pickle``. Every problem with the
    input (missing, corrupt, truncated, unsupported, unsafe) is an ``InputError``.
    Quantised weights (fp8 with scales, GPTQ, AWQ) are listed and loaded dequantised
    (:mod:`spectralyzer.io.quantised`); shards of a folder are dequantised together,
    since a weight's scales may lie in another shard.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "hf-folder":
        return dequantised(HFFolderCheckpoint(path, partial(open_file, trust_pickle=trust_pickle)))
    return dequantised(open_file(path, fmt, trust_pickle=trust_pickle))


def open_file(
    path: str | os.PathLike[str], fmt: str | None = None, *, trust_pickle: bool = False
) -> Checkpoint:
    """Open a single checkpoint file, of format ``fmt`` (detected when None)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "safetensors":
        return SafetensorsCheckpoint(path)
    if fmt in ("torch-zip", "torch-legacy"):
        return TorchCheckpoint(path, trust_pickle=trust_pickle, mmap=fmt == "torch-zip")
    if fmt == "torchscript":
        return TorchScriptCheckpoint(path, trust_code=trust_pickle)
    if fmt == "npz":
        return NpzCheckpoint(path)
    if fmt == "gguf":
        return GGUFCheckpoint(path)
    if fmt == "onnx":
        return OnnxCheckpoint(path)
    raise InputError(path, f"expected a checkpoint file, found format {fmt!r}")
