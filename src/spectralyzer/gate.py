"""The CI gate: did a modification (distillation, pruning, quantisation) damage the model?

A :class:`Policy` says what counts as damage; :func:`evaluate` turns a
:class:`~spectralyzer.diff.Diff` into a :class:`Verdict`.  Default thresholds
were chosen from measurements on all-MiniLM-L6-v2 (README, "CI gate"): a copy
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
import tomllib
from dataclasses import dataclass, field, fields
from xml.etree import ElementTree

import pandas as pd

from .diff import Diff, scale_collapse
from .errors import InputError
from .escaping import markdown, markdown_code, terminal, xml_text


@dataclass(frozen=True)
class Policy:
    """What the gate fails on; every threshold applies per layer (log10 units)."""

    max_d_log_spectral_norm: float = 0.1  # lambda_max may change by at most 26%
    max_d_log_norm: float = 0.05  # ||W||_F^2 by at most 12%
    max_d_log_stable_rank: float = 0.1  # stable rank by at most 26%
    max_d_alpha: float | None = None  # off by default (see module docstring)
    alpha_band: tuple[float, float] = (2.0, 6.0)  # leaving it fails (THEORY.md section 3)
    fail_on_phases: tuple[str, ...] = ("random-like", "rank-collapse")  # entering one fails
    fail_on_new_traps: bool = True  # only when both models were randomised
    fail_on_unmatched: bool = False  # layers in one model only: listed; fail if True
    include: str | None = None  # regex: gate only these layers
    exclude: str | None = None  # regex: never gate these layers

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """A policy file: top-level keys named as the fields, e.g. ``max_d_log_norm = 0.1``."""
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as err:
            raise InputError(path, f"cannot read policy ({err.strerror or err})") from None
        except tomllib.TOMLDecodeError as err:
            raise InputError(path, f"invalid TOML ({err})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(path, f"unknown policy key(s) {unknown}; known: {sorted(known)}")
        for key in ("alpha_band", "fail_on_phases"):
            if key in data:
                data[key] = tuple(data[key])
        for key in ("include", "exclude"):
            if data.get(key):
                try:
                    re.compile(data[key])
                except re.error as err:
                    raise InputError(
                        path, f"{key} is not a valid regular expression ({err})"
                    ) from None
        return cls(**data)


@dataclass(frozen=True)
class Verdict:
    """The gate's outcome: failing layers with their reasons, and what was checked."""

    passed: bool
    failures: dict[str, list[str]]  # layer name -> reasons
    checked: list[str]  # names of the layers the policy applied to
    unmatched: list[str]
    notes: list[str] = field(default_factory=list)


def evaluate(result: Diff, policy: Policy = Policy()) -> Verdict:  # noqa: B008
    """Apply a policy to a diff."""
    layers = result.matched
    if policy.include:
        layers = layers[layers["name"].str.contains(policy.include, regex=True)]
    if policy.exclude:
        layers = layers[~layers["name"].str.contains(policy.exclude, regex=True)]
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
    passed = not failures and not (policy.fail_on_unmatched and unmatched)
    return Verdict(passed, failures, list(layers["name"]), unmatched, notes)


def layer_reasons(row: pd.Series, policy: Policy, collapsed: bool = False) -> list[str]:
    """Why one matched layer fails the policy (empty when it passes)."""
    reasons = []
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


def verdict_lines(verdict: Verdict) -> list[str]:
    """Plain-text report: the verdict, then each failing layer and why (names escaped)."""
    head = "PASS" if verdict.passed else "FAIL"
    lines = [
        f"spectralyzer gate: {head} ({len(verdict.failures)} of {len(verdict.checked)} layers failed)"
    ]
    for name, reasons in verdict.failures.items():
        lines.append(f"  {terminal(name)}: {'; '.join(reasons)}")
    lines += [f"note: {terminal(note)}" for note in verdict.notes]
    return lines


def to_markdown(verdict: Verdict) -> str:
    """A Markdown summary for CI systems (GitHub's step summary and the like), names escaped."""
    mark = "✅ PASS" if verdict.passed else "❌ FAIL"
    out = [
        f"## spectralyzer gate: {mark}",
        "",
        f"{len(verdict.failures)} of {len(verdict.checked)} checked layers failed.",
        "",
    ]
    if verdict.failures:
        out += ["| layer | why |", "|---|---|"]
        out += [
            f"| {markdown_code(name)} | {'; '.join(r)} |" for name, r in verdict.failures.items()
        ]
        out.append("")
    out += [f"- {markdown(note)}" for note in verdict.notes]
    return "\n".join(out).rstrip() + "\n"


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
