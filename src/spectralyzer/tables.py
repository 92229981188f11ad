"""Per-layer rows -> DataFrame, and the model summary.

An analysis' JSON is one object ``{"layers": [...], "summary": {...}}``; each
layer object is keyed by the columns of :class:`spectralyzer.metrics.LayerMetrics`.
These names are a stable interface.  Rendering lives in :mod:`spectralyzer.render`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from .layers import Skipped
from .layouts import expert_group
from .metrics import WARNINGS, LayerMetrics
from .render import shape_text, with_shown
from .roles import role_of

# model-level averages over analysed layers with a finite value
SUMMARY_MEANS = (
    "alpha",
    "alpha_weighted",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
    "stable_rank",
    "entropy",
    "mp_softrank",
)
_LONE = "\\0"  # key prefix of a row in no expert group (no parameter name starts so)
# the per-layer columns a person sees (CSV and JSON have them all)
TABLE_COLUMNS = (
    "name",
    "role",
    "layer_type",
    "shape",
    "alpha",
    "alpha_weighted",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "num_spikes",
    "num_traps",
    "tail_law",
    "phase",
    "warning",
)


def details_frame(rows: Sequence[LayerMetrics]) -> pd.DataFrame:
    """One row per analysed matrix, columns as in LayerMetrics plus ``role`` after ``name``
    (:func:`spectralyzer.roles.role_of` of the name and layer type)."""
    columns = list(LayerMetrics.__dataclass_fields__)
    frame = pd.DataFrame([asdict(r) for r in rows], columns=columns)
    roles = [
        role_of(str(n), str(t)) for n, t in zip(frame["name"], frame["layer_type"], strict=True)
    ]
    frame.insert(1, "role", pd.Series(roles, index=frame.index, dtype=object))
    return frame


def expert_means(details: pd.DataFrame) -> pd.DataFrame:
    """``--expert-rows mean``: the rows of each expert group (``experts.gate_up_proj[*]:gate``,
    ``experts.*.w1.weight``: the same matrix of every expert of one layer) replaced by
    one row named for the group, where it first appears (docs/theory.md section 1.8).

    Numbers are the mean over the group's experts of the finite values (a count
    becomes a mean count); ``phase`` and ``tail_law`` the most common; ``warning``
    every code any expert has; ``num_experts`` the experts averaged (0 on a row
    that is no group).
    """
    groups = [expert_group(str(name)) for name in details["name"]]
    keys = [g if g is not None else f"{_LONE}{i}" for i, g in enumerate(groups)]
    rows = []
    for key, frame in details.groupby(keys, sort=False):
        if str(key).startswith(_LONE):
            rows.append(frame.iloc[0].to_dict() | {"num_experts": 0})
            continue
        rows.append(_group_row(str(key), frame))
    return pd.DataFrame(rows, columns=[*details.columns, "num_experts"])


def _group_row(name: str, frame: pd.DataFrame) -> dict[str, Any]:
    """One row of :func:`expert_means` for the rows of one expert group."""
    row: dict[str, Any] = frame.iloc[0].to_dict() | {"name": name, "num_experts": len(frame)}
    for column in frame.columns:
        values = frame[column]
        if column in ("phase", "tail_law"):
            row[column] = Counter(values).most_common(1)[0][0]
        elif column == "warning":
            codes = {c for w in values for c in str(w).split(";") if c}
            row[column] = ";".join(c for c in WARNINGS if c in codes)
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.to_numpy(dtype=float)
            numbers = numbers[np.isfinite(numbers)]
            row[column] = float(numbers.mean()) if numbers.size else math.nan
    return row


def summarize(details: pd.DataFrame, skipped: Sequence[Skipped], **context: Any) -> dict[str, Any]:
    """Model-level summary: means of SUMMARY_MEANS, counts of layers, warnings and phases.

    A layer whose alpha is NaN (fit failed, non-finite weights) is left out of
    every mean and counted in ``num_fit_failed``.
    """
    summary: dict[str, Any] = dict(context)
    summary["num_layers"] = int(len(details))
    summary["num_skipped"] = len(skipped)
    experts = details["role"].astype(str).str.startswith("expert")
    if "num_experts" in details:  # --expert-rows mean: a row per group
        summary["num_expert_matrices"] = int(details["num_experts"].sum())
        summary["num_expert_groups"] = int((details["num_experts"] > 0).sum())
    else:
        summary["num_expert_matrices"] = int(experts.sum())
    fitted = details[np.isfinite(details["alpha"].to_numpy(dtype=float))]
    not_applicable = sum("fit-not-applicable" in str(w).split(";") for w in details["warning"])
    summary["num_fit_failed"] = int(len(details) - len(fitted)) - not_applicable
    if not_applicable:
        summary["num_fit_not_applicable"] = not_applicable
    for column in SUMMARY_MEANS:
        values = fitted[column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        summary[column] = float(values.mean()) if values.size else math.nan
    codes = Counter(c for w in details["warning"] for c in w.split(";") if c)
    summary["warnings"] = {code: codes.get(code, 0) for code in WARNINGS}
    summary["phases"] = dict(Counter(details["phase"]))
    traps = details["num_traps"].to_numpy(dtype=float)
    summary["num_traps"] = int(np.nansum(traps)) if np.isfinite(traps).any() else None
    laws = Counter(law for law in details["tail_law"] if law)
    summary["tail_laws"] = dict(laws) if laws else None  # None: tail tests not run
    summary["skipped"] = [
        {"name": s.name, "shape": list(s.shape), "reason": s.reason} for s in skipped
    ]
    return summary


def estimator_text(record: dict[str, Any]) -> str:
    """One line for the summary's ``estimator`` record: ``hill(k=median)+farms(2000,15,1)``."""
    settings = ",".join(f"{k}={v}" for k, v in record.items() if k not in ("name", "farms"))
    text = record["name"] + (f"({settings})" if settings else "")
    farms = record.get("farms")
    if farms:
        text += f"+farms(size={farms['size']},windows={farms['windows']},ratio={farms['ratio']:g})"
    return text


