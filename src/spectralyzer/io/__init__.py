"""Checkpoint readers: safetensors, PyTorch (zip, legacy, TorchScript), .npz, GGUF, ONNX,
Hugging Face folders and PEFT LoRA adapter folders; quantised weights (fp8 with scales, GPTQ,
AWQ) are read dequantised.

>>> from spectralyzer.io import open_checkpoint
>>> with open_checkpoint("model.safetensors") as ckpt:  # doctest: +SKIP
...     weight = ckpt.load(ckpt.tensors()[0].name)
"""

from __future__ import annotations

from .base import Checkpoint, TensorInfo
from .open import open_checkpoint
from .sniff import FORMATS, detect_format

__all__ = ["FORMATS", "Checkpoint", "TensorInfo", "detect_format", "open_checkpoint"]
