"""A PEFT LoRA adapter's ``adapter_config.json`` and the names in its weight file.

PEFT saves the update of each target module as two matrices, ``lora_A``
(``r x in``) and ``lora_B`` (``out x r``), under
``base_model.model.<module>.lora_A.weight`` (``lora_embedding_A`` /
``lora_embedding_B`` without ``.weight`` for an embedding, whose update is
``(B @ A)^T``); the model uses ``W + s * B @ A`` with ``s = lora_alpha / r``,
or ``lora_alpha / sqrt(r)`` with rsLoRA (``use_rslora``).  ``rank_pattern`` and
``alpha_pattern`` override ``r`` and ``lora_alpha`` for the modules whose name
ends with one of their keys (a regular expression), as PEFT's
``get_pattern_key`` matches them: the first key, in file order, with
``re.match(rf"(.*\\.)?({key})$", module)``.  Modules saved whole
(``modules_to_save``) appear under their own parameter names, with a
``modules_to_save[.<adapter>]`` segment in older PEFT versions.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import reading

PEFT_PREFIX = "base_model.model."
#: ``<module>.lora_A.weight`` / ``<module>.lora_embedding_B`` -> (module, embedding, A or B).
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(\.weight)?$")
_SAVED_SEGMENT = re.compile(r"\.modules_to_save(\.[^.]+)?(?=\.[^.]+$)")
_MAX_CONFIG_BYTES = 16 * 2**20


@dataclass(frozen=True)
class LoraConfig:
    """The parts of ``adapter_config.json`` that decide the update of each module."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def rank_and_scaling(self, module: str) -> tuple[int, float]:
        """``(r, s)`` of one module: its rank and the factor ``s`` of ``s * B @ A``."""
        r = self.rank_pattern.get(pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def pattern_key(keys: dict[str, Any], module: str) -> str:
    """The first key of ``keys`` matching the end of ``module`` (PEFT's rule), else ``module``."""
    for key in keys:
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def read_config(path: Path) -> LoraConfig:
    """Parse ``adapter_config.json``; anything but a plain LoRA adapter is an InputError."""
    with reading(path, "invalid adapter_config.json"):
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise InputError(path, "adapter_config.json is implausibly large")
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise InputError(path, "adapter_config.json is not a JSON object")
    kind = str(data.get("peft_type") or "LORA").upper()
    if kind != "LORA":
        raise InputError(path, f"PEFT adapter type {kind} not supported (LoRA only)")
    if data.get("use_dora"):
        raise InputError(path, "DoRA adapter (use_dora) not supported: its update is not B @ A")
    r, alpha = data.get("r", 8), data.get("lora_alpha", 8)
    if not _positive(r) or not isinstance(r, int) or not _positive(alpha):
        raise InputError(path, f"r and lora_alpha must be positive numbers, not {r!r}, {alpha!r}")
    ranks, alphas = _pattern(path, data, "rank_pattern"), _pattern(path, data, "alpha_pattern")
    if not all(isinstance(v, int) for v in ranks.values()):
        raise InputError(path, "rank_pattern values must be positive integers")
    return LoraConfig(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(data.get("use_rslora")),
        fan_in_fan_out=bool(data.get("fan_in_fan_out")),
        rank_pattern=ranks,
        alpha_pattern=alphas,
    )


def _pattern(path: Path, data: dict, key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict) or not all(_positive(v) for v in value.values()):
        raise InputError(path, f"{key} must map module patterns to positive numbers")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error:
            raise InputError(path, f"{key} key {pattern!r} is not a regular expression") from None
    return value


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def model_name(key: str) -> str:
    """The base model's name for a key of the adapter file: PEFT's prefix and the
    ``modules_to_save`` segment removed."""
    return _SAVED_SEGMENT.sub("", key.removeprefix(PEFT_PREFIX))
