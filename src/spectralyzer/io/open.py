"""``open_checkpoint``: the one entry point from a path to a :class:`Checkpoint`."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..errors import InputError
from .adapter import AdapterCheckpoint
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


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    adapter: str | os.PathLike[str] | None = None,
) -> Checkpoint:
    """Open the checkpoint file, Hugging Face folder or PEFT adapter folder at ``path``.

    The format is detected from the content. Pickled PyTorch files are read
    with ``weights_only=True`` unless ``trust_pickle``. Every problem with the
    input (missing, corrupt, truncated, unsupported, unsafe) is an ``InputError``.
    Quantised weights (fp8 with scales, GPTQ, AWQ) are listed and loaded dequantised
    (:mod:`spectralyzer.io.quantised`); shards of a folder are dequantised together,
    since a weight's scales may lie in another shard. With ``adapter`` (a PEFT LoRA
    adapter folder) ``path`` is its base model (:func:`open_adapter`).
    """
    path = Path(path)
    opener = partial(open_file, trust_pickle=trust_pickle)
    fmt = detect_format(path)
    if fmt == "peft-adapter":
        if adapter is not None:
            raise InputError(
                path, "is itself an adapter folder; give the base model with --adapter"
            )
        return AdapterCheckpoint(path, opener)
    base = dequantised(
        HFFolderCheckpoint(path, opener) if fmt == "hf-folder" else opener(path, fmt)
    )
    return base if adapter is None else open_adapter(adapter, base, trust_pickle=trust_pickle)


def open_adapter(
    folder: str | os.PathLike[str], base: Checkpoint, *, trust_pickle: bool = False
) -> Checkpoint:
    """The LoRA adapter in ``folder`` applied to ``base`` (closed on failure)."""
    folder = Path(folder)
    try:
        if detect_format(folder) != "peft-adapter":
            raise InputError(
                folder,
                "not a PEFT adapter folder (expected adapter_config.json with "
                "adapter_model.safetensors or adapter_model.bin, and no model files)",
            )
        return AdapterCheckpoint(folder, partial(open_file, trust_pickle=trust_pickle), base)
    except BaseException:
        base.close()
        raise


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
