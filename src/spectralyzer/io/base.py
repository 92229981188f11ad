"""The one interface every loader implements: a lazily read bag of named tensors."""

from __future__ import annotations

import abc
import json
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

CONFIG_NAME = "config.json"
#: Largest config.json read (real ones are a few kB; multimodal ones under 1 MB).
MAX_CONFIG_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, known before its data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32", "bfloat16", "int64"
    problem: str | None = (
        None  # why it must not be read, known from headers (e.g. overlapping view)
    )


class Checkpoint(abc.ABC):
    """A checkpoint opened for reading, one tensor at a time.

    Implementations read no tensor data in ``__init__`` beyond what the format
    needs to list its tensors, and never write to ``path``.
    """

    format: str = "unknown"

    def __init__(self, path: Path) -> None:
        self.path = path

    @abc.abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor in file order, with parameter names as the model uses them."""

    @abc.abstractmethod
    def load(self, name: str) -> torch.Tensor:
        """Read one tensor onto the CPU in its stored dtype."""

    def notes(self) -> dict[str, Any]:
        """What the reader did that the user must know (e.g. ``{"quantisation": "fp8, 128x128
        block scales, dequantised"}``, ``{"ignored_files": [...]}``); the summary carries them
        under ``layout``. Empty for a plain checkpoint."""
        return {}

    def config(self) -> dict[str, Any] | None:
        """The parsed ``config.json`` of a Hugging Face folder, or the one beside a file;
        None when there is none. Layout rules read it (heads, ``model_type``).

        Raises :class:`InputError` naming the file when it is not a JSON object.
        """
        if not hasattr(self, "_config"):
            self._config = read_config(self.path)
        return self._config

    def storage_key(self, name: str) -> Hashable | None:
        """What identifies the memory ``name`` is stored in, for formats whose tensors can
        share storage (two names with one key are one tensor); None: compare bytes instead
        (:mod:`.aliases`)."""
        return None

    def head_bytes(self, name: str, count: int) -> bytes:
        """The first ``count`` bytes of tensor ``name`` (readers may avoid a full read)."""
        return bytes(tensor_bytes(self.load(name))[:count])

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles and memory maps."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_config(path: Path) -> dict[str, Any] | None:
    """``config.json`` in ``path`` (a folder) or beside it (a file), parsed; None if absent."""
    found = path / CONFIG_NAME if path.is_dir() else path.parent / CONFIG_NAME
    if not path.exists() or not found.is_file():
        return None
    try:
        if found.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(found, f"larger than {MAX_CONFIG_BYTES // 2**20} MB, not a config")
        parsed = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(found, f"cannot be read as JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise InputError(found, f"must hold a JSON object, not {type(parsed).__name__}")
    return parsed


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a tensor in row-major order (no copy when it is contiguous on the CPU)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())
