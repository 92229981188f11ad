"""The checkpoints of a training run: found in a folder or glob, ordered by their step.

Training loops name checkpoints by step or epoch (``checkpoint-900``,
``epoch_03.safetensors``, ``step=1000.ckpt``); sorting those names as text puts
``checkpoint-1000`` before ``checkpoint-900``. Here numbers inside names are
compared as numbers ("natural" order), and the step is the last number of the
name (file extension and shard counters left out).

A run folder holds checkpoint files (by extension, :data:`CHECKPOINT_SUFFIXES`)
and Hugging Face sub-folders (a folder with ``*.safetensors`` or
``pytorch_model*.bin``); a folder that is itself one Hugging Face checkpoint
(:func:`is_one_model`) is one model, not a run.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, OptionError

#: Orders of a run's checkpoints (``compare --order``).
ORDERS = ("natural", "name", "mtime")
#: File names taken for checkpoints in a run folder.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz")
#: Files of a Hugging Face checkpoint folder (as :mod:`spectralyzer.io.sniff` recognises it).
HF_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_NUMBER = re.compile(r"(\d+)")
_SHARD = re.compile(r"-\d+-of-\d+$")  # model-00001-of-00003: a shard counter, not a step
_STEP_LABELS = tuple(
    re.compile(rf"(?:{words})[=_-]?(\d+)", re.IGNORECASE)
    for words in ("step|iter", "checkpoint|ckpt", "epoch")
)
_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(name: str) -> tuple:
    """Sort key comparing the digit runs of ``name`` as numbers (``a-900`` < ``a-1000``)."""
    parts = _NUMBER.split(name)
    return tuple((0, int(p), "") if i % 2 else (1, 0, p.lower()) for i, p in enumerate(parts))


def step_of(path: str | os.PathLike[str], labelled_only: bool = False) -> int | None:
    """The step or epoch in a checkpoint's name, or None.

    A number labelled ``step`` (or ``iter``), else ``checkpoint``/``ckpt``, else
    ``epoch`` wins (Lightning's ``epoch=2-step=20-loss=0.51.ckpt`` -> 20,
    ``checkpoint-1000`` -> 1000, ``epoch_03.safetensors`` -> 3); otherwise the
    last number of the name (extension and shard counter left out), unless
    ``labelled_only``: in a list of models such as ``resnet18.pt, resnet50.pt``
    a bare number is no step.
    """
    name = Path(path).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _SHARD.sub("", name)
    for label in _STEP_LABELS:
        labelled = label.search(name)
        if labelled:
            return int(labelled.group(1))
    numbers = _NUMBER.findall(name)
    return int(numbers[-1]) if numbers and not labelled_only else None


def is_hf_folder(path: Path) -> bool:
    """A folder holding Hugging Face weight files."""
    return path.is_dir() and bool(_weight_files(path))


def is_one_model(path: Path) -> bool:
    """A Hugging Face folder that is one model, not a run folder of several checkpoint files.

    One model: an index or ``config.json`` is there, or the usual single-file
    names, or shard names (``-00001-of-00003``), or a single weight file.
    """
    weights = _weight_files(path) if path.is_dir() else []
    if not weights:
        return False
    marks = ("config.json", "model.safetensors", "pytorch_model.bin")
    return (
        len(weights) == 1
        or any((path / mark).exists() for mark in marks)
        or any(path.glob("*.index.json"))
        or any(_SHARD.search(p.name.split(".")[0]) for p in weights)
    )


def _weight_files(folder: Path) -> list[Path]:
    return [p for pattern in HF_WEIGHT_GLOBS for p in folder.glob(pattern)]


def is_checkpoint_file(path: Path) -> bool:
    """A visible regular file with a checkpoint extension."""
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in CHECKPOINT_SUFFIXES
        and path.is_file()
    )


def run_members(folder: Path) -> list[Path]:
    """The checkpoints directly in a run folder: checkpoint files and HF sub-folders."""
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise InputError(folder, f"cannot list the folder ({err.strerror or err})") from None
    return [
        p
        for p in entries
        if is_checkpoint_file(p) or (not p.name.startswith(".") and is_hf_folder(p))
    ]


def order_paths(paths: Sequence[Path], order: str) -> list[Path]:
    """``paths`` sorted by ``order`` (:data:`ORDERS`): natural, plain name, or modification time."""
    if order not in ORDERS:
        raise OptionError("order", f"must be one of {', '.join(ORDERS)}, not {order!r}")
    if order == "name":
        return sorted(paths, key=lambda p: p.name)
    if order == "mtime":
        return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, natural_key(p.name)))
    return sorted(paths, key=lambda p: (natural_key(p.name), p.name))


def expand_sources(given: Sequence[str | os.PathLike[str]], order: str = "natural") -> list[Path]:
    """The checkpoints named by ``given``: a run folder or a glob is expanded and ordered by
    ``order``; a file or a Hugging Face folder stays one model, in the order given."""
    if order not in ORDERS:
        raise OptionError("order", f"must be one of {', '.join(ORDERS)}, not {order!r}")
    found: list[Path] = []
    for item in given:
        path = Path(item)
        if path.is_dir() and not is_one_model(path):
            members = run_members(path)
            if not members:
                raise InputError(path, "no checkpoint files or Hugging Face sub-folders in it")
            found += order_paths(members, order)
        elif not path.exists() and _GLOB_CHARS.search(os.fspath(item)):
            matches = [Path(p) for p in glob.glob(os.fspath(item))]
            members = [p for p in matches if is_checkpoint_file(p) or is_hf_folder(p)]
            if not members:
                raise InputError(path, "the pattern matches no checkpoint")
            found += order_paths(members, order)
        else:
            found.append(path)
    return found
