"""TorchScript archives (``torch.jit.save``): parameters and buffers of the scripted module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ._common import TensorDictCheckpoint, reading, require_tensors, state_dict_of
from .torchscript_archive import TRUST_HINT, ClassDecl, NeedsCode, ScriptObject, load_graph

#: Deeper module nesting than this is a crafted file (real models nest a few dozen levels).
MAX_DEPTH = 1000

#: More names than this (shared submodules repeat their tensors under every path) is a crafted file.
MAX_NAMES = 200_000


class TorchScriptCheckpoint(TensorDictCheckpoint):
    """A TorchScript archive, read without running any of its code.

    ``torch.jit.load`` would compile and run the archive's own code (a class's
    ``__setstate__`` runs while loading: it can loop forever, print into the
    output or write files), so the tensors are read as data instead (see
    :mod:`.torchscript_archive`), memory-mapped. The names and values are those
    of ``torch.jit.load(path).state_dict()``: parameters and buffers, shared
    submodules under each of their names. A module that restores its own
    parameters with ``__setstate__`` cannot be read so: it is refused, or with
    ``trust_code`` loaded by ``torch.jit.load``.
    """

    format = "torchscript"

    def __init__(self, path: str | os.PathLike[str], *, trust_code: bool = False) -> None:
        super().__init__(Path(path))
        try:
            with reading(self.path, "cannot read TorchScript archive"):
                tensors = read_state_dict(self.path)
        except NeedsCode as exc:
            if not trust_code:
                raise InputError(self.path, f"{exc.problem}; {TRUST_HINT}") from None
            tensors = _run_archive(self.path)
        self._tensors = require_tensors(self.path, tensors)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.jit.load(path).state_dict()`` without running the archive's code."""
    root, declarations = load_graph(path)
    if not (isinstance(root, ScriptObject) and declarations[root.qualname].is_module):
        raise InputError(path, "TorchScript archive does not hold a module")
    return _named_tensors(path, root, declarations)


@dataclass(frozen=True)
class _Members:
    """One module's own tensors (parameters, then buffers) and its submodules, in slot order."""

    tensors: list[tuple[str, torch.Tensor]]
    children: list[tuple[str, ScriptObject]]


def _named_tensors(
    path: Path, root: ScriptObject, declarations: dict[str, ClassDecl]
) -> dict[str, torch.Tensor]:
    """Pre-order walk like ``nn.Module.state_dict``, iterative; each module's members found once."""
    members: dict[int, _Members] = {}
    out: dict[str, torch.Tensor] = {}
    count = 0
    stack: list[tuple[ScriptObject, str, int]] = [(root, "", 0)]
    while stack:
        module, prefix, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(path, f"TorchScript modules nested more than {MAX_DEPTH} deep")
        if id(module) not in members:
            members[id(module)] = _members_of(path, module, declarations)
        found = members[id(module)]
        count += len(found.tensors)
        if count > MAX_NAMES:
            raise InputError(path, f"TorchScript archive names more than {MAX_NAMES} tensors")
        out.update((prefix + name, tensor) for name, tensor in found.tensors)
        stack.extend(
            (child, f"{prefix}{name}.", depth + 1) for name, child in reversed(found.children)
        )
    return out


def _members_of(path: Path, module: ScriptObject, declarations: dict[str, ClassDecl]) -> _Members:
    """The parameters, buffers and submodules in one module's pickled attributes."""
    decl = declarations[module.qualname]
    if decl.restores_itself:
        if decl.parameters or decl.buffers or decl.holds_objects:
            raise NeedsCode(
                path,
                f"TorchScript class {module.qualname!r} restores its parameters with its own "
                "code (__setstate__)",
            )
        return _Members([], [])
    state = module.state
    if not isinstance(state, dict):
        raise InputError(path, f"TorchScript object {module.qualname!r} has no attribute table")
    params, buffers, children = [], [], []
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        if name in decl.parameters or name in decl.buffers:
            if value is None:
                continue  # an optional parameter left unset (Conv2d(bias=False)); not in state_dict
            if not isinstance(value, torch.Tensor):
                raise InputError(path, f"{module.qualname}.{name} is not a tensor")
            (params if name in decl.parameters else buffers).append((name, value))
        elif isinstance(value, ScriptObject) and declarations[value.qualname].is_module:
            children.append((name, value))
    return _Members(params + buffers, children)


def _run_archive(path: Path) -> dict[str, torch.Tensor]:
    """``torch.jit.load``: runs the archive's code; only with the user's trust flag."""
    with reading(path, "cannot read TorchScript archive"):
        module = torch.jit.load(str(path), map_location="cpu")
    return state_dict_of(path, module)
