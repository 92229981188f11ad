"""Compare a series of models: summaries side by side, a ranking, metric-accuracy agreement.

Within one architecture family, lower mean ``alpha_weighted`` (alpha-hat) and
lower log norms predict higher test accuracy (Martin, Peng & Mahoney, Nature
Communications 12, 4122 (2021)); the agreement of a metric with reported
accuracies is measured as in that paper: Kendall's tau and Spearman's rho of
the rank agreement, and R^2 and RMSE of a least-squares line accuracy ~ metric.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .choices import RANK_METRICS
from .errors import InputError, OptionError
from .pipeline import Analysis, AnalysisOptions, OnPlan, OnProgress, Runner, Source, run_each
from .render import records

LAYER_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm", "phase")


@dataclass(frozen=True)
class Series:
    """The comparison of several models."""

    models: pd.DataFrame  # one row per model, ranked (rank 1 = best by rank_by)
    layers: pd.DataFrame  # one row per (model, layer): the per-depth view
    correlations: pd.DataFrame | None  # one row per metric, when accuracies were given
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """Everything: the ranked models, the correlations (or None), every layer, the notes."""
        return {
            "models": records(self.models),
            "correlations": records(self.correlations),
            "layers": records(self.layers),
            "notes": self.notes,
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        """The ranked models, and the metric-accuracy agreement when accuracies were given."""
        tables = {"models": self.models}
        if self.correlations is not None:
            tables["metric against accuracy"] = self.correlations
        return tables

    def summary_lines(self) -> list[str]:
        return list(self.notes)


def compare(
    sources: Sequence[Source],
    *,
    labels: Sequence[str] | None = None,
    accuracy: Mapping[str, float] | str | os.PathLike[str] | None = None,
    rank_by: str = "alpha_weighted",
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
    runner: Runner | None = None,
) -> Series:
    """Analyse every model and compare them.

    ``accuracy`` maps labels to test accuracy, or is the path of a CSV that
    :func:`read_accuracy` reads.  ``on_plan``/``progress``: each model's, as
    :func:`~spectralyzer.pipeline.run_analysis` reports them.  ``runner`` analyses
    the models (default: one after another here; see :mod:`spectralyzer.fanout`); a
    model it could not analyse is left out of the tables with a note.
    """
    if rank_by not in RANK_METRICS:
        raise OptionError("rank_by", f"must be one of {RANK_METRICS}, not {rank_by!r}")
    labels = list(labels) if labels else default_labels(sources)
    if len(labels) != len(sources) or len(set(labels)) != len(labels):
        raise OptionError("labels", f"give one distinct label per model ({len(sources)} models)")
    if isinstance(accuracy, (str, os.PathLike)):
        accuracy = read_accuracy(accuracy, labels)
    rows, layer_frames, layer_sets, failed = [], [], [], []
    results = (runner or run_each)(sources, options, on_plan, progress)
    for label, result in zip(labels, results, strict=True):
        if not isinstance(result, Analysis):
            failed.append(f"{label} was not analysed ({result})")
            continue
        summary, details = result.summary, result.details
        rows.append(_model_row(label, summary))
        frame = details[["name", "layer_type", *LAYER_COLUMNS]].copy()
        frame.insert(0, "depth", range(len(frame)))
        frame.insert(0, "model", label)
        layer_frames.append(frame)
        layer_sets.append(frozenset(zip(details["name"], details["shape"], strict=True)))
    if not rows:
        raise InputError("compare", "no model could be analysed: " + "; ".join(failed))
    models = pd.DataFrame(rows)
    phases = [c for c in models if c.startswith("phase_")]
    models[phases] = models[phases].fillna(0).astype(int)
    models["rank"] = models[rank_by].rank(method="min", na_option="bottom").astype(int)
    models = models.sort_values(["rank", "model"]).reset_index(drop=True)
    notes = [f"ranked by mean {rank_by}: lower is better within one architecture family"]
    notes += failed
    if len(set(layer_sets)) > 1:
        notes.append(
            "the models' layers differ (names or shapes): the metrics compare models "
            "meaningfully only within one architecture family"
        )
    correlations = None
    if accuracy is not None:
        missing = [label for label in labels if label not in accuracy]
        if missing:
            raise OptionError("accuracy", f"no accuracy given for {', '.join(missing)}")
        models["accuracy"] = models["model"].map(accuracy)
        correlations = metric_accuracy_table(models, "accuracy")
    return Series(models, pd.concat(layer_frames, ignore_index=True), correlations, notes)


def metric_accuracy_table(models: pd.DataFrame, target: str) -> pd.DataFrame:
    """Kendall tau, Spearman rho, R^2 and RMSE of ``target ~ a + b * metric`` per metric."""
    rows = []
    y = models[target].to_numpy(dtype=float)
    for metric in RANK_METRICS:
        x = models[metric].to_numpy(dtype=float)
        rows.append({"metric": metric, **agreement(x, y)})
    return pd.DataFrame(rows)


def agreement(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Rank and linear agreement of paired samples (NaN pairs dropped).

    ``r2 = 1 - SS_res / SS_tot`` and ``rmse = sqrt(SS_res / n)`` of the
    least-squares line; tau is Kendall's tau-b.
    """
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = math.nan
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(x.size), "kendall_tau": nan, "spearman_rho": nan, "r2": nan, "rmse": nan}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    ss_res, ss_tot = float(residual @ residual), float(((y - y.mean()) ** 2).sum())
    return {
        "n": int(x.size),
        "kendall_tau": float(stats.kendalltau(x, y).statistic),
        "spearman_rho": float(stats.spearmanr(x, y).statistic),
        "r2": 1.0 - ss_res / ss_tot,
        "rmse": math.sqrt(ss_res / x.size),
    }


