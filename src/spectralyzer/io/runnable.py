"""Inputs of the Hessian probes: a *runnable* model and a batch of data to run it on.

A model is given as one of

* a TorchScript archive (``torch.jit.save``): it runs its own code (when loaded
  and when run), so it is loaded only with ``trust_pickle`` (``--trust-code``);
* a full pickled module (``torch.save(model)``): runs arbitrary code when
  unpickled, so it is loaded only with ``trust_pickle``;
* an import path ``package.module:factory``: a callable returning a freshly
  built ``nn.Module``, called with no arguments, with its weights from a
  separate checkpoint in any format :func:`~spectralyzer.io.open_checkpoint` reads.

A batch is a ``torch.save`` file (read with ``weights_only=True``) or an
``.npz`` archive holding ``inputs`` and ``targets`` (or ``x`` and ``y``).
Every problem is an :class:`~spectralyzer.errors.InputError` of one line.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ._common import WRAPPER_KEYS, describe, reading
from .open import open_checkpoint, open_file
from .sniff import UNKNOWN_FORMAT, detect_format
from .torch_file import load_pickled, torch_load

#: ``package.module:factory`` (the factory may be a dotted attribute path, e.g. ``Net.build``).
FACTORY_SPEC = re.compile(r"[\w.]+:[\w.]+")

WEIGHTS_ONLY = (
    "holds weights only: give the architecture as package.module:factory and this file as --weights"
)

TORCHSCRIPT_RUNS_CODE = (
    "is a TorchScript model: probing it runs its own code; "
    "re-run with --trust-code only if you trust this file"
)

#: Names under which a batch file may hold its two arrays, in order of preference.
BATCH_KEYS = (("inputs", "targets"), ("x", "y"))

BATCH_FORMATS = "expected a torch .pt file or an .npz archive holding inputs and targets"

#: How many names an error message lists before "and N more".
_SHOWN = 3


# ----------------------------------------------------------------------------- models


def load_runnable(
    model: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    *,
    trust_pickle: bool = False,
) -> nn.Module:
    """The module that ``model`` names, on the CPU, in eval mode, with ``weights`` if given.

    ``model`` is an existing file (TorchScript archive or pickled module, both
    only if ``trust_pickle``: they run code), else an import path
    ``package.module:factory``; the current directory is searched for the
    factory's package too. ``weights`` is any checkpoint spectralyzer reads
    (safetensors, torch, TorchScript, .npz, a Hugging Face folder), loaded
    strictly: every name and shape must match.
    """
    spec = os.fspath(model)
    path = Path(spec)
    if path.exists():
        module = _module_from_file(path, trust_pickle=trust_pickle)
    elif FACTORY_SPEC.fullmatch(spec):
        module = _module_from_factory(spec)
    else:
        raise InputError(spec, "no such file (nor an import path package.module:factory)")
    if weights is not None:
        load_weights(module, weights, trust_pickle=trust_pickle, model_name=spec)
    module.cpu()
    module.eval()
    return module


def load_weights(
    module: nn.Module,
    weights: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    model_name: str = "the model",
) -> None:
    """Load the checkpoint ``weights`` into ``module`` strictly; mismatches are an InputError."""
    with open_checkpoint(weights, trust_pickle=trust_pickle) as ckpt:
        tensors = {info.name: ckpt.load(info.name) for info in ckpt.tensors()}
    mismatched = _shape_mismatches(module, tensors)
    if mismatched:
        raise InputError(weights, f"does not fit {model_name}: {mismatched}")
    with reading(weights, f"cannot load the weights into {model_name}"):
        result = module.load_state_dict(tensors, strict=False)
    problems = [
        _summary(result.missing_keys, "missing from the file"),
        _summary(result.unexpected_keys, "not in the model"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(weights, f"does not fit {model_name}: {'; '.join(problems)}")


def _module_from_file(path: Path, *, trust_pickle: bool) -> nn.Module:
    """A TorchScript archive or a pickled module (trusted only); weights-only files refused."""
    fmt = detect_format(path)
    if fmt == "torchscript":
        if not trust_pickle:
            raise InputError(path, TORCHSCRIPT_RUNS_CODE)
        with reading(path, "cannot load TorchScript archive"):
            return torch.jit.load(str(path), map_location="cpu")
    if fmt not in ("torch-zip", "torch-legacy"):
        raise InputError(path, WEIGHTS_ONLY)  # safetensors, .npz, a Hugging Face folder
    obj = load_pickled(path, trust_pickle=trust_pickle, mmap=False)
    module = _module_in(obj)
    if module is not None:
        return module
    if _has_tensors(obj):
        raise InputError(path, WEIGHTS_ONLY)
    raise InputError(
        path, f"not a runnable model (holds type {_type_name(obj)}, not a torch.nn.Module)"
    )


def _module_in(obj: object) -> nn.Module | None:
    """``obj`` if a module, or the one module under a wrapper key (``{"model": net, ...}``)."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        found = [obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), nn.Module)]
        if len(found) == 1:
            return found[0]
    return None


