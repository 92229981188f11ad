"""Per-layer rows -> DataFrame, model summary, and the output formats.

JSON is one object ``{"layers": [...], "summary": {...}}``; each layer object is
keyed by the columns of :class:`spectralyzer.metrics.LayerMetrics`.  NaN is
written as ``null``.  These names are a stable interface.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from .escaping import csv_cell, markdown, terminal
from .fit.tail_tests import SIGNIFICANCE as TAIL_SIGNIFICANCE
from .layers import Skipped
from .metrics import WARNINGS, LayerMetrics

FORMATS = ("table", "csv", "json", "markdown")
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
TABLE_COLUMNS = (
    "name",
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
    """One row per analysed matrix, columns as in LayerMetrics."""
    columns = list(LayerMetrics.__dataclass_fields__)
    return pd.DataFrame([asdict(r) for r in rows], columns=columns)


def summarize(details: pd.DataFrame, skipped: Sequence[Skipped], **context: Any) -> dict[str, Any]:
    """Model-level summary: means of SUMMARY_MEANS, counts of layers, warnings and phases.

    A layer whose alpha is NaN (fit failed, non-finite weights) is left out of
    every mean and counted in ``num_fit_failed``.
    """
    summary: dict[str, Any] = dict(context)
    summary["num_layers"] = int(len(details))
    summary["num_skipped"] = len(skipped)
    fitted = details[np.isfinite(details["alpha"].to_numpy(dtype=float))]
    summary["num_fit_failed"] = int(len(details) - len(fitted))
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


def to_json(details: pd.DataFrame, summary: dict[str, Any]) -> str:
    """``{"layers": [...], "summary": {...}}`` with NaN as null."""
    layers = [clean_json(r) for r in details.to_dict(orient="records")]
    return json.dumps({"layers": layers, "summary": clean_json(summary)}, indent=2) + "\n"


def to_csv(details: pd.DataFrame) -> str:
    return csv_text(details.assign(shape=details["shape"].map(_shape_text)))


def csv_text(frame: pd.DataFrame) -> str:
    """CSV of a DataFrame, text cells neutralised (:func:`~spectralyzer.escaping.csv_cell`)."""
    return text_cells(frame, csv_cell).to_csv(index=False, float_format="%.10g")


def text_cells(frame: pd.DataFrame, clean: Callable[[str], str]) -> pd.DataFrame:
    """A copy with ``clean`` applied to every text cell (names from files); the rest as is."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: clean(v) if isinstance(v, str) else v)
    return frame


def to_markdown(details: pd.DataFrame, summary: dict[str, Any]) -> str:
    """A GitHub-flavoured Markdown table of the main columns plus the summary."""
    table = markdown_table(display_frame(details))
    lines = summary_lines(summary, clean=markdown)
    return table + "\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (floats to 3 decimals).

    Every cell and header is escaped (:func:`~spectralyzer.escaping.markdown`):
    names from files must not add HTML or break the table.
    """
    frame = format_floats(frame)
    lines = [
        "| " + " | ".join(markdown(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(markdown(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def format_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with float columns as text to 3 decimals, for people to read."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(_fmt)
    return frame


def to_table(details: pd.DataFrame, summary: dict[str, Any]) -> str:
    """Plain-text table for a terminal."""
    frame = text_cells(display_frame(details), terminal)
    body = frame.to_string(index=False) if len(frame) else "(no layers)"
    return body + "\n\n" + "\n".join(summary_lines(summary)) + "\n"


def render(fmt: str, details: pd.DataFrame, summary: dict[str, Any]) -> str:
    if fmt == "json":
        return to_json(details, summary)
    if fmt == "csv":
        return to_csv(details)
    if fmt == "markdown":
        return to_markdown(details, summary)
    if fmt == "table":
        return to_table(details, summary)
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def render_frame(fmt: str, frame: pd.DataFrame) -> str:
    """Any table (e.g. a diff) as table, csv, json (a list of records) or markdown."""
    if fmt == "json":
        return json.dumps(clean_json(frame.to_dict(orient="records")), indent=2) + "\n"
    if fmt == "csv":
        return csv_text(frame)
    if fmt == "markdown":
        return markdown_table(frame)
    if fmt == "table":
        return text_cells(format_floats(frame), terminal).to_string(index=False) + "\n"
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")


def summary_lines(summary: dict[str, Any], clean: Callable[[str], str] = terminal) -> list[str]:
    """Human-readable lines of the model summary; ``clean`` escapes the model's path."""
    lines = [
        f"model: {clean(str(summary.get('model', '?')))} ({summary.get('format', '?')})",
        f"layers analysed: {summary['num_layers']}, skipped: {summary['num_skipped']}, "
        f"fit failed (left out of means): {summary['num_fit_failed']}",
    ]
    lines.append(
        "means: " + ", ".join(f"{k} {_fmt(summary[k])}" for k in SUMMARY_MEANS if k in summary)
    )
    warnings = {k: v for k, v in summary["warnings"].items() if v}
    lines.append("warnings: " + (", ".join(f"{k} {v}" for k, v in warnings.items()) or "none"))
    lines.append("phases: " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    if summary.get("num_traps") is not None:
        lines.append(f"correlation traps: {summary['num_traps']}")
    if summary.get("tail_laws"):
        laws = ", ".join(f"{k} {v}" for k, v in summary["tail_laws"].items())
        lines.append(f"tail laws (likelihood ratios, p < {TAIL_SIGNIFICANCE:g}): {laws}")
    return lines


def display_frame(details: pd.DataFrame) -> pd.DataFrame:
    """The main columns of the per-layer table, as text for people to read."""
    columns = [c for c in TABLE_COLUMNS if c in details]
    if details["num_traps"].isna().all():
        columns.remove("num_traps")
    if not details["tail_law"].astype(bool).any():
        columns.remove("tail_law")
    frame = details[columns].copy()
    frame["shape"] = frame["shape"].map(_shape_text)
    if "num_traps" in frame:  # a count, float only because it is NaN when not randomised
        frame["num_traps"] = frame["num_traps"].astype("Int64")
    return format_floats(frame)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
