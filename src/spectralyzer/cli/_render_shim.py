"""Stand-in for ``spectralyzer.render.render`` until that module lands (issue 12).

Maps the one call the commands make onto today's format dispatchers; ``width``
and ``color`` are accepted and ignored. The lead replaces this module by
``from ..render import render`` at the merge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..diff import Diff
from ..errors import OptionError
from ..gate import Verdict, to_markdown, verdict_lines
from ..pipeline import Analysis
from ..series import Series, render_series
from ..tables import clean_json, render_frame
from ..tables import render as render_analysis


def render(
    result: Any,
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    width: int | None = None,
    color: bool = False,
) -> str:
    """``result`` as table, csv, json or markdown text."""
    if isinstance(result, Analysis):
        if columns and fmt != "json":
            return render_frame(fmt, _pick(result.details, columns))
        return render_analysis(fmt, result.details, result.summary)
    if isinstance(result, Series):
        return render_series(fmt, result)
    if isinstance(result, Diff):
        return render_frame(fmt, result.layers)
    if isinstance(result, Verdict):
        return _verdict(fmt, result)
    from ..hessian.probe import ProbeResult
    from ..hessian.render import render_probe

    if isinstance(result, ProbeResult):
        if fmt == "csv":
            raise OptionError("format", "csv is not available for probe results yet")
        return render_probe(fmt, result)
    raise TypeError(f"cannot render a {type(result).__name__}")


def _pick(details: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    unknown = [c for c in columns if c not in details]
    if unknown:
        raise OptionError("columns", f"unknown column(s) {unknown}; choose from {list(details)}")
    frame = details[list(columns)].copy()
    if "shape" in frame:
        frame["shape"] = frame["shape"].map(lambda s: "x".join(map(str, s)))
    return frame


def _verdict(fmt: str, verdict: Verdict) -> str:
    if fmt == "table":
        return "\n".join(verdict_lines(verdict)) + "\n"
    if fmt == "markdown":
        return to_markdown(verdict)
    rows = [(name, reason) for name, reasons in verdict.failures.items() for reason in reasons]
    if fmt == "csv":
        return render_frame("csv", pd.DataFrame(rows, columns=["layer", "reason"]))
    document = {
        "passed": verdict.passed,
        "failures": verdict.failures,
        "checked": verdict.checked,
        "unmatched": verdict.unmatched,
        "notes": verdict.notes,
    }
    return json.dumps(clean_json(document), indent=2) + "\n"
