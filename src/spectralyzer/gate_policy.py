"""The CI gate: did a modification (distillation, pruning, quantisation) damage the model?

A :class:`Policy` says what counts as damage; :func:`evaluate` turns a
:class:`~spectralyzer.layer_diff.Diff` into a :class:`Verdict`.  Default thresholds
were chosen from measurements on all-MiniLM-L6-v2 (docs/validation.md, the CI gate): a copy
and a float16 round trip move no metric by more than 0.001, while low-rank
truncation, re-initialised layers, 90% magnitude pruning and large noise move
``log_norm``, ``log_spectral_norm`` or the stable rank by 0.14 to 0.62 (log10)
in the damaged layers.  Changes of alpha alone are not gated by default: fits
of layers with large alpha move by several units under harmless changes.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any
from xml.etree import ElementTree

import pandas as pd

from .errors import InputError, OptionError, SpectralyzerError
from .escaping import xml_text
from .fit.phases import PHASES
from .layer_diff import Diff, diff, scale_collapse, small_end_warning
from .pipeline import AnalysisOptions, OnPlan, OnProgress, Runner, Source

#: Phase names a policy may list: the classifier's phases and its "unknown".
KNOWN_PHASES = (*PHASES, "unknown")
LIMITS = ("max_d_log_spectral_norm", "max_d_log_norm", "max_d_log_stable_rank", "max_d_alpha")
FLAGS = ("fail_on_new_traps", "fail_on_unmatched")
PATTERNS = ("include", "exclude")
_REPR = reprlib.Repr()  # short and bounded: a 900-deep list must not recurse in repr
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40


@dataclass(frozen=True)
class Policy:
    """What the gate fails on; every threshold applies per layer (log10 units).

    Every value is validated on construction (an :class:`OptionError` naming
    the field), so a typo in a policy can never silently loosen the gate.
    """

    max_d_log_spectral_norm: float = 0.1  # lambda_max may change by at most 26%
    max_d_log_norm: float = 0.05  # ||W||_F^2 by at most 12%
    max_d_log_stable_rank: float = 0.1  # stable rank by at most 26%
    max_d_alpha: float | None = None  # off by default (see module docstring)
    alpha_band: tuple[float, float] = (2.0, 6.0)  # leaving it fails (docs/theory.md section 3.5)
    fail_on_phases: tuple[str, ...] = ("random-like", "rank-collapse")  # entering one fails
    fail_on_new_traps: bool = True  # only when both models were randomised
    fail_on_unmatched: bool = False  # layers in one model only: listed; fail if True
    include: str | None = None  # regex: gate only these layers
    exclude: str | None = None  # regex: never gate these layers

    def __post_init__(self) -> None:
        for key in LIMITS:
            value = getattr(self, key)
            if value is not None or key != "max_d_alpha":
                object.__setattr__(self, key, _limit(key, value))
        object.__setattr__(self, "alpha_band", _band(self.alpha_band))
        object.__setattr__(self, "fail_on_phases", _phases(self.fail_on_phases))
        for key in FLAGS:
            if not isinstance(getattr(self, key), bool):
                raise OptionError(key, f"must be true or false, not {_shown(getattr(self, key))}")
        for key in PATTERNS:
            _pattern(key, getattr(self, key))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """A policy file: top-level keys named as the fields, e.g. ``max_d_log_norm = 0.1``.

        Every problem is an InputError ``"<file>: <key>: <problem>"``.
        """
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as err:
            raise InputError(path, f"cannot read policy ({err.strerror or err})") from None
        except ValueError as err:  # TOMLDecodeError, UnicodeDecodeError, a 5000-digit integer
            raise InputError(path, f"invalid TOML ({err})") from None
        except RecursionError:  # tomllib recurses once per nesting level
            raise InputError(path, "invalid TOML (nested too deeply)") from None
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(path, f"unknown policy key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except OptionError as err:
            raise InputError(path, str(err)) from None


def _shown(value: object) -> str:
    """A value as the message shows it: its repr, cut short, and its type."""
    return f"{_REPR.repr(value)} ({type(value).__name__})"


def _number(value: object) -> bool:
    """A real number: int or float, never a bool (TOML's ``true`` is not 1.0)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """``float(value)``; an integer too large for a float is infinite (TOML has big ints)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _limit(key: str, value: object) -> float:
    if not _number(value):
        raise OptionError(key, f"must be a number, not {_shown(value)}")
    number = _float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number >= 0):
        raise OptionError(key, f"must be a finite number >= 0, not {_REPR.repr(value)}")
    return number


