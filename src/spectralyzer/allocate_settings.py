"""What an allocation needs besides the analysis: the mapping, its target, its hyper-parameters.

Every hyper-parameter defaults to the value in the mapping's published code
(docs/theory.md sections 6.2 and 6.4); one that belongs to another mapping is an error
naming it, so ``--for bits --sparsity 0.7`` cannot pass silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .allocation import BIT_CHOICES
from .choices import ALLOCATIONS
from .errors import OptionError

#: mapping -> the keyword of its target (``--sparsity``, ``--lr``, ...)
TARGETS = {
    "sparsity": "sparsity",
    "lr": "lr",
    "weight-decay": "weight_decay",
    "bits": "mean_bits",
    "lora-experts": "experts",
}
#: mapping -> its published hyper-parameters and their defaults
HYPER = {
    "sparsity": {"eps": 0.3, "clip_max": None},
    "lr": {"min_ratio": 0.5, "max_ratio": 1.5, "keep_ends": True},
    "weight-decay": {"min_ratio": 0.666, "max_ratio": 3.0, "keep_ends": True},
    "bits": {"gamma": 10.0, "bit_choices": BIT_CHOICES},
    "lora-experts": {"beta": 2.5},
}
#: mapping -> the published default: metric averaged per transformer block, or per layer
BLOCK_WISE = {"sparsity": True, "lr": False, "weight-decay": False, "bits": False}
BLOCK_WISE["lora-experts"] = True
#: mapping -> the alpha estimator its paper's code uses
ESTIMATORS = {
    "sparsity": "xmin-peak",
    "lr": "hill",
    "weight-decay": "hill",
    "bits": "hill",
    "lora-experts": "xmin-peak",
}
PAPERS = {
    "sparsity": "AlphaPruning (Lu et al., NeurIPS 2024)",
    "lr": "TempBalance (Zhou et al., NeurIPS 2023)",
    "weight-decay": "AlphaDecay (He et al., 2025)",
    "bits": "AlphaQ (2026)",
    "lora-experts": "AlphaLoRA (Qing et al., EMNLP 2024)",
}


@dataclass(frozen=True)
class AllocationSettings:
    """One allocation's mapping, target and hyper-parameters (None: the mapping's default).

    :func:`resolved` fills the defaults; construction checks every value and raises
    :class:`OptionError` naming the field.
    """

    mapping: str
    target: float
    block_wise: bool | None = None
    estimator: str | None = None
    eps: float | None = None
    clip_max: float | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None
    keep_ends: bool | None = None
    gamma: float | None = None
    bit_choices: tuple[int, ...] | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.mapping not in ALLOCATIONS:
            raise OptionError(
                "for", f"must be one of {', '.join(ALLOCATIONS)}, not {self.mapping!r}"
            )
        key = TARGETS[self.mapping]
        if not _real(self.target):
            raise OptionError(key, f"must be a number, not {self.target!r}")
        if self.mapping == "lora-experts" and not float(self.target).is_integer():
            raise OptionError(key, f"must be a whole number, not {self.target!r}")
        if self.mapping in ("lr", "weight-decay", "lora-experts") and self.target < 0:
            raise OptionError(key, f"must be >= 0, not {self.target!r}")
        own = HYPER[self.mapping]
        for f in fields(self)[4:]:
            value = getattr(self, f.name)
            if value is not None and f.name not in own:
                raise OptionError(f.name, f"does not apply to --for {self.mapping}")
        for name in ("eps", "clip_max", "min_ratio", "max_ratio", "gamma", "beta"):
            value = getattr(self, name)
            if value is not None and (not _real(value) or value < 0):
                raise OptionError(name, f"must be a number >= 0, not {value!r}")
        if self.bit_choices is not None and not (
            self.bit_choices and all(isinstance(b, int) and 1 <= b <= 16 for b in self.bit_choices)
        ):
            raise OptionError(
                "bit_choices", f"must be whole numbers from 1 to 16, not {self.bit_choices!r}"
            )

    def resolved(self) -> AllocationSettings:
        """A copy with every default filled in (the record the output shows)."""
        values: dict[str, Any] = dict(HYPER[self.mapping])
        values.update({k: v for k, v in self.hyper().items() if v is not None})
        block_wise = BLOCK_WISE[self.mapping] if self.block_wise is None else self.block_wise
        estimator = self.estimator or ESTIMATORS[self.mapping]
        return replace(self, block_wise=block_wise, estimator=estimator, **values)

    def hyper(self) -> dict[str, Any]:
        """The mapping's own hyper-parameters, as set (None: default)."""
        return {name: getattr(self, name) for name in HYPER[self.mapping]}


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_settings(
    mapping: str,
    *,
    sparsity: float | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    mean_bits: float | None = None,
    experts: int | None = None,
    **hyper: Any,
) -> AllocationSettings:
    """Settings from one target keyword per mapping (the command line's flags).

    The target of another mapping, or none, is an :class:`OptionError` naming it.
    """
    if mapping not in ALLOCATIONS:
        raise OptionError("for", f"must be one of {', '.join(ALLOCATIONS)}, not {mapping!r}")
    given = {
        "sparsity": sparsity,
        "lr": lr,
        "weight_decay": weight_decay,
        "mean_bits": mean_bits,
        "experts": experts,
    }
    wanted = TARGETS[mapping]
    for key, value in given.items():
        if value is not None and key != wanted:
            raise OptionError(key, f"is the target of another mapping, not of --for {mapping}")
    if given[wanted] is None:
        raise OptionError(wanted, f"is required by --for {mapping} (its target)")
    return AllocationSettings(mapping, given[wanted], **hyper)