def _has_tensors(obj: object, depth: int = 0) -> bool:
    """Whether ``obj`` is, or (nested in mappings) holds, a tensor or a module."""
    if isinstance(obj, torch.Tensor | nn.Module):
        return True
    if isinstance(obj, Mapping) and depth < 8:
        return any(_has_tensors(value, depth + 1) for value in obj.values())
    return False


def _module_from_factory(spec: str) -> nn.Module:
    """Import ``package.module``, look up ``factory``, call it, check it made a module."""
    module_name, attr_path = spec.split(":")
    imported = _import(spec, module_name)
    factory: Any = imported
    for part in attr_path.split("."):
        if not hasattr(factory, part):
            raise InputError(spec, f"module {module_name!r} has no attribute {attr_path!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise InputError(
            spec, f"{attr_path!r} is not callable (type {_type_name(factory)}); expected a factory"
        )
    try:
        built = factory()
    except SystemExit as exc:  # sys.exit() in user code must not end spectralyzer (with 0)
        raise InputError(spec, f"the factory exited (SystemExit {exc.code})") from exc
    except Exception as exc:  # the boundary to user code: any failure is a bad factory
        raise InputError(spec, f"the factory raised {describe(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise InputError(
            spec, f"the factory returned type {_type_name(built)}, not a torch.nn.Module"
        )
    return built


def _import(spec: str, module_name: str) -> object:
    """``importlib.import_module`` with the current directory searched too, failures as InputError."""
    if not all(module_name.split(".")):
        raise InputError(spec, f"{module_name!r} is not a module name")
    try:
        with _cwd_on_path():
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise InputError(spec, f"no module named {exc.name!r}") from exc
        raise InputError(spec, f"cannot import {module_name!r} ({describe(exc)})") from exc
    except SystemExit as exc:  # module-level sys.exit() must not end spectralyzer
        raise InputError(spec, f"importing {module_name!r} exited (SystemExit {exc.code})") from exc
    except Exception as exc:  # the boundary to user code: module-level code may raise anything
        raise InputError(spec, f"importing {module_name!r} failed ({describe(exc)})") from exc


@contextmanager
def _cwd_on_path():
    """Let ``mymodels:make_net`` find ``./mymodels.py``, as ``python -m`` would."""
    added = "" not in sys.path and os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())


def _shape_mismatches(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> str:
    """``""``, or a summary of the names whose shape in the file differs from the model's."""
    expected = module.state_dict()
    wrong = [
        f"{name} {_shape(tensors[name])} in the file, {_shape(tensor)} in the model"
        for name, tensor in expected.items()
        if name in tensors and tensors[name].shape != tensor.shape
    ]
    if not wrong:
        return ""
    more = f", and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
    return f"{len(wrong)} shape mismatch{'es' if len(wrong) > 1 else ''} ({', '.join(wrong[:_SHOWN])}{more})"


def _summary(names: list[str], what: str) -> str:
    """``"2 tensors missing from the file (a, b)"``, or ``""`` for no names."""
    if not names:
        return ""
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    more = f", and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{len(names)} tensor{'s' if len(names) > 1 else ''} {what} ({shown}{more})"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) if tensor.dim() else "scalar"


def _type_name(obj: object) -> str:
    kind = type(obj)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


# ----------------------------------------------------------------------------- batches