def _band(value: object) -> tuple[float, float]:
    pair = isinstance(value, list | tuple) and len(value) == 2
    if not (pair and all(_number(v) for v in value)):  # type: ignore[union-attr]
        raise OptionError("alpha_band", f"must be two numbers [low, high], not {_shown(value)}")
    low, high = (_float(v) for v in value)  # type: ignore[union-attr]
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise OptionError("alpha_band", f"must be finite with low < high, not {_REPR.repr(value)}")
    return low, high


def _phases(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise OptionError("fail_on_phases", f"must be a list of phase names, not {_shown(value)}")
    unknown = [v for v in value if v not in KNOWN_PHASES or not isinstance(v, str)]
    if unknown:
        raise OptionError(
            "fail_on_phases",
            f"unknown phase(s) {[_shown(v) if not isinstance(v, str) else v for v in unknown]}; "
            f"known: {', '.join(KNOWN_PHASES)}",
        )
    return tuple(value)


def _pattern(key: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise OptionError(key, f"must be a regular expression (a string), not {_shown(value)}")
    try:
        re.compile(value)
    except re.error as err:
        raise OptionError(key, f"is not a valid regular expression ({err})") from None


@dataclass(frozen=True)
class Verdict:
    """The gate's outcome: failing layers with their reasons, and what was checked."""

    passed: bool
    failures: dict[str, list[str]]  # layer name -> reasons
    checked: list[str]  # names of the layers the policy applied to
    unmatched: list[str]
    notes: list[str] = field(default_factory=list)
    diff: Diff | None = field(default=None, repr=False, compare=False)  # what was judged

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def document(self) -> dict[str, Any]:
        """The outcome as data: passed, failing layers with reasons, checked, unmatched, notes
        (the diff behind it is ``diff --format json``'s document)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "diff"}

    def tables(self) -> dict[str, pd.DataFrame]:
        """The failing layers and why (empty when the gate passed)."""
        why = ["; ".join(reasons) for reasons in self.failures.values()]
        return {"failures": pd.DataFrame({"name": list(self.failures), "why": why})}

    def summary_lines(self) -> list[str]:
        head = f"spectralyzer gate: {self.word} ({len(self.failures)} of {len(self.checked)} layers failed)"
        return [head, *(f"note: {note}" for note in self.notes)]


def evaluate(result: Diff, policy: Policy = Policy()) -> Verdict:  # noqa: B008
    """Apply a policy to a diff.

    Raises SpectralyzerError when no layer is in both models, and OptionError
    (``include``/``exclude``) when the patterns leave no layer to gate: a gate
    that checked nothing must not pass.
    """
    layers = result.matched
    if layers.empty:
        raise SpectralyzerError("no layer is in both models (matched by name); nothing to gate")
    for key in PATTERNS:
        pattern = getattr(policy, key)
        if not pattern:
            continue
        hits = layers["name"].str.contains(pattern, regex=True)
        layers = layers[hits if key == "include" else ~hits]
        if layers.empty:
            what = "matches none" if key == "include" else "excludes all"
            raise OptionError(
                key, f"{pattern!r} {what} of the {len(result.matched)} layers in both models"
            )
    collapsed = set(scale_collapse(layers, policy.max_d_log_spectral_norm))
    failures = {}
    for _, row in layers.iterrows():
        reasons = layer_reasons(row, policy, row["name"] in collapsed)
        if reasons:
            failures[row["name"]] = reasons
    unmatched = list(result.layers.loc[result.layers["status"] == "unmatched", "name"])
    notes = []
    if unmatched:
        notes.append(f"{len(unmatched)} layer(s) in one model only: {', '.join(unmatched)}")
    if collapsed:
        notes.append(
            f"scale collapse: {', '.join(sorted(collapsed))} moved while most layers did not"
        )
    lost = small_end_warning(layers)  # a warning only (docs/theory.md section 6.3)
    if lost:
        notes.append(lost)
    passed = not failures and not (policy.fail_on_unmatched and unmatched)
    return Verdict(passed, failures, list(layers["name"]), unmatched, notes, result)


def gate(
    base: Source,
    candidate: Source,
    policy: Policy | str | os.PathLike[str] | None = None,
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    *,
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
    runner: Runner | None = None,
) -> Verdict:
    """Analyse both models, diff them and judge the candidate by ``policy``.

    ``policy`` is a :class:`Policy`, the path of a policy TOML file, or None
    (the defaults). Raises :class:`InputError` when the models share no layer
    name, or when the policy file's ``include``/``exclude`` leave nothing to gate.
    ``on_plan``/``progress``/``runner``: as for :func:`~spectralyzer.layer_diff.diff`.
    """
    path = None if policy is None or isinstance(policy, Policy) else policy
    rules = Policy.from_toml(path) if path is not None else (policy or Policy())
    result = diff(base, candidate, options, on_plan=on_plan, progress=progress, runner=runner)
    if result.matched.empty:
        raise InputError(
            _label(candidate), f"shares no layer name with {_label(base)}; nothing to gate"
        )
    try:
        return evaluate(result, rules)
    except OptionError as err:  # include/exclude: the policy's, not the command line's
        raise InputError(path or "policy", str(err)) from None


def _label(source: Source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<model>"


def layer_reasons(row: pd.Series, policy: Policy, collapsed: bool = False) -> list[str]:
    """Why one matched layer fails the policy (empty when it passes)."""
    reasons = []
    broken = row.get("became_nonfinite", "")
    if isinstance(broken, str) and broken:
        reasons.append(f"{broken} became non-finite (NaN or Inf)")
    limits = (
        ("d_log_spectral_norm", policy.max_d_log_spectral_norm, "log_spectral_norm"),
        ("d_log_norm", policy.max_d_log_norm, "log_norm"),
        ("d_log_stable_rank", policy.max_d_log_stable_rank, "log10 stable_rank"),
        ("d_alpha", policy.max_d_alpha, "alpha"),
    )
    for column, limit, label in limits:
        value = row[column]
        if limit is not None and math.isfinite(value) and abs(value) > limit:
            extra = " (scale collapse)" if collapsed and column == "d_log_spectral_norm" else ""
            reasons.append(f"{label} changed by {value:+.3f} (limit {limit}){extra}")
    before, after = row["phase_base"], row["phase_candidate"]
    if after in policy.fail_on_phases and after != before:
        reasons.append(f"phase became {after} (was {before})")
    low, high = policy.alpha_band
    a, b = row["alpha_base"], row["alpha_candidate"]
    if low <= a <= high and not (low <= b <= high):
        reasons.append(f"alpha left [{low:g}, {high:g}]: {a:.2f} -> {b:.2f}")
    traps = row["new_traps"]
    if policy.fail_on_new_traps and math.isfinite(traps) and traps > 0:
        reasons.append(f"{int(traps)} new correlation trap(s)")
    return reasons


def to_junit(verdict: Verdict) -> str:
    """JUnit XML: one test case per checked layer, a failure for each failing one.

    Names pass through :func:`~spectralyzer.escaping.xml_text`: characters XML 1.0
    forbids would make the whole file unreadable.
    """
    suite = ElementTree.Element(
        "testsuite",
        name="spectralyzer gate",
        tests=str(len(verdict.checked)),
        failures=str(len(verdict.failures)),
    )
    for name in verdict.checked:
        case = ElementTree.SubElement(
            suite, "testcase", classname="spectralyzer.gate", name=xml_text(name)
        )
        if name in verdict.failures:
            reasons = verdict.failures[name]
            failure = ElementTree.SubElement(case, "failure", message=reasons[0])
            failure.text = "\n".join(reasons)
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
