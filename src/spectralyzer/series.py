"""Compare a series of models: summaries side by side, a ranking, metric-accuracy agreement.

Within one architecture family, lower mean ``alpha_weighted`` (alpha-hat) and
lower log norms predict higher test accuracy (Martin, Peng & Mahoney, Nature
Communications 12, 4122 (2021)); the agreement of a metric with reported
accuracies is measured as in that paper (:mod:`spectralyzer.agreement`), over
all models and within each family (Simpson's paradox, docs/theory.md section 6.8).

A training run is a series too: a folder or glob of checkpoints is expanded and
ordered by the step in the names (:mod:`spectralyzer.runs`), and the step is a column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .agreement import (
    agreement,
    metric_accuracy_table,
    shape_families,
    sign_reversals,
    within_families,
)
from .choices import RANK_METRICS
from .errors import InputError, OptionError
from .pipeline import Analysis, AnalysisOptions, OnPlan, OnProgress, Runner, Source, run_each
from .render import records
from .roles import role_of
from .runs import expand_sources, step_of

__all__ = ["Entry", "Series", "agreement", "assemble", "compare", "metric_accuracy_table"]

LAYER_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm", "phase")


@dataclass(frozen=True)
class Series:
    """The comparison of several models."""

    models: pd.DataFrame  # one row per model, ranked (rank 1 = best by rank_by)
    layers: pd.DataFrame  # one row per (model, layer): the per-depth view
    correlations: pd.DataFrame | None  # one row per metric, when accuracies were given
    notes: list[str] = field(default_factory=list)
    family_correlations: pd.DataFrame | None = None  # per (family, metric), several families
    warnings: list[str] = field(default_factory=list)  # correlations that reverse in a family

    def document(self) -> dict[str, Any]:
        """Everything: the ranked models, the correlations (or None), every layer, the notes."""
        return {
            "models": records(self.models),
            "correlations": records(self.correlations),
            "family_correlations": records(self.family_correlations),
            "layers": records(self.layers),
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        """The ranked models, and the metric-accuracy agreement when accuracies were given."""
        tables = {"models": self.models}
        if self.correlations is not None:
            tables["metric against accuracy"] = self.correlations
        if self.family_correlations is not None:
            tables["metric against accuracy within each family"] = self.family_correlations
        return tables

    def summary_lines(self) -> list[str]:
        return [*self.notes, *(f"warning: {w}" for w in self.warnings)]


@dataclass(frozen=True)
class Entry:
    """One analysed model of a series: its label, step (from its name) and tables."""

    label: str
    step: int | None
    summary: Mapping[str, Any]
    details: pd.DataFrame


def compare(
    sources: Sequence[Source],
    *,
    labels: Sequence[str] | None = None,
    accuracy: Mapping[str, float] | str | os.PathLike[str] | None = None,
    families: Sequence[str] | Mapping[str, str] | None = None,
    rank_by: str = "alpha_weighted",
    order: str = "natural",
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
    runner: Runner | None = None,
) -> Series:
    """Analyse every model and compare them.

    A source that is a folder of checkpoints (not itself a Hugging Face model) or
    a glob is expanded into its checkpoints, ordered by ``order`` (``natural``:
    numbers in names compared as numbers; ``name``; ``mtime``); other sources
    keep the order given. ``accuracy`` maps labels to test accuracy, or is the
    path of a CSV that :func:`read_accuracy` reads (its optional ``family``
    column labels families). ``families``: one family label per model (or a
    label -> family mapping); default: models with the same multiset of layer
    shapes form a family. ``on_plan``/``progress``: each model's, as
    :func:`~spectralyzer.pipeline.run_analysis` reports them.  ``runner`` analyses
    the models (default: one after another here; see :mod:`spectralyzer.fanout`); a
    model it could not analyse is left out of the tables with a note.
    """
    if rank_by not in RANK_METRICS:
        raise OptionError("rank_by", f"must be one of {RANK_METRICS}, not {rank_by!r}")
    sources, in_runs = _expand(sources, order)
    labels = list(labels) if labels else default_labels(sources)
    if len(labels) != len(sources) or len(set(labels)) != len(labels):
        raise OptionError("labels", f"give one distinct label per model ({len(sources)} models)")
    if isinstance(accuracy, (str, os.PathLike)):
        families = families if families is not None else read_families(accuracy, labels)
        accuracy = read_accuracy(accuracy, labels)
    if families is not None and not isinstance(families, Mapping):
        if len(families) != len(labels):
            raise OptionError("family", f"give one family label per model ({len(labels)} models)")
        families = dict(zip(labels, families, strict=True))
    _require(accuracy, labels, "accuracy")  # before hours of analysis, not after
    _require(families, labels, "family")
    entries, failed = [], []
    results = (runner or run_each)(sources, options, on_plan, progress)
    for label, source, in_run, result in zip(labels, sources, in_runs, results, strict=True):
        if not isinstance(result, Analysis):  # a worker could not analyse it (fanout)
            failed.append(f"{label} was not analysed ({result})")
            continue
        step = step_of(source, not in_run) if isinstance(source, (str, os.PathLike)) else None
        entries.append(Entry(label, step, result.summary, result.details))
    if not entries:
        raise InputError("compare", "no model could be analysed: " + "; ".join(failed))
    series = assemble(entries, accuracy=accuracy, families=families, rank_by=rank_by)
    series.notes.extend(failed)
    return series


def assemble(
    entries: Sequence[Entry],
    *,
    accuracy: Mapping[str, float] | None = None,
    families: Mapping[str, str] | None = None,
    rank_by: str = "alpha_weighted",
) -> Series:
    """The series of analysed models: ranked table, per-layer table, correlations, notes."""
    labels = [e.label for e in entries]
    models = pd.DataFrame([model_row(e.label, e.summary) for e in entries])
    if any(e.step is not None for e in entries):
        models.insert(1, "step", pd.array([e.step for e in entries], dtype="Int64"))
    phases = [c for c in models if c.startswith("phase_")]
    models[phases] = models[phases].fillna(0).astype(int)
    shapes = [list(e.details["shape"]) for e in entries]
    if families:
        _require(families, labels, "family")
        models["family"] = [str(families[label]) for label in labels]
    else:
        models["family"] = shape_families(shapes)
    layer_sets = {
        frozenset(zip(e.details["name"], map(str, s), strict=True))
        for e, s in zip(entries, shapes, strict=True)
    }
    models["rank"] = models[rank_by].rank(method="min", na_option="bottom").astype(int)
    models = models.sort_values(["rank", "model"]).reset_index(drop=True)
    notes = [f"ranked by mean {rank_by}: lower is better within one architecture family"]
    if len(layer_sets) > 1:
        notes.append(
            "the models' layers differ (names or shapes): the metrics compare models "
            "meaningfully only within one architecture family"
        )
    correlations = family_table = None
    warnings: list[str] = []
    if accuracy is not None:
        _require(accuracy, labels, "accuracy")
        models["accuracy"] = models["model"].map(accuracy)
        correlations = metric_accuracy_table(models, "accuracy")
        if models["family"].nunique() > 1:
            family_table = within_families(models, "accuracy")
            warnings = sign_reversals(correlations, family_table)
            notes.append(
                f"{models['family'].nunique()} families: correlations are given over all "
                "models and within each family"
            )
    if models["family"].nunique() == 1:
        models = models.drop(columns="family")
    layers = pd.concat([_layer_frame(e) for e in entries], ignore_index=True)
    if "step" in layers:
        layers["step"] = layers["step"].astype("Int64")  # NaN where a name had none
    return Series(models, layers, correlations, notes, family_table, warnings)


def _require(given: Mapping[str, Any] | None, labels: Sequence[str], key: str) -> None:
    """Every label has a value in ``given`` (when given), else an OptionError naming ``key``."""
    missing = [label for label in labels if given is not None and label not in given]
    if missing:
        raise OptionError(key, f"no {key} given for {', '.join(missing)}")


def _expand(sources: Sequence[Source], order: str) -> tuple[list[Source], list[bool]]:
    """Paths expanded by :func:`~spectralyzer.runs.expand_sources`, objects as they are; and
    whether each came from a run folder or glob (where a bare number in a name is the step)."""
    expanded: list[Source] = []
    in_runs: list[bool] = []
    for source in sources:
        found = expand_sources([source], order) if isinstance(source, (str, os.PathLike)) else []
        in_run = bool(found) and found != [Path(source)]  # type: ignore[arg-type]
        expanded += found or [source]
        in_runs += [in_run] * max(1, len(found))
    return expanded, in_runs


def _layer_frame(entry: Entry) -> pd.DataFrame:
    """One model's rows of the per-depth table, with each layer's role (and the step)."""
    details = entry.details
    frame = details[["name", "layer_type", *LAYER_COLUMNS]].copy()
    frame.insert(2, "role", list(map(role_of, details["name"], details["layer_type"])))
    frame.insert(0, "depth", range(len(frame)))
    frame.insert(0, "model", entry.label)
    if entry.step is not None:
        frame["step"] = entry.step
    return frame


def _read_csv(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """The accuracy CSV and the name of its model column."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read accuracy CSV ({err})") from None
    key = next((c for c in ("model", "label", "path") if c in frame), None)
    if key is None:
        raise InputError(path, "accuracy CSV needs a 'model' column")
    return frame, key


