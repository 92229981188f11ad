"""Hugging Face model folders: one or many safetensors or ``pytorch_model*.bin`` shards."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import torch

from ..budget import format_bytes
from ..errors import InputError
from ._common import reading, require_tensors
from .base import Checkpoint, TensorInfo
from .folder_files import choose, ignored

#: Largest index file read. Real indexes are a few MB even for 400B-parameter
#: models; reading a 1 GB one took 4.6 GB of memory.
MAX_INDEX_BYTES = 64 * 2**20

#: Opens one shard file as a checkpoint (``open.open_file`` with the caller's trust setting).
ShardOpener = Callable[[Path], Checkpoint]

#: Shard files in reading order and, with an index, which shard holds each tensor.
Layout = tuple[list[Path], dict[str, Path] | None]


class HFFolderCheckpoint(Checkpoint):
    """A folder of weight shards, read through at most one open shard at a time.

    The files are chosen as Hugging Face does (:mod:`.folder_files`): with an
    index (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``)
    its ``weight_map`` decides which shard each tensor comes from; other
    weight-like files are not read and are listed in ``notes()`` as
    ``ignored_files``. Listing opens each shard once, in turn.
    """

    format = "hf-folder"

    def __init__(self, path: str | os.PathLike[str], open_shard: ShardOpener) -> None:
        super().__init__(Path(path))
        self._open_shard = open_shard
        self._current: tuple[Path, Checkpoint] | None = None
        shards, weight_map = find_shards(self.path)
        self._ignored = ignored(self.path, shards)
        try:
            self._infos, self._where = self._list(shards, weight_map)
        except BaseException:
            self.close()
            raise

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        return self._shard(self._where[name]).load(name)

    def head_bytes(self, name: str, count: int) -> bytes:
        return self._shard(self._where[name]).head_bytes(name, count)

    def notes(self) -> dict[str, Any]:
        return {"ignored_files": list(self._ignored)} if self._ignored else {}

    def close(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None

    def _shard(self, shard: Path) -> Checkpoint:
        """The open checkpoint of ``shard``; the one open before is closed first."""
        if self._current is None or self._current[0] != shard:
            self.close()
            self._current = (shard, self._open_shard(shard))
        return self._current[1]

    def _list(
        self, shards: list[Path], weight_map: dict[str, Path] | None
    ) -> tuple[list[TensorInfo], dict[str, Path]]:
        """Every tensor, shard by shard, and the shard that holds it."""
        infos: list[TensorInfo] = []
        where: dict[str, Path] = {}
        for shard in shards:
            for info in self._shard(shard).tensors():
                if weight_map is not None and weight_map.get(info.name) != shard:
                    continue
                if info.name in where:
                    raise InputError(
                        self.path,
                        f"tensor {info.name!r} is in both {where[info.name].name} and {shard.name}",
                    )
                infos.append(info)
                where[info.name] = shard
        if weight_map is not None:
            _check_index_complete(self.path, weight_map, where)
        return require_tensors(self.path, infos), where


def find_shards(folder: Path) -> Layout:
    """The shard files of ``folder`` and, when it has an index, its weight map."""
    shards, index = choose(folder)
    return read_index(index) if index is not None else (shards, None)


def read_index(index: Path) -> Layout:
    """Shards named by an index file (sorted) and its weight map, shards checked to exist."""
    with reading(index, "invalid index file"):
        size = index.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise InputError(
                index,
                f"index file is {format_bytes(size)}, larger than the "
                f"{format_bytes(MAX_INDEX_BYTES)} any real index needs; refusing to read it",
            )
        data = json.loads(index.read_text(encoding="utf-8"))
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(shard, str) for shard in weight_map.values()
    ):
        raise InputError(index, "index has no weight_map of tensor names to shard files")
    shards = {name: _shard_path(index, name) for name in sorted(set(weight_map.values()))}
    return list(shards.values()), {tensor: shards[name] for tensor, name in weight_map.items()}


def _shard_path(index: Path, name: str) -> Path:
    """The file an index entry names, which must exist inside the index's folder."""
    relative = PurePath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise InputError(index, f"index names shard {name!r} outside the folder")
    shard = index.parent / relative
    if not shard.is_file():
        raise InputError(index, f"index names missing shard {name}")
    return shard


def _check_index_complete(
    folder: Path, weight_map: dict[str, Path], found: dict[str, Path]
) -> None:
    """Every tensor the index names must be in the shard it names."""
    for tensor, shard in weight_map.items():
        if tensor not in found:
            raise InputError(folder, f"index puts {tensor!r} in {shard.name}, which lacks it")