def load_batch(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` from a batch file; both have the same (non-zero) first dimension.

    A ``torch.save`` file of a dict (``inputs``/``targets`` or ``x``/``y``) or of
    an ``(inputs, targets)`` pair, read with ``weights_only=True``; or an ``.npz``
    (or safetensors) archive with arrays of those names. The content decides the
    format, not the file name. Tensors keep their dtypes; they are on the CPU.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"is a folder; {BATCH_FORMATS}")
    try:
        fmt = detect_format(path)
    except InputError as exc:
        if exc.problem == UNKNOWN_FORMAT:
            raise InputError(path, f"not a recognised batch file ({BATCH_FORMATS})") from None
        raise
    if fmt in ("torch-zip", "torch-legacy"):
        inputs, targets = _torch_batch(path)
    elif fmt in ("npz", "safetensors"):
        inputs, targets = _archive_batch(path, fmt)
    else:
        raise InputError(path, f"is a {fmt} file, not a batch ({BATCH_FORMATS})")
    return _checked(path, inputs, targets)


def _torch_batch(path: Path) -> tuple[object, object]:
    """The two entries of a ``torch.save``'d dict or pair, unpickled without running code."""
    with reading(path, "cannot read PyTorch batch file"):
        try:
            obj = torch_load(path, weights_only=True, mmap=False)
        except pickle.UnpicklingError as exc:
            raise InputError(
                path,
                "needs arbitrary code execution to unpickle; save the batch as plain tensors "
                "({'inputs': ..., 'targets': ...} or a pair) or as an .npz archive",
            ) from exc
    if isinstance(obj, tuple | list):
        if len(obj) != 2:
            raise InputError(
                path, f"holds a {_type_name(obj)} of {len(obj)} items; expected (inputs, targets)"
            )
        return obj[0], obj[1]
    if isinstance(obj, Mapping):
        keys = [str(key) for key in obj]
        first, second = _batch_keys(path, keys)
        return obj[first], obj[second]
    raise InputError(
        path,
        f"holds type {_type_name(obj)}; expected a dict with 'inputs' and 'targets' "
        "or an (inputs, targets) pair",
    )


def _archive_batch(path: Path, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two named arrays of an .npz (or safetensors) archive."""
    with open_file(path, fmt) as archive:
        names = [info.name for info in archive.tensors()]
        skipped = list(getattr(archive, "skipped", []))
        first, second = _batch_keys(path, names + skipped)
        for key in (first, second):
            if key in skipped:
                raise InputError(path, f"array {key!r} is not numeric")
        return archive.load(first), archive.load(second)


def _batch_keys(path: Path, keys: list[str]) -> tuple[str, str]:
    """The pair of names in ``keys`` that holds the batch."""
    for pair in BATCH_KEYS:
        if all(key in keys for key in pair):
            return pair
    found = ", ".join(repr(key) for key in keys[:10]) + (", ..." if len(keys) > 10 else "")
    raise InputError(
        path,
        f"expected arrays 'inputs' and 'targets' (or 'x' and 'y'); found {found or 'none'}",
    )


def _checked(path: Path, inputs: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as tensors with one sample per row, as many of each, at least one, inputs finite."""
    tensors = [
        _as_tensor(path, value, name) for value, name in ((inputs, "inputs"), (targets, "targets"))
    ]
    for tensor, name in zip(tensors, ("inputs", "targets"), strict=True):
        if tensor.dim() == 0:
            raise InputError(path, f"{name} is a scalar; expected one row per sample")
    inputs, targets = tensors
    if len(inputs) != len(targets):
        raise InputError(
            path,
            f"inputs and targets have different numbers of samples ({len(inputs)} and {len(targets)})",
        )
    if len(inputs) == 0:
        raise InputError(path, "empty batch (0 samples)")
    for tensor, name in zip(tensors, ("inputs", "targets"), strict=True):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(path, f"{name} contain NaN or infinite values")
    return inputs.contiguous(), targets.contiguous()


def _as_tensor(path: Path, value: object, name: str) -> torch.Tensor:
    """A dense CPU tensor; anything else is an InputError (both loaders give tensors)."""
    if not isinstance(value, torch.Tensor):
        raise InputError(path, f"{name} has type {_type_name(value)}, not an array")
    if value.layout != torch.strided or value.is_quantized:
        raise InputError(path, f"{name} is a sparse or quantized tensor; expected a dense one")
    return value.cpu()
