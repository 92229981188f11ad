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
from .metrics import WARNINGS, LayerMetrics
from .render import shape_text, with_shown

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
# the per-layer columns a person sees (CSV and JSON have them all)
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


def layers_table(details: pd.DataFrame) -> pd.DataFrame:
    """The per-layer table of an analysis: every column (CSV), people see TABLE_COLUMNS.

    Shapes as ``384x1536``; ``num_traps`` and ``tail_law`` are shown only when
    the traps were checked and the tails tested.
    """
    # num_traps is a count, float only because it is NaN when not randomised
    frame = details.assign(
        shape=details["shape"].map(shape_text), num_traps=details["num_traps"].astype("Int64")
    )
    shown = [c for c in TABLE_COLUMNS if c in frame]
    if "variant" in frame:  # with a LoRA adapter: base, lora-delta or merged
        shown.insert(1, "variant")
    if details["num_traps"].isna().all():
        shown.remove("num_traps")
    if not details["tail_law"].astype(bool).any():
        shown.remove("tail_law")
    return with_shown(frame, shown)