def layers_table(details: pd.DataFrame, estimator: dict[str, Any] | None = None) -> pd.DataFrame:
    """The per-layer table of an analysis: every column (CSV), people see TABLE_COLUMNS.

    Shapes as ``384x1536``; ``num_traps`` and ``tail_law`` are shown only when
    the traps were checked and the tails tested.  ``estimator`` (the summary's
    record) adds an ``estimator`` column, so a CSV says how its alphas were fitted.
    """
    # num_traps is a count, float only because it is NaN when not randomised
    frame = details.assign(
        shape=details["shape"].map(shape_text), num_traps=details["num_traps"].astype("Int64")
    )
    if estimator:
        frame["estimator"] = estimator_text(estimator)
    shown = [c for c in TABLE_COLUMNS if c in frame]
    if "num_experts" in frame and (frame["num_experts"] > 0).any():  # --expert-rows mean
        shown.insert(shown.index("shape") + 1, "num_experts")
    if "variant" in frame:  # with a LoRA adapter: base, lora-delta or merged
        shown.insert(1, "variant")
    if details["num_traps"].isna().all():
        shown.remove("num_traps")
    if not details["tail_law"].astype(bool).any():
        shown.remove("tail_law")
    return with_shown(frame, shown)


def layout_lines(summary: dict[str, Any]) -> list[str]:
    """Summary lines on expert matrices (what the means count) and layout notes (a fused
    tensor kept whole, an orientation assumed)."""
    lines = []
    experts = summary.get("num_expert_matrices")
    if experts:
        groups = summary.get("num_expert_groups")
        how = (
            f"averaged into {groups} group rows, each counted once"
            if groups
            else "a row each, each counted once"
        )
        lines.append(f"expert matrices in the means and phase counts: {experts}, {how}")
    notes = (summary.get("layout") or {}).get("notes") or {}
    for name, note in list(notes.items())[:5]:
        lines.append(f"layout note: {name}: {note}")
    if len(notes) > 5:
        lines.append(f"layout notes: {len(notes) - 5} more (JSON summary: layout.notes)")
    return lines
