"""Helpers every loader shares: error translation, dtype names, state-dict flattening."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import torch

from ..errors import InputError
from .base import Checkpoint, TensorInfo

#: Keys under which training scripts commonly nest the model's state dict.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")

#: Prefix ``nn.DataParallel`` puts in front of every parameter name.
DATA_PARALLEL_PREFIX = "module."

_Sized = TypeVar("_Sized", list, dict)

_MAX_MESSAGE = 160
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe(exc: BaseException) -> str:
    """One short printable line for a third-party exception.

    Third-party messages are often multi-line essays (torch) or contain control
    characters; keep the first sentence of the first non-empty line.
    """
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    first = "".join(ch if ch.isprintable() else "?" for ch in first).rstrip(".")
    if len(first) > _MAX_MESSAGE:
        first = first[: _MAX_MESSAGE - 3] + "..."
    name = type(exc).__name__
    if not name[:1].isupper():  # e.g. struct.error
        name = f"{type(exc).__module__.lstrip('_')}.{name}"
    return f"{name}: {first}" if first else name


@contextmanager
def reading(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn any exception a third-party reader raises inside the block into an InputError.

    Wrap only calls into torch, safetensors, numpy or zipfile: whatever they raise
    while parsing a file is a property of the file (corrupt, truncated,
    unsupported), so the user gets ``"<path>: <what> (<cause>)"`` instead of a
    traceback. Their warnings are silenced too. ``InputError`` passes unchanged.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except InputError:
        raise
    except Exception as exc:  # the boundary to third-party parsers, see docstring
        raise InputError(path, f"{what} ({describe(exc)})") from exc


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def info_of(name: str, tensor: torch.Tensor) -> TensorInfo:
    """The TensorInfo of an in-memory (or memory-mapped) tensor."""
    return TensorInfo(name, tuple(tensor.shape), dtype_name(tensor.dtype))


def _as_mapping(value: object) -> Mapping | None:
    """A mapping to descend into: mappings as they are, modules as their state dict."""
    if isinstance(value, torch.nn.Module):
        return value.state_dict()
    if isinstance(value, Mapping):
        return value
    return None


def flatten(mapping: Mapping, prefix: str = "", _path: frozenset[int] = frozenset()) -> dict:
    """Every tensor in nested mappings, keyed by dotted names; other values are ignored.

    ``{"encoder": {"weight": t}, "epoch": 3}`` -> ``{"encoder.weight": t}``.
    A mapping that contains itself (possible in a crafted pickle) is not followed.
    """
    if id(mapping) in _path:
        return {}
    inside = _path | {id(mapping)}
    out: dict[str, torch.Tensor] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif (inner := _as_mapping(value)) is not None:
            out.update(flatten(inner, f"{name}.", inside))
    return out


def unwrap(mapping: Mapping) -> Mapping:
    """Descend into the one wrapper entry (``"state_dict"``, ``"model"``, ...) holding tensors.

    Repeats, so ``{"model": {"state_dict": sd}, "optimizer": ...}`` gives ``sd``.
    Sibling entries (optimizer state, epoch counters) are dropped. When no, or more
    than one, wrapper key holds tensors the mapping is returned as it is.
    """
    seen: set[int] = set()
    while id(mapping) not in seen:
        seen.add(id(mapping))
        candidates = [
            inner
            for key in WRAPPER_KEYS
            if key in mapping
            and (inner := _as_mapping(mapping[key])) is not None
            and flatten(inner)
        ]
        if len(candidates) != 1:
            break
        mapping = candidates[0]
    return mapping


def strip_data_parallel(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a leading ``"module."`` when every name has it (``nn.DataParallel`` checkpoints)."""
    if tensors and all(name.startswith(DATA_PARALLEL_PREFIX) for name in tensors):
        return {name[len(DATA_PARALLEL_PREFIX) :]: t for name, t in tensors.items()}
    return tensors


def state_dict_of(path: str | os.PathLike[str], obj: object) -> dict[str, torch.Tensor]:
    """The named tensors of whatever ``torch.load``/``torch.jit.load`` returned.

    Accepts a tensor, a module, or a (possibly nested, possibly wrapped) mapping.
    Raises ``InputError`` when there is no tensor at all.
    """
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    mapping = _as_mapping(obj)
    tensors = strip_data_parallel(flatten(unwrap(mapping))) if mapping is not None else {}
    return require_tensors(path, tensors)


def require_tensors(path: str | os.PathLike[str], tensors: _Sized) -> _Sized:
    """``tensors`` itself, or an InputError if it is empty."""
    if not len(tensors):
        raise InputError(path, "contains no tensors")
    return tensors


class TensorDictCheckpoint(Checkpoint):
    """Base for formats whose reader hands over every tensor at once (torch, TorchScript).

    Subclasses fill ``self._tensors``; memory-mapped tensors stay unread until used.
    """

    _tensors: dict[str, torch.Tensor]

    def tensors(self) -> list[TensorInfo]:
        return [info_of(name, tensor) for name, tensor in self._tensors.items()]

    def load(self, name: str) -> torch.Tensor:
        return self._tensors[name].detach()

    def close(self) -> None:
        self._tensors = {}  # drops the tensors and any memory maps behind them
