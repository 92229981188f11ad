"""Training-run alarms: what changed for the worse between two consecutive analyses.

Prakash & Martin (arXiv 2506.04434, 2602.02859) saw a layer's alpha fall below 2,
together with new correlation traps in its shuffled weights, before a late
collapse of test accuracy; a sudden jump of alpha along depth (correlation flow)
marks a badly trained layer. docs/theory.md section 6.9 gives the rules:

* ``alpha``: a layer's fitted alpha is below :data:`ALPHA_FLOOR` now and was not
  at the previous checkpoint (or the layer was not there);
* ``traps``: a layer has more correlation traps than at the previous checkpoint
  (counted only when the analysis randomises, ``--randomize``);
* ``flow``: a layer carries the ``flow-jump`` warning (:mod:`spectralyzer.flow`)
  and did not before.

The first checkpoint is compared with nothing: whatever it already shows is new.
These are alarms to look at, not proofs of a failing run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import OptionError

if TYPE_CHECKING:
    import pandas as pd  # the tables are pandas; the command line imports FAIL_ON light

#: Alarm kinds, and the values ``--fail-on`` takes (``any``: every kind).
KINDS = ("alpha", "traps", "flow")
FAIL_ON = (*KINDS, "any")
#: alpha below this: heavier tails than well-trained layers show (docs/theory.md 6.9).
ALPHA_FLOOR = 2.0


@dataclass(frozen=True)
class Alarm:
    """One alarm: its kind, the checkpoint and layer, and what was seen."""

    kind: str
    checkpoint: str
    layer: str
    message: str

    def line(self) -> str:
        return f"{self.checkpoint}: {self.layer}: {self.message}"


class AlarmError(RuntimeError):
    """Raised by :class:`~spectralyzer.monitor.Monitor` when an alarm of a ``fail_on`` kind rang."""

    def __init__(self, alarms: Sequence[Alarm]) -> None:
        self.alarms = list(alarms)
        super().__init__("; ".join(alarm.line() for alarm in self.alarms))


def fail_on_kinds(values: str | Iterable[str] | None) -> frozenset[str]:
    """The alarm kinds that end a run, from ``fail_on`` values (``any`` is all of them)."""
    if values is None:
        return frozenset()
    values = [values] if isinstance(values, str) else list(values)
    unknown = [v for v in values if v not in FAIL_ON]
    if unknown:
        raise OptionError("fail_on", f"must be among {', '.join(FAIL_ON)}, not {unknown[0]!r}")
    return frozenset(KINDS) if "any" in values else frozenset(values)


def check_traps_counted(values: str | Iterable[str] | None, randomize: bool) -> None:
    """``fail_on`` naming ``traps`` needs the randomised copies that count the traps."""
    values = [values] if isinstance(values, str) else list(values or ())
    if "traps" in values and not randomize:
        raise OptionError(
            "fail_on", "traps are counted only with --randomize (AnalysisOptions(randomize=True))"
        )


def failing(alarms: Iterable[Alarm], kinds: frozenset[str]) -> list[Alarm]:
    """The alarms whose kind is in ``kinds``."""
    return [alarm for alarm in alarms if alarm.kind in kinds]


def find_alarms(
    previous: pd.DataFrame | None, current: pd.DataFrame, checkpoint: str
) -> list[Alarm]:
    """The alarms of ``current`` against ``previous`` (per-layer tables of two analyses).

    Uses the columns ``name``, ``alpha``, ``num_traps``, ``warning``, ``flow_jump``
    and ``flow_z``; ``previous`` None means the first checkpoint.
    """
    before = {} if previous is None else {row["name"]: row for row in _rows(previous)}
    found = []
    for row in _rows(current):
        old = before.get(row["name"])
        for kind, message in _changes(row, old):
            found.append(Alarm(kind, checkpoint, str(row["name"]), message))
    return found


def _rows(frame: pd.DataFrame) -> list[dict]:
    return frame[["name", "alpha", "num_traps", "warning", "flow_jump", "flow_z"]].to_dict(
        "records"
    )


def _changes(row: dict, old: dict | None) -> list[tuple[str, str]]:
    """(kind, message) of each alarm one layer raises against its previous row."""
    changes = []
    alpha, was = float(row["alpha"]), math.nan if old is None else float(old["alpha"])
    if alpha < ALPHA_FLOOR and not was < ALPHA_FLOOR:
        since = f"was {was:.2f}" if math.isfinite(was) else "first seen"
        changes.append(("alpha", f"alpha {alpha:.2f} fell below {ALPHA_FLOOR:g} ({since})"))
    traps, had = _count(row["num_traps"]), 0 if old is None else _count(old["num_traps"])
    if traps > had:
        changes.append(("traps", f"correlation traps {had} -> {traps}"))
    jump = "flow-jump" in str(row["warning"]).split(";")
    jumped = old is not None and "flow-jump" in str(old["warning"]).split(";")
    if jump and not jumped:
        changes.append(
            (
                "flow",
                f"alpha jumps {float(row['flow_jump']):+.2f} from the previous block "
                f"(z {float(row['flow_z']):+.1f})",
            )
        )
    return changes


def _count(value: object) -> int:
    """A trap count; NaN (not randomised) counts as none."""
    number = float(value)  # type: ignore[arg-type]
    return int(number) if math.isfinite(number) else 0
