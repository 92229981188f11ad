"""A LoRA adapter as a checkpoint of three variants: ``base``, ``lora-delta``, ``merged``.

For each target module the adapter's update is ``dW = s * B @ A`` (``out x in``,
rank at most ``r``; :mod:`.adapter_config`).  Its non-zero singular values are
those of the small ``k x in`` matrix ``C = s * R_B @ A``, where ``B = Q_B R_B`` is
a thin QR factorisation and ``k = min(out, r)``: ``dW^T dW = s^2 A^T R_B^T Q_B^T
Q_B R_B A = C^T C`` (docs/theory.md section 6.10).  That matrix is listed as
``<weight>@lora`` (variant ``lora-delta``), so the engine decomposes an
``r x r`` Gram matrix and never forms ``out x in``.  With a base model, its
tensors are listed unchanged (``base``) and ``W + dW`` of each target module
as ``<weight>@merged``, formed densely one module at a time when read; modules
saved whole (``modules_to_save``) are ``@merged`` too: they are what the
adapted model uses.  Adapter tensors are never mixed into the base's names.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..variants import LORA_SUFFIX, MERGED_SUFFIX, VARIANTS, target_of, variant_of
from ._common import require_tensors
from .adapter_config import LORA_KEY, model_name, read_config
from .base import Checkpoint, TensorInfo
from .folder_files import ADAPTER_CONFIG, ADAPTER_FILES

#: Opens one file as a checkpoint (``open.open_file`` with the caller's trust setting).
FileOpener = Callable[[Path], Checkpoint]


@dataclass(frozen=True)
class LoraModule:
    """One target module: the names of its factors and its rank and scaling."""

    weight: str  # the parameter name of the weight it updates (in the base model when given)
    a: str  # names in the adapter file
    b: str
    rank: int
    scaling: float
    transposed: bool  # the update is (B @ A)^T: embeddings, fan_in_fan_out (GPT-2 Conv1D)


class AdapterCheckpoint(Checkpoint):
    """A PEFT LoRA adapter folder, with or without the base model it applies to."""

    format = "peft-adapter"

    def __init__(self, folder: Path, open_file: FileOpener, base: Checkpoint | None = None) -> None:
        super().__init__(base.path if base is not None else folder)
        self.folder, self._base = folder, base
        self._config = read_config(folder / ADAPTER_CONFIG)
        self._file = _weights_file(folder)
        self._adapter = open_file(self._file)
        try:
            self._infos: dict[str, TensorInfo] = {}
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ listing
    def _build(self) -> None:
        base_infos = {i.name: i for i in self._base.tensors()} if self._base else {}
        self._infos.update(base_infos)
        adapter = {i.name: i for i in self._adapter.tensors()}
        self._modules: dict[str, LoraModule] = {}
        self._saved: dict[str, str] = {}  # row name -> adapter tensor (modules_to_save)
        factors: dict[tuple[str, bool], dict[str, TensorInfo]] = {}
        for name, info in adapter.items():
            match = LORA_KEY.match(name)
            if match:
                factors.setdefault((match["module"], bool(match["emb"])), {})[match["ab"]] = info
            elif len(info.shape) >= 2:
                weight = self._base_name(model_name(name), base_infos, required=False)
                self._saved[weight + MERGED_SUFFIX] = name
                self._infos[weight + MERGED_SUFFIX] = TensorInfo(
                    weight + MERGED_SUFFIX, info.shape, info.dtype, info.problem
                )
        for (key, embedding), pair in factors.items():
            self._add_module(key, embedding, pair, base_infos)
        require_tensors(self.folder, self._modules or self._saved)
        self._order = _grouped(list(self._infos.values()))

    def _add_module(
        self, key: str, embedding: bool, pair: dict[str, TensorInfo], base: dict[str, TensorInfo]
    ) -> None:
        if set(pair) != {"A", "B"}:
            raise InputError(self._file, f"{key}: lora_A without lora_B (or the reverse)")
        module = model_name(key)
        rank, scaling = self._config.rank_and_scaling(module)
        a, b = pair["A"], pair["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise InputError(
                self._file,
                f"{key}: lora_A {a.shape} and lora_B {b.shape} do not have rank {rank} "
                "(adapter_config.json r / rank_pattern)",
            )
        weight = self._base_name(module + ".weight", base, required=True)
        transposed = embedding or self._config.fan_in_fan_out
        self._modules[weight] = LoraModule(weight, a.name, b.name, rank, scaling, transposed)
        k = min(b.shape[0], rank)
        self._infos[weight + LORA_SUFFIX] = TensorInfo(
            weight + LORA_SUFFIX, (k, a.shape[1]), "float64"
        )
        if self._base is not None:
            self._infos[weight + MERGED_SUFFIX] = self._merged_info(weight, a, b, base[weight])

    def _merged_info(self, weight: str, a: TensorInfo, b: TensorInfo, w: TensorInfo) -> TensorInfo:
        """The info of ``W + dW``: shapes must agree; a W that is not floating point is
        listed with that problem (skipped, never added to)."""
        out_in = (b.shape[0], a.shape[1])
        update = out_in[::-1] if self._modules[weight].transposed else out_in
        if w.shape != update:
            raise InputError(
                self.folder,
                f"adapter update of {weight} is {'x'.join(map(str, update))}, "
                f"the base weight is {'x'.join(map(str, w.shape))}",
            )
        dtype = "float64" if w.dtype in ("float64", "float32") else "float32"
        problem = w.problem
        if problem is None and not getattr(torch, w.dtype).is_floating_point:
            problem = f"base weight is {w.dtype}, not floating point: cannot add the update"
        return TensorInfo(weight + MERGED_SUFFIX, w.shape, dtype, problem)

    def _base_name(self, name: str, base: dict[str, TensorInfo], required: bool) -> str:
        """The base model's name for ``name``: itself, or the one base name that ends with it
        (or that it ends with: a base saved without its head's prefix); with no base, itself."""
        if not base or name in base:
            return name
        found = [n for n in base if n.endswith("." + name) or name.endswith("." + n)]
        if len(found) == 1:
            return found[0]
        if required:
            raise InputError(
                self.folder, f"adapter targets {name}, which the base model does not have"
            )
        return name

    # ------------------------------------------------------------------ reading
    def tensors(self) -> list[TensorInfo]:
        return list(self._order)

    def load(self, name: str) -> torch.Tensor:
        if name.endswith(LORA_SUFFIX):
            return self.small_factor(self._modules[name[: -len(LORA_SUFFIX)]])
        if name in self._saved:
            return self._adapter.load(self._saved[name])
        if name.endswith(MERGED_SUFFIX):
            return self._merged(name)
        if self._base is None:
            raise KeyError(name)
        return self._base.load(name)

    def small_factor(self, module: LoraModule) -> torch.Tensor:
        """``C = s * R_B @ A`` (``k x in``, float64): ``C^T C = dW^T dW`` (module docstring)."""
        a = self._adapter.load(module.a).double()
        b = self._adapter.load(module.b).double()
        _, r_b = torch.linalg.qr(b, mode="reduced")
        return module.scaling * (r_b @ a)

    def delta(self, module: LoraModule) -> torch.Tensor:
        """The dense update ``dW = s * B @ A`` (transposed where the layout says so), float64."""
        a = self._adapter.load(module.a).double()
        b = self._adapter.load(module.b).double()
        product = module.scaling * (b @ a)
        return product.T if module.transposed else product

    def _merged(self, name: str) -> torch.Tensor:
        """``W + dW`` of one module, formed densely in the dtype its info gives."""
        weight = name[: -len(MERGED_SUFFIX)]
        dtype = getattr(torch, self._infos[name].dtype)
        merged = self._base.load(weight).to(dtype)
        return merged.add_(self.delta(self._modules[weight]).to(dtype))

    def head_bytes(self, name: str, count: int) -> bytes:
        if self._base is not None and variant_of(name) == "base":
            return self._base.head_bytes(name, count)
        return super().head_bytes(name, count)

    def storage_key(self, name: str) -> Hashable | None:
        """Rows made here are never aliases of one another; base tensors as the base says."""
        if self._base is not None and name in self._infos and variant_of(name) == "base":
            return self._base.storage_key(name)
        return ("adapter", name)

    def notes(self) -> dict[str, Any]:
        notes = dict(self._base.notes()) if self._base is not None else {}
        notes["adapter"] = {
            "folder": str(self.folder),
            "lora_modules": len(self._modules),
            "modules_to_save": [target_of(name) for name in self._saved],
            "use_rslora": self._config.use_rslora,
        }
        return notes

    def close(self) -> None:
        for ckpt in (getattr(self, "_adapter", None), self._base):
            if ckpt is not None:
                ckpt.close()


def _grouped(infos: list[TensorInfo]) -> list[TensorInfo]:
    """Each weight's rows together (base, lora-delta, merged), in order of first appearance."""
    first: dict[str, int] = {}
    for i, info in enumerate(infos):
        first.setdefault(target_of(info.name), i)

    def key(info: TensorInfo) -> tuple[int, int]:
        return first[target_of(info.name)], VARIANTS.index(variant_of(info.name))

    return sorted(infos, key=key)


def _weights_file(folder: Path) -> Path:
    """``adapter_model.safetensors``, else ``adapter_model.bin``."""
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(folder, f"adapter folder has no {' or '.join(ADAPTER_FILES)}")
