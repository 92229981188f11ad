"""Which files of a model folder form the model, chosen as Hugging Face ``from_pretrained`` does.

``transformers`` reads a local folder by file name, in this order:
``model.safetensors``, ``model.safetensors.index.json``,
``pytorch_model.bin``, ``pytorch_model.bin.index.json``.  Beyond those,
this module accepts a complete set of index-less shards
(``<prefix>-00001-of-0000N.safetensors`` ... all N present) and a folder's
only checkpoint file.  Several candidates with none of these rules to pick
one is an error naming them: reading them all mixed a stray
``consolidated.safetensors`` (Mistral's original format, beside the HF
one) into the model and counted every layer twice.

Adapter files (``adapter_model.*``) and training state (``optimizer.pt``,
``training_args.bin``, ...) are never part of a model; every weight-like file
not read is listed as ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ._common import reading

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_INDEX_GLOB = "*.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")

#: Suffixes of files that hold weights (listed as ignored when not read).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".gguf", ".onnx")
#: Torch files a trainer writes beside a model that are not the model.
TRAINING_STATE = re.compile(
    r"^(training_args\.bin|optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$"
)
_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<n>\d{5})-of-(?P<total>\d{5})\.(?P<ext>safetensors|bin)$")


def weight_files(folder: Path) -> list[Path]:
    """Regular files of ``folder`` (not below it) with a weight suffix, sorted by name."""
    with reading(folder, "cannot list folder"):
        return sorted(
            path
            for path in folder.iterdir()
            if path.suffix.lower() in WEIGHT_SUFFIXES and path.is_file()
        )


def files_matching(folder: Path, pattern: str) -> list[Path]:
    """Regular files in ``folder`` matching ``pattern``, sorted by name."""
    with reading(folder, "cannot list folder"):
        return sorted(path for path in folder.glob(pattern) if path.is_file())


def candidates(folder: Path) -> list[Path]:
    """Files that could be the model: safetensors files, else torch files; never an adapter
    or training state."""
    files = [f for f in weight_files(folder) if f.name not in ADAPTER_FILES]
    safetensors = [f for f in files if f.suffix.lower() == ".safetensors"]
    torch_files = [
        f
        for f in files
        if f.suffix.lower() in (".bin", ".pt", ".pth") and not TRAINING_STATE.match(f.name)
    ]
    return safetensors or torch_files


def is_adapter_folder(folder: Path) -> bool:
    """``adapter_config.json`` with adapter weights, and nothing that is a model itself."""
    if not (folder / ADAPTER_CONFIG).is_file():
        return False
    if not any((folder / name).is_file() for name in ADAPTER_FILES):
        return False
    return not candidates(folder) and not _indexes(folder)


def ignored(folder: Path, read: list[Path]) -> list[str]:
    """Names of the weight-like files of ``folder`` that are not among ``read``."""
    return [f.name for f in weight_files(folder) if f not in set(read)]


def choose(folder: Path) -> tuple[list[Path], Path | None]:
    """The files that form the model in ``folder`` (module docstring), or an InputError:
    the shards to read in order, or else (an empty list and) the index that names them."""
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE], None
    index = _safetensors_index(folder)
    if index is not None:
        return [], index
    if (folder / TORCH_FILE).is_file():
        return [folder / TORCH_FILE], None
    if (folder / TORCH_INDEX).is_file():
        return [], folder / TORCH_INDEX
    found = candidates(folder)
    if not found:
        raise InputError(folder, "folder holds no *.safetensors or pytorch_model*.bin files")
    shards = complete_shards(found)
    if shards:
        return shards, None
    if len(found) == 1:
        return found, None
    names = ", ".join(f.name for f in found)
    raise InputError(
        folder,
        f"several checkpoint files and no rule to choose ({names}): give the path of the "
        f"one to analyse, or add {SAFETENSORS_INDEX} naming the shards",
    )


def complete_shards(files: list[Path]) -> list[Path]:
    """The one complete set ``<prefix>-0000i-of-0000N.<ext>`` (i = 1..N) among ``files``,
    in shard order; empty when there is none or more than one."""
    groups: dict[tuple[str, str, str], dict[int, Path]] = {}
    for path in files:
        match = _SHARD.match(path.name)
        if match:
            key = (match["prefix"], match["total"], match["ext"])
            groups.setdefault(key, {})[int(match["n"])] = path
    complete = [
        [shards[n] for n in sorted(shards)]
        for (_, total, _), shards in groups.items()
        if sorted(shards) == list(range(1, int(total) + 1))
    ]
    return complete[0] if len(complete) == 1 else []


def _indexes(folder: Path) -> list[Path]:
    return files_matching(folder, SAFETENSORS_INDEX_GLOB) + files_matching(folder, TORCH_INDEX)


def _safetensors_index(folder: Path) -> Path | None:
    """``model.safetensors.index.json``, else the folder's only ``*.safetensors.index.json``."""
    indexes = files_matching(folder, SAFETENSORS_INDEX_GLOB)
    preferred = folder / SAFETENSORS_INDEX
    if preferred in indexes or len(indexes) <= 1:
        return preferred if preferred in indexes else next(iter(indexes), None)
    names = ", ".join(index.name for index in indexes)
    raise InputError(folder, f"several safetensors index files, cannot choose: {names}")
