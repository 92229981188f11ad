"""Read a TorchScript archive as data: its object graph and class declarations, no code run.

``torch.jit.load`` compiles the archive's ``code/`` and runs it (a class's
``__setstate__`` runs while loading), so a crafted archive can loop forever,
print, or write files. Here ``data.pkl`` is unpickled with an allowlist:
tensors (``_rebuild_tensor_v2`` over the archive's ``data/<key>`` records,
memory-mapped by torch's own zip loader), ``OrderedDict`` and torch's list
builders; every ``__torch__.*`` class becomes an inert :class:`ScriptObject`
holding its pickled state. Which attributes are parameters and buffers is read
as text from the class declarations in ``code/`` (``__parameters__ = [...]``).
"""

from __future__ import annotations

import ast
import collections
import os
import pickle
import re
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.serialization as serialization

from ..errors import InputError
from ._common import check_zip_expansion

#: The prefix TorchScript gives every scripted class (``__torch__.<module path>.<Class>``).
SCRIPT_PREFIX = "__torch__"

#: What the archive may still need code to load: appended to every :class:`NeedsCode`.
TRUST_HINT = "re-run with --trust-code only if you trust this file"


class NeedsCode(InputError):
    """The archive cannot be read without running code (a class restores itself, or an unknown global)."""


def _passthrough(value: object, *_: object) -> object:
    """``torch.jit._pickle.build_intlist(xs)`` is ``xs``; ``restore_type_tag(v, t)`` is ``v``."""
    return value


#: Globals ``data.pkl`` may name besides ``__torch__.*`` classes and storage types.
ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch", "UntypedStorage"): torch.UntypedStorage,
    **{
        ("torch.jit._pickle", name): _passthrough
        for name in (
            "build_intlist",
            "build_tensorlist",
            "build_doublelist",
            "build_boollist",
            "restore_type_tag",
        )
    },
}


class ScriptObject:
    """An object of a scripted class as plain data: ``qualname`` and the state it was pickled with.

    ``state`` is what pickle's BUILD gives (the attribute dict, or whatever the
    class's ``__getstate__`` returned); nothing of the class's code is used.
    """

    __slots__ = ("state",)
    qualname = ""

    def __init__(self) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class RefusedGlobal(pickle.UnpicklingError):
    """``data.pkl`` names a global outside the allowlist."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Maps ``__torch__.*`` classes to :class:`ScriptObject` types; refuses unlisted globals."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._script_types: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == SCRIPT_PREFIX or module.startswith(SCRIPT_PREFIX + "."):
            qualname = f"{module}.{name}"
            if qualname not in self._script_types:
                attrs = {"qualname": qualname, "__slots__": ()}
                self._script_types[qualname] = type("ScriptObject", (ScriptObject,), attrs)
            return self._script_types[qualname]
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise RefusedGlobal(module, name)


@dataclass(frozen=True)
class ClassDecl:
    """What ``code/`` declares about one scripted class (read as text, never compiled)."""

    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    restores_itself: bool = False  # defines __setstate__: its attributes are set by its code
    holds_objects: bool = False  # has attributes of scripted types (submodules, script classes)


def load_graph(path: Path) -> tuple[object, dict[str, ClassDecl]]:
    """The unpickled ``data.pkl`` of the archive at ``path`` and the declaration of each class in it.

    Tensors are memory-mapped from the file (copy-on-write: the file is never
    written). Raises :class:`NeedsCode` for a global outside :data:`ALLOWED`.
    """
    with zipfile.ZipFile(path) as members:  # data.pkl and code/ are read whole: bound them first
        check_zip_expansion(path, members)
    size = os.path.getsize(path)
    storage = torch.UntypedStorage.from_file(os.fspath(path), False, size) if size else None
    with serialization._open_zipfile_reader(os.fspath(path)) as archive:
        unpickler = types.SimpleNamespace(Unpickler=RestrictedUnpickler)
        try:
            root = serialization._load(archive, "cpu", unpickler, overall_storage=storage)
        except RefusedGlobal as exc:
            raise NeedsCode(
                path, f"TorchScript archive refers to {exc.qualname!r}, which is not plain data"
            ) from None
        return root, _declarations(archive, _script_classes(root))


def _script_classes(root: object) -> set[str]:
    """The qualnames of every ScriptObject reachable from ``root`` (each object visited once)."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, ScriptObject):
            found.add(obj.qualname)
            stack.append(obj.state)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple):
            stack.extend(obj)
    return found


_CLASS = re.compile(r"class (\w+)(?:\((\w*)\))?:")
_LIST = re.compile(r"  (__parameters__|__buffers__) = (\[.*\])")
_ATTRIBUTE_TYPE = re.compile(r"  (?:\w+ :|__annotations__\[.*\] =) (.*)")
_SETSTATE = "  def __setstate__("
_MODULE_PART = re.compile(r"\w+")


def _declarations(archive: torch._C.PyTorchFileReader, qualnames: set[str]) -> dict[str, ClassDecl]:
    """``{qualname: ClassDecl}``; a class without source (e.g. a C++ class) is not a module."""
    sources: dict[str, dict[str, ClassDecl]] = {}
    out: dict[str, ClassDecl] = {}
    for qualname in qualnames:
        module, _, name = qualname.rpartition(".")
        if module not in sources:
            sources[module] = _parse_source(_source(archive, module))
        out[qualname] = sources[module].get(name, ClassDecl(is_module=False))
    return out


def _source(archive: torch._C.PyTorchFileReader, module: str) -> str:
    """The text of ``code/<module path>.py``, or "" when the archive has none."""
    parts = module.split(".")
    if not all(_MODULE_PART.fullmatch(part) for part in parts):
        return ""
    record = "code/" + "/".join(parts) + ".py"
    if not archive.has_record(record):
        return ""
    return bytes(archive.get_record(record)).decode("utf-8", errors="replace")


def _parse_source(text: str) -> dict[str, ClassDecl]:
    """Every class declared at the top level of one ``code/`` file."""
    out: dict[str, ClassDecl] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _CLASS.fullmatch(line)
        if match is None:
            continue
        body = []
        for inner in lines[i + 1 :]:
            if inner and not inner.startswith(" "):
                break
            body.append(inner)
        out[match.group(1)] = _parse_class(match.group(2) == "Module", body)
    return out


def _parse_class(is_module: bool, body: list[str]) -> ClassDecl:
    """The declarations in one class body (``ast.literal_eval`` reads the name lists: no code)."""
    lists: dict[str, tuple[str, ...]] = {}
    holds_objects = False
    for line in body:
        if (match := _LIST.fullmatch(line)) is not None:
            names = ast.literal_eval(match.group(2))
            lists[match.group(1)] = tuple(str(name) for name in names)
        elif (match := _ATTRIBUTE_TYPE.fullmatch(line)) is not None:
            holds_objects |= f"{SCRIPT_PREFIX}." in match.group(1)
    return ClassDecl(
        is_module=is_module,
        parameters=lists.get("__parameters__", ()),
        buffers=lists.get("__buffers__", ()),
        restores_itself=any(line.startswith(_SETSTATE) for line in body),
        holds_objects=holds_objects,
    )
