"""Quantised checkpoints read as dense ones: a :class:`Checkpoint` wrapper that dequantises.

:func:`dequantised` looks at an opened checkpoint's tensor names (and the
``quantization_config`` of its ``config.json``) and, when they show a
quantisation scheme, wraps it: each quantised weight is listed under its own
parameter name with its dense shape and dtype float32 and dequantised when
loaded (formulas in :mod:`spectralyzer.io.dequant`, docs/theory.md section 1.7);
scale, zero-point and group-index tensors are listed with ``problem`` set, so
they are skipped with that reason and never analysed. A scheme it cannot
dequantise is an InputError: "quantised checkpoint (<scheme>), not supported".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .base import Checkpoint, TensorInfo
from .dequant import block_size, dequantise_awq, dequantise_gptq, dequantise_scaled

#: ``quantization_config.quant_method`` values read here; any other is refused.
SUPPORTED_METHODS = ("fp8", "fbgemm_fp8", "compressed-tensors", "gptq", "awq")
#: Stored dtypes of weights that carry ``weight_scale``/``weight_scale_inv``.
QUANTISED_DTYPES = (
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "int8",
    "uint8",
)
#: Largest config.json read (real ones are a few KB).
MAX_CONFIG_BYTES = 4 * 2**20

#: Tensor-name endings of schemes not implemented, and the scheme they show.
UNSUPPORTED_SUFFIXES = {
    ".absmax": "bitsandbytes 4-bit",
    ".quant_map": "bitsandbytes 4-bit",
    ".SCB": "bitsandbytes int8",
    ".q_weight": "exl2",
    ".q_invperm": "exl2",
    ".weight_packed": "compressed-tensors pack-quantized",
    ".weight_global_scale": "nvfp4",
    ".codebooks": "aqlm",
    ".W_q": "hqq",
}
_GPTQ_PARTS = {"qzeros": "zero points", "scales": "scales", "g_idx": "group index"}
_SCALE_PARTS = {
    "weight_scale": "scales",
    "weight_scale_inv": "scales",
    "weight_zero_point": "zero points",
}
_ACTIVATION_SCALES = ("input_scale", "k_scale", "v_scale", "output_scale")


@dataclass(frozen=True)
class Quantised:
    """One dequantised weight: its dense listing and how to rebuild it from stored parts."""

    info: TensorInfo  # the dense weight as listed (float32, (out, in))
    parts: dict[str, str]  # role -> stored tensor name ("weight", "scale", "qweight", ...)
    build: Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class Plan:
    """What the wrapper lists: dense weights, and the reason for every helper tensor."""

    scheme: str
    weights: dict[str, Quantised] = field(default_factory=dict)  # keyed by the stored name replaced
    helpers: dict[str, str] = field(default_factory=dict)  # stored name -> problem


def read_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The model's ``config.json`` (the folder's, or the one beside a file); {} when absent.

    Uses ``checkpoint.config()`` when the checkpoint offers it.
    """
    if callable(getattr(checkpoint, "config", None)):
        return checkpoint.config() or {}
    path = Path(checkpoint.path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > MAX_CONFIG_BYTES:
            return {}
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # an unreadable config is not the checkpoint's problem here
    return data if isinstance(data, dict) else {}


def quantisation_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config["quantization_config"]`` when it is a mapping, else {}."""
    quant = config.get("quantization_config")
    return quant if isinstance(quant, dict) else {}


def dequantised(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` itself when nothing is quantised, else a dequantising wrapper.

    Raises InputError (and closes ``checkpoint``) for a scheme not supported.
    """
    try:
        plan = make_plan(checkpoint)
    except BaseException:
        checkpoint.close()
        raise
    return checkpoint if plan is None else DequantisedCheckpoint(checkpoint, plan)


def make_plan(checkpoint: Checkpoint) -> Plan | None:
    """The dequantisation plan of a checkpoint, None when it holds no quantised weight."""
    infos = {info.name: info for info in checkpoint.tensors()}
    path = Path(checkpoint.path)
    folder_config = path.is_dir()
    marked = _marked_scheme(infos)
    if marked is None and not folder_config:
        return None  # a lone file: only its tensor names can say it is quantised
    quant = quantisation_config(read_config(checkpoint))
    method = quant.get("quant_method")
    if isinstance(method, str) and method not in SUPPORTED_METHODS:
        raise InputError(path, f"quantised checkpoint ({_method_name(quant)}), not supported")
    if marked:
        raise InputError(path, f"quantised checkpoint ({marked}), not supported")
    if marked is None:
        return None
    if any(name.endswith(".qweight") for name in infos):
        return _packed_plan(path, infos, quant)
    return _scaled_plan(path, infos, quant)


def _marked_scheme(infos: dict[str, TensorInfo]) -> str | None:
    """An unsupported scheme shown by tensor names; "" (falsy, not None) for a supported one."""
    for name in infos:
        for suffix, scheme in UNSUPPORTED_SUFFIXES.items():
            if name.endswith(suffix) or f"{suffix}." in name:
                return scheme
    found = any(name.endswith((".qweight", ".weight_scale", ".weight_scale_inv")) for name in infos)
    return "" if found else None


def _method_name(quant: dict[str, Any]) -> str:
    """How to name an unsupported quant_method to the user (``bitsandbytes nf4``)."""
    method = str(quant.get("quant_method"))
    detail = quant.get("bnb_4bit_quant_type") if quant.get("load_in_4bit") else None
    return f"{method} {detail}" if isinstance(detail, str) else method


def _scaled_plan(path: Path, infos: dict[str, TensorInfo], quant: dict[str, Any]) -> Plan | None:
    """fp8 / int8 weights with ``weight_scale_inv`` (blocks) or ``weight_scale`` (per channel)."""
    preferred = _block_setting(quant.get("weight_block_size"))
    plan = Plan(scheme="")
    kinds = set()
    for name, info in infos.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf in _ACTIVATION_SCALES:
            plan.helpers[name] = f"quantisation activation scale of {prefix}"
        if leaf not in ("weight_scale", "weight_scale_inv"):
            continue
        weight = infos.get(f"{prefix}.weight")
        if weight is not None and weight.dtype not in QUANTISED_DTYPES:
            continue  # a float weight with a scale beside it is not quantised storage
        if weight is None:
            raise InputError(path, f"{name!r} scales no tensor {prefix + '.weight'!r}")
        if len(weight.shape) != 2:
            dims = len(weight.shape)
            plan.helpers[name] = f"quantisation scales of {weight.name}"
            plan.helpers[weight.name] = (
                f"{weight.dtype} tensor of {dims} dimensions with scales: not dequantised"
            )
            continue
        block = block_size(weight.shape, info.shape, preferred)
        if block is None:
            raise InputError(
                path, f"scales {name!r} {info.shape} do not tile {weight.name!r} {weight.shape}"
            )
        parts = {"weight": weight.name, "scale": name}
        zero = f"{prefix}.weight_zero_point"
        if zero in infos:
            parts["zero_point"] = zero
        for part in parts.values():
            if part != weight.name:
                what = _SCALE_PARTS[part.rpartition(".")[2]]
                plan.helpers[part] = f"quantisation {what} of {weight.name}"
        plan.weights[weight.name] = Quantised(
            TensorInfo(weight.name, weight.shape, "float32"), parts, _scaled_builder(block)
        )
        kinds.add(_scaled_kind(weight, info, block))
    plan.scheme = "; ".join(sorted(kinds))
    return plan if plan.weights or plan.helpers else None


def _block_setting(value: object) -> tuple[int, int]:
    """The config's ``weight_block_size`` as (rows, cols); DeepSeek-V3's 128 x 128 otherwise."""
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return (value[0], value[1]) if ok else (128, 128)


def _scaled_builder(block: tuple[int, int]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def build(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return dequantise_scaled(t["weight"], t["scale"], block, t.get("zero_point"))

    return build


def _scaled_kind(weight: TensorInfo, scale: TensorInfo, block: tuple[int, int]) -> str:
    """``fp8 e4m3, 128x128 block scales`` and the like, for the notes."""
    stored = weight.dtype.replace("float8_", "fp8 ").replace("fnuz", "").replace("fn", "")
    if math.prod(scale.shape) == 1:
        return f"{stored}, per-tensor scale"
    if block[1] == weight.shape[1] and block[0] == 1:
        return f"{stored}, per-channel scales"
    return f"{stored}, {block[0]}x{block[1]} block scales"


def _packed_plan(path: Path, infos: dict[str, TensorInfo], quant: dict[str, Any]) -> Plan:
    """GPTQ or AWQ: ``qweight``/``qzeros``/``scales`` (and GPTQ's ``g_idx``) per module."""
    bits = quant.get("bits", quant.get("w_bit", 4))
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in (2, 4, 8):
        raise InputError(path, f"quantised checkpoint ({bits}-bit packed weights), not supported")
    plan = Plan(scheme="")
    schemes = set()
    for name, info in infos.items():
        if not name.endswith(".qweight"):
            continue
        prefix = name.removesuffix(".qweight")
        parts = {part: f"{prefix}.{part}" for part in _GPTQ_PARTS if f"{prefix}.{part}" in infos}
        if "scales" not in parts or "qzeros" not in parts:
            raise InputError(path, f"{name!r} has no {prefix}.scales and {prefix}.qzeros beside it")
        method = _packed_method(path, quant, info, infos[parts["scales"]], bits)
        dense, build = _packed_layout(path, method, quant, bits, info, infos, parts)
        plan.weights[name] = Quantised(
            TensorInfo(f"{prefix}.weight", dense, "float32"), {"qweight": name, **parts}, build
        )
        for part, stored in parts.items():
            plan.helpers[stored] = f"quantisation {_GPTQ_PARTS[part]} of {prefix}.weight"
        schemes.add(f"{method} int{bits}")
    plan.scheme = "; ".join(sorted(schemes))
    return plan


def _packed_method(
    path: Path, quant: dict[str, Any], qweight: TensorInfo, scales: TensorInfo, bits: object
) -> str:
    """ "gptq" or "awq": from the config, else from the shapes (AWQ packs the output dim)."""
    method = quant.get("quant_method")
    if method in ("gptq", "awq"):
        return method
    if len(qweight.shape) == 2 and len(scales.shape) == 2:
        if qweight.shape[1] == scales.shape[1]:
            return "gptq"
        if qweight.shape[1] * (32 // bits) == scales.shape[1]:
            return "awq"
    raise InputError(path, f"{qweight.name!r}: packed weights of an unknown layout")


def _packed_layout(
    path: Path,
    method: str,
    quant: dict[str, Any],
    bits: int,
    qweight: TensorInfo,
    infos: dict[str, TensorInfo],
    parts: dict[str, str],
) -> tuple[tuple[int, int], Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    """The dense ``(out, in)`` shape and the builder of one GPTQ/AWQ module, shapes checked."""
    pack = 32 // bits
    groups, out = infos[parts["scales"]].shape
    if method == "awq":
        version = str(quant.get("version", "gemm")).lower()
        if version != "gemm" or bits != 4:
            raise InputError(path, f"quantised checkpoint (awq {version} int{bits}), not supported")
        rows = qweight.shape[0]
        expect = (rows, out // pack)
    else:
        fmt = str(quant.get("checkpoint_format", "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise InputError(path, f"quantised checkpoint (gptq {fmt}), not supported")
        rows = qweight.shape[0] * pack
        expect = (rows // pack, out)
    group = _group_size(quant, rows, groups)
    if qweight.shape != expect or group is None or out % pack:
        raise InputError(
            path, f"{qweight.name!r} {qweight.shape} does not match its scales {(groups, out)}"
        )
    if method == "awq":
        return (out, rows), lambda t: dequantise_awq(
            t["qweight"], t["qzeros"], t["scales"], bits, group
        )
    offset = 0 if str(quant.get("checkpoint_format", "gptq")).lower() == "gptq_v2" else 1

    def build(t: dict[str, torch.Tensor]) -> torch.Tensor:
        g_idx = t.get("g_idx")
        if g_idx is None or g_idx.shape != (rows,) or not _valid_groups(g_idx, groups):
            g_idx = torch.arange(rows) // group
        return dequantise_gptq(t["qweight"], t["qzeros"], t["scales"], g_idx, bits, offset)

    return (out, rows), build


def _group_size(quant: dict[str, Any], rows: int, groups: int) -> int | None:
    """Input rows per scale group: the config's ``group_size`` (-1: all), else rows / groups."""
    size = quant.get("group_size", quant.get("q_group_size"))
    if not isinstance(size, int) or isinstance(size, bool) or size == 0:
        size = rows // groups if groups and rows % groups == 0 else None
    elif size < 0:
        size = rows
    if size is None or math.ceil(rows / size) != groups:
        return None
    return size


def _valid_groups(g_idx: torch.Tensor, groups: int) -> bool:
    """Every entry of a group index names one of the ``groups`` scale rows."""
    return bool(g_idx.numel()) and int(g_idx.min()) >= 0 and int(g_idx.max()) < groups


class DequantisedCheckpoint(Checkpoint):
    """A checkpoint whose quantised weights are listed and loaded dense (float32).

    Tensors keep their file order; a GPTQ/AWQ ``<m>.qweight`` is listed as
    ``<m>.weight``. Helper tensors (scales, zero points, group indices) are
    listed with ``problem`` set, so the planner skips them with that reason.
    """

    def __init__(self, inner: Checkpoint, plan: Plan) -> None:
        super().__init__(inner.path)
        self.format = inner.format
        self._inner = inner
        self._plan = plan
        self._dense = {q.info.name: q for q in plan.weights.values()}

    def tensors(self) -> list[TensorInfo]:
        listed = []
        for info in self._inner.tensors():
            if info.name in self._plan.weights:
                listed.append(self._plan.weights[info.name].info)
            elif info.name in self._plan.helpers:
                listed.append(
                    TensorInfo(info.name, info.shape, info.dtype, self._plan.helpers[info.name])
                )
            else:
                listed.append(info)
        return listed

    def load(self, name: str) -> torch.Tensor:
        quantised = self._dense.get(name)
        if quantised is None:
            return self._inner.load(name)
        stored = {role: self._inner.load(part) for role, part in quantised.parts.items()}
        return quantised.build(stored)

    def config(self) -> dict[str, Any]:
        """The wrapped checkpoint's ``config.json`` (:func:`read_config`)."""
        return read_config(self._inner)

    def notes(self) -> dict[str, Any]:
        count = len(self._plan.weights)
        what = f"{self._plan.scheme}; {count} weight{'s' * (count != 1)} dequantised to float32"
        return {**self._inner.notes(), "quantisation": what}

    def close(self) -> None:
        self._inner.close()
