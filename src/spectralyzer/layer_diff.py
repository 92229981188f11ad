"""Layer-by-layer differences between a base model and a modified candidate.

Layers are matched by parameter name; a layer whose shape changed (pruned
channels, factorised layers) is still compared and marked ``shape-changed``;
layers present in only one model are listed, never dropped silently.
``log`` is base 10, so ``d_log_spectral_norm = 0.1`` means lambda_max grew by
26% (docs/theory.md section 3.10, "scale collapse").  An edit that removed
eigenvalues below the MP lower edge (``num_small_outliers``, docs/theory.md
section 6.3: an SVD truncation drops exactly those) is warned about, not failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .pipeline import AnalysisOptions, OnPlan, OnProgress, Runner, Source, run_each
from .render import records

DELTA_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm")
#: Metrics that are finite for any finite, non-zero matrix: undefined in the candidate
#: only (NaN weights, a zeroed layer) means the layer broke, whatever its deltas.
ALWAYS_FINITE = ("log_spectral_norm", "log_norm", "stable_rank")
NONFINITE_WEIGHTS = "nonfinite-weights"  # the metrics' warning code for NaN/Inf weights
COLUMNS = (
    "name",
    "status",
    "in_base",
    "in_candidate",
    "shape_base",
    "shape_candidate",
    "alpha_base",
    "phase_base",
    "alpha_candidate",
    "phase_candidate",
    *(f"d_{metric}" for metric in DELTA_COLUMNS),
    "d_log_stable_rank",
    "new_traps",
    "phase_changed",
    "became_nonfinite",
    "lost_small_outliers",
)
SCALE_COLLAPSE_QUIET = 0.02  # median |d log_spectral_norm| below which most layers "barely move"


@dataclass(frozen=True)
class Diff:
    """Per-layer deltas (candidate - base) and what could not be matched."""

    layers: pd.DataFrame  # one row per name in either model
    base_summary: dict
    candidate_summary: dict

    @property
    def matched(self) -> pd.DataFrame:
        return self.layers[self.layers["status"] != "unmatched"]

    def document(self) -> dict[str, Any]:
        """Every layer's row and both models' summaries."""
        return {
            "layers": records(self.layers),
            "base_summary": self.base_summary,
            "candidate_summary": self.candidate_summary,
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"layers": self.layers}

    def summary_lines(self) -> list[str]:
        """Which models, and how many layers matched, changed shape or phase."""
        status = self.layers["status"].value_counts()
        counts = ", ".join(
            f"{k} {status.get(k, 0)}" for k in ("matched", "shape-changed", "unmatched")
        )
        changed = int(self.matched["phase_changed"].eq(True).sum())
        lines = [
            f"base: {self.base_summary.get('model', '?')}",
            f"candidate: {self.candidate_summary.get('model', '?')}",
            f"layers: {counts}; phase changed: {changed}",
        ]
        lost = small_end_warning(self.matched)
        return [*lines, lost] if lost else lines


def diff(
    base: Source,
    candidate: Source,
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    *,
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
    runner: Runner | None = None,
) -> Diff:
    """Analyse both models and compare them layer by layer (``on_plan``/``progress``: each
    model's, as :func:`~spectralyzer.pipeline.run_analysis` reports them; ``runner``: see
    :func:`~spectralyzer.series.compare`, here one that raises when a model failed)."""
    a, b = (runner or run_each)([base, candidate], options, on_plan, progress)
    return Diff(diff_frames(a.details, b.details), a.summary, b.summary)


def diff_frames(base: pd.DataFrame, cand: pd.DataFrame) -> pd.DataFrame:
    """The per-layer comparison table of two details frames.

    Columns: ``name, status`` (``matched``, ``shape-changed``, ``unmatched``),
    ``in_base, in_candidate``, ``shape_base, shape_candidate``, base and
    candidate alpha and phase, ``d_<metric>`` for DELTA_COLUMNS,
    ``d_log_stable_rank = log10(stable_rank_c / stable_rank_b)``, ``new_traps``
    (NaN unless both were randomised), ``phase_changed``, ``became_nonfinite``
    (``"weights"``, or the ALWAYS_FINITE metrics finite in the base but not in
    the candidate, comma-separated; ``""`` when none). Every column is present
    even when no layer matched.
    """
    left = base.set_index("name")
    right = cand.set_index("name")
    names = list(left.index) + [n for n in right.index if n not in left.index]
    rows = []
    for name in names:
        in_a, in_b = name in left.index, name in right.index
        row: dict = {"name": name, "in_base": in_a, "in_candidate": in_b}
        ra = left.loc[name] if in_a else None
        rb = right.loc[name] if in_b else None
        row["shape_base"] = tuple(ra["shape"]) if in_a else None
        row["shape_candidate"] = tuple(rb["shape"]) if in_b else None
        if not (in_a and in_b):
            row["status"] = "unmatched"
            rows.append(row)
            continue
        row["status"] = (
            "matched" if row["shape_base"] == row["shape_candidate"] else "shape-changed"
        )
        for side, r in (("base", ra), ("candidate", rb)):
            row[f"alpha_{side}"] = r["alpha"]
            row[f"phase_{side}"] = r["phase"]
        for metric in DELTA_COLUMNS:
            row[f"d_{metric}"] = rb[metric] - ra[metric]
        row["d_log_stable_rank"] = _log_ratio(rb["stable_rank"], ra["stable_rank"])
        row["new_traps"] = rb["num_traps"] - ra["num_traps"]
        row["phase_changed"] = ra["phase"] != rb["phase"]
        row["became_nonfinite"] = became_nonfinite(ra, rb)
        row["lost_small_outliers"] = max(
            0, int(ra.get("num_small_outliers", 0)) - int(rb.get("num_small_outliers", 0))
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def small_end_warning(layers: pd.DataFrame) -> str:
    """``"warning: ..."`` naming the layers that lost small-end outliers, or ``""``."""
    lost = pd.to_numeric(layers["lost_small_outliers"], errors="coerce").fillna(0)
    names = list(layers.loc[lost > 0, "name"])
    if not names:
        return ""
    return (
        f"warning: {int(lost.sum())} eigenvalue(s) below the MP lower edge removed in "
        f"{len(names)} layer(s) (small-end outliers carry information): {', '.join(names)}"
    )


def became_nonfinite(base: pd.Series, candidate: pd.Series) -> str:
    """What was finite in the base layer and is not in the candidate: ``"weights"``, the
    ALWAYS_FINITE metrics that turned NaN/Inf (comma-separated), or ``""``."""
    if _has_warning(candidate, NONFINITE_WEIGHTS) and not _has_warning(base, NONFINITE_WEIGHTS):
        return "weights"
    lost = [
        metric
        for metric in ALWAYS_FINITE
        if metric in base and _finite(base[metric]) and not _finite(candidate.get(metric, math.nan))
    ]
    return ", ".join(lost)


def _has_warning(row: pd.Series, code: str) -> bool:
    return code in str(row.get("warning", "") or "").split(";")


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def scale_collapse(layers: pd.DataFrame, threshold: float) -> list[str]:
    """Layers whose log_spectral_norm moved by more than ``threshold`` while most barely moved.

    "Most barely moved": the median ``|d log_spectral_norm|`` over matched layers is
    below SCALE_COLLAPSE_QUIET (Mahoney slides: distillation breaking ResNet20).
    """
    moved = pd.to_numeric(layers["d_log_spectral_norm"], errors="coerce").abs()
    moved = moved[np.isfinite(moved)]
    if moved.empty or float(np.median(moved)) >= SCALE_COLLAPSE_QUIET:
        return []
    return list(layers.loc[moved.index[moved > threshold], "name"])


def _log_ratio(new: float, old: float) -> float:
    if not (new > 0 and old > 0):
        return math.nan
    return math.log10(new / old)