def _by_label(frame: pd.DataFrame, key: str, values: pd.Series, labels: Sequence[str]) -> dict:
    """``values`` keyed by label; rows may name a model by its label or its path's file name."""
    table = dict(zip(frame[key].astype(str), values, strict=True))
    table.update(
        {os.path.basename(k): v for k, v in table.items() if os.path.basename(k) not in table}
    )
    return {label: table[label] for label in labels if label in table}


def read_accuracy(path: str | os.PathLike[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracies from a CSV with a ``model`` (label or path) column and ``accuracy`` or ``error``.

    An ``error`` column is turned into accuracy as ``1 - error`` when all errors
    lie in [0, 1], else ``100 - error`` (percent).
    """
    frame, key = _read_csv(path)
    value = next((c for c in ("accuracy", "error") if c in frame), None)
    if value is None:
        raise InputError(
            path, "accuracy CSV needs a 'model' column and an 'accuracy' or 'error' column"
        )
    numbers = pd.to_numeric(frame[value], errors="coerce")
    if numbers.isna().any():
        raise InputError(path, f"non-numeric values in column '{value}'")
    if value == "error":
        numbers = (1.0 if numbers.between(0, 1).all() else 100.0) - numbers
    return _by_label(frame, key, numbers.astype(float), labels)


def read_families(path: str | os.PathLike[str], labels: Sequence[str]) -> dict[str, str] | None:
    """The ``family`` column of the accuracy CSV by label, or None when it has none."""
    frame, key = _read_csv(path)
    if "family" not in frame:
        return None
    if frame["family"].isna().any():
        raise InputError(path, "empty cells in column 'family'")
    return _by_label(frame, key, frame["family"].astype(str), labels)


def model_row(label: str, summary: Mapping) -> dict:
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
