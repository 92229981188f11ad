"""Helpers every loader shares: error translation, dtype names, state-dict flattening."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import torch

from .. import budget
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
    """The TensorInfo of an in-memory (or memory-mapped) tensor, with its problem if any."""
    return TensorInfo(name, tuple(tensor.shape), dtype_name(tensor.dtype), layout_problem(tensor))


def layout_problem(tensor: torch.Tensor) -> str | None:
    """Why a tensor's strides make it unsafe to read whole, or None.

    A pickle can hold a view whose strides overlap (``torch.zeros(1).expand(n, m)``
    has stride 0): 1.6 KB on disk, but any copy or conversion of it allocates
    its full logical size (64 GB for ``expand(2**24, 1024)`` of float32).  Such
    a view is refused from its shape, strides and storage size, before any
    tensor data is touched.
    """
    if tensor.layout != torch.strided:
        return f"{str(tensor.layout).removeprefix('torch.')} tensor, not a dense array"
    if tensor.is_meta:
        return "meta tensor: it has a shape but no data"
    size = tensor.element_size()
    storage = tensor.untyped_storage().nbytes() - tensor.storage_offset() * size
    if tensor.numel() * size > storage:
        return f"overlapping view: {tensor.numel()} elements over a storage of {storage} bytes"
    return None


#: A compressed member may expand at most this many times (measured with
#: np.savez_compressed: float32 weights 1.1x, 90% zeros 7x, 99% zeros 57x, all zeros 1000x) ...
MAX_EXPANSION_RATIO = 100
#: ... unless it expands to no more than this (small archives of zeros are harmless).
SMALL_MEMBER = 64 * 2**20


def check_zip_expansion(path: str | os.PathLike[str], archive: zipfile.ZipFile) -> None:
    """Refuse an archive whose compressed members would expand too far.

    A member may expand to neither more than the available memory
    (:func:`spectralyzer.budget.available_memory`) nor, above
    :data:`SMALL_MEMBER`, more than :data:`MAX_EXPANSION_RATIO` times its
    compressed size (a 1.9 MB ``np.savez_compressed`` of zeros can hold 6 GB).
    The expanded size is the member's ``file_size`` from the zip directory,
    which neither Python's ``zipfile`` nor torch's reader exceeds; it is checked
    before anything is decompressed.
    """
    available = budget.available_memory()
    for member in archive.infolist():
        if member.compress_type == zipfile.ZIP_STORED:
            continue
        expanded, packed = member.file_size, max(member.compress_size, 1)
        sizes = f"from {budget.format_bytes(packed)} to {budget.format_bytes(expanded)}"
        if available is not None and expanded > available:
            raise InputError(
                path,
                f"member {member.filename!r} expands {sizes}, more than the "
                f"{budget.format_bytes(available)} of memory available",
            )
        if expanded > SMALL_MEMBER and expanded > MAX_EXPANSION_RATIO * packed:
            raise InputError(
                path,
                f"member {member.filename!r} expands {expanded // packed}x, {sizes} "
                f"(more than {MAX_EXPANSION_RATIO}x: a compression bomb?); if it is genuine, "
                "save it uncompressed",
            )


def _as_mapping(value: object) -> Mapping | None:
    """A mapping to descend into: mappings as they are, modules as their state dict."""
    if isinstance(value, torch.nn.Module):
        return value.state_dict()
    if isinstance(value, Mapping):
        return value
    return None


#: Deepest nesting of containers followed in a checkpoint; real ones nest a few levels.
MAX_DEPTH = 100


class TooDeep(ValueError):
    """Containers in a checkpoint nest deeper than :data:`MAX_DEPTH`."""


def flatten(mapping: Mapping, prefix: str = "") -> dict:
    """Every tensor in nested mappings, keyed by dotted names; other values are ignored.

    ``{"encoder": {"weight": t}, "epoch": 3}`` -> ``{"encoder.weight": t}``.
    Walked iteratively, depth first in key order, each mapping once: a mapping
    reached again (an alias, or a cycle in a crafted pickle) is not re-walked,
    so its tensors appear under the first path only and a DAG of 40 levels of
    shared children costs 40 steps, not 2^40.  Raises :class:`TooDeep` below
    :data:`MAX_DEPTH` levels instead of exhausting the Python stack.
    """
    out: dict[str, torch.Tensor] = {}
    walked = [mapping]  # keeps every mapping alive, so no id() below is reused
    seen = {id(mapping)}
    stack = [(iter(mapping.items()), prefix)]
    while stack:
        entry = next(stack[-1][0], None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        name = f"{stack[-1][1]}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif id(value) not in seen and (inner := _as_mapping(value)) is not None:
            if len(stack) >= MAX_DEPTH:
                raise TooDeep(f"containers nested deeper than {MAX_DEPTH} levels")
            seen.add(id(value))  # a module counts once too (its state_dict() is new each time)
            walked.append(value)
            stack.append((iter(inner.items()), f"{name}."))
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
    try:
        mapping = _as_mapping(obj)
        tensors = strip_data_parallel(flatten(unwrap(mapping))) if mapping is not None else {}
    except TooDeep as exc:
        raise InputError(path, str(exc)) from None
    except RecursionError:  # a trusted pickle's module nesting, walked by torch's state_dict()
        raise InputError(path, "modules nested too deeply to list their parameters") from None
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

    def storage_key(self, name: str) -> tuple:
        """Storage, offset, strides, shape and dtype: ``torch.save`` keeps tied weights as one
        storage, so two names with equal keys are one tensor."""
        t = self._tensors[name]
        where = t.untyped_storage().data_ptr(), t.storage_offset(), t.stride()
        return (*where, tuple(t.shape), t.dtype)

    def close(self) -> None:
        self._tensors = {}  # drops the tensors and any memory maps behind them
