"""Row variants of an analysis with a LoRA adapter, told by a suffix of the row's name.

``<weight>`` is the base weight (``base``), ``<weight>@lora`` its adapter update
(``lora-delta``), ``<weight>@merged`` the weight the adapted model uses (``merged``).
Light on purpose (no torch): layers, roles and the readers all need it.
"""

from __future__ import annotations

LORA_SUFFIX = "@lora"
MERGED_SUFFIX = "@merged"
VARIANTS = ("base", "lora-delta", "merged")


def variant_of(name: str) -> str:
    """``base``, ``lora-delta`` or ``merged``, from a row's name."""
    if name.endswith(LORA_SUFFIX):
        return "lora-delta"
    return "merged" if name.endswith(MERGED_SUFFIX) else "base"


def target_of(name: str) -> str:
    """The parameter name a row is about: its variant suffix removed."""
    for suffix in (LORA_SUFFIX, MERGED_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