def read_accuracy(path: str | os.PathLike[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracies from a CSV with a ``model`` (label or path) column and ``accuracy`` or ``error``.

    An ``error`` column is turned into accuracy as ``1 - error`` when all errors
    lie in [0, 1], else ``100 - error`` (percent).
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read accuracy CSV ({err})") from None
    key = next((c for c in ("model", "label", "path") if c in frame), None)
    value = next((c for c in ("accuracy", "error") if c in frame), None)
    if key is None or value is None:
        raise InputError(
            path, "accuracy CSV needs a 'model' column and an 'accuracy' or 'error' column"
        )
    numbers = pd.to_numeric(frame[value], errors="coerce")
    if numbers.isna().any():
        raise InputError(path, f"non-numeric values in column '{value}'")
    if value == "error":
        numbers = (1.0 if numbers.between(0, 1).all() else 100.0) - numbers
    table = dict(zip(frame[key].astype(str), numbers.astype(float), strict=True))
    # rows may name a model by its label or by its path's file name
    table.update(
        {os.path.basename(k): v for k, v in table.items() if os.path.basename(k) not in table}
    )
    return {label: table[label] for label in labels if label in table}


def _model_row(label: str, summary: Mapping) -> dict:
    row = {"model": label, "path": summary["model"], "num_layers": summary["num_layers"]}
    row.update({metric: summary[metric] for metric in RANK_METRICS})
    row["num_fit_failed"] = summary["num_fit_failed"]
    row["num_warnings"] = sum(summary["warnings"].values())
    row["num_traps"] = summary["num_traps"]
    row.update({f"phase_{k}": v for k, v in sorted(summary["phases"].items())})
    return row


def default_labels(sources: Sequence[Source]) -> list[str]:
    """File names, or whole paths where file names repeat; ``model<i>`` for objects."""
    paths = [
        os.path.normpath(os.fspath(s)) if isinstance(s, (str, os.PathLike)) else f"model{i}"
        for i, s in enumerate(sources)
    ]
    names = [os.path.basename(p) for p in paths]
    return names if len(set(names)) == len(names) else paths
