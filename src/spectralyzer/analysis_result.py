"""The outcome of one analysis (:class:`Analysis`) and its summary as lines people read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .engine import LayerSpectra
from .fit.tail_tests import SIGNIFICANCE as TAIL_SIGNIFICANCE
from .layers import Skipped
from .listing import listing_lines
from .render import number
from .tables import SUMMARY_MEANS, estimator_text, layers_table, layout_lines


@dataclass(frozen=True)
class Analysis:
    """The outcome of one analysis: tables, what was skipped, and where time went."""

    details: pd.DataFrame
    summary: dict[str, Any]
    skipped: list[Skipped]
    timings: dict[str, float]
    spectra: dict[str, LayerSpectra] = field(default_factory=dict)  # ESDs, for plots
    verbose: bool = False  # summary lines list each skipped tensor, not counts per reason

    def document(self) -> dict[str, Any]:
        """``{"layers": [...], "summary": {...}}``, a layer object per row of ``details``."""
        return {"layers": self.details.to_dict(orient="records"), "summary": self.summary}

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"layers": layers_table(self.details, self.summary.get("estimator"))}

    def summary_lines(self) -> list[str]:
        return summary_lines(self.summary, verbose=self.verbose)


def summary_lines(summary: dict[str, Any], verbose: bool = False) -> list[str]:
    """The model summary in lines people read (not yet escaped: the path is the model's),
    ending with what was left out (:func:`~spectralyzer.listing.listing_lines`)."""
    lines = [
        f"model: {summary.get('model', '?')} ({summary.get('format', '?')})",
        f"layers analysed: {summary['num_layers']}, skipped: {summary['num_skipped']}, "
        f"fit failed (left out of means): {summary['num_fit_failed']}",
    ]
    if quantisation := summary.get("layout", {}).get("quantisation"):
        lines.append(f"quantisation: {quantisation}")
    if summary.get("num_fit_not_applicable"):
        lines[-1] += (
            f", fit not applicable (low-rank updates, left out of means): "
            f"{summary['num_fit_not_applicable']}"
        )
    if summary.get("variants"):
        lines.append("variants: " + ", ".join(f"{k} {v}" for k, v in summary["variants"].items()))
        by = [
            (k, m["alpha"])
            for k, m in summary["means_by_variant"].items()
            if m["alpha"] == m["alpha"]
        ]
        if by:
            lines.append("alpha by variant: " + ", ".join(f"{k} {number(a)}" for k, a in by))
    lines.append(
        "means: " + ", ".join(f"{k} {number(summary[k])}" for k in SUMMARY_MEANS if k in summary)
    )
    warnings = {k: v for k, v in summary["warnings"].items() if v}
    lines.append("warnings: " + (", ".join(f"{k} {v}" for k, v in warnings.items()) or "none"))
    lines.append("phases: " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    lines.extend(layout_lines(summary))
    if summary.get("num_traps") is not None:
        lines.append(f"correlation traps: {summary['num_traps']}")
    if summary.get("estimator"):
        lines.append("estimator: " + estimator_text(summary["estimator"]))
    if summary.get("tail_laws"):
        laws = ", ".join(f"{k} {v}" for k, v in summary["tail_laws"].items())
        lines.append(f"tail laws (likelihood ratios, p < {TAIL_SIGNIFICANCE:g}): {laws}")
    return lines + listing_lines(summary, verbose)


def nothing_to_analyse(skipped: list[Skipped]) -> str:
    if not skipped:
        return "no weight matrix to analyse (no tensor with 2 or more dimensions matched)"
    first = skipped[0]
    return (
        f"no analysable weight matrix ({len(skipped)} skipped; e.g. {first.name}: {first.reason})"
    )
