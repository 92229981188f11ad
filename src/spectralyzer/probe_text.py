"""Temporary: a probe result as table, JSON or Markdown text, from its three views.

Built only on ``ProbeResult.document()``, ``tables()`` and ``sections()``
(the summary lines); it keeps ``spectralyzer probe`` working until the one
renderer (:mod:`spectralyzer.render`) takes over, and then goes.
"""

from __future__ import annotations

import json

import pandas as pd

from .escaping import markdown as markdown_text
from .escaping import terminal
from .probe_lines import number
from .probe_records import ProbeResult
from .tables import clean_json, markdown_table, text_cells

FORMATS = ("table", "json", "markdown")


def _table(frame: pd.DataFrame, markdown: bool) -> str:
    frame = frame.copy()
    for column in frame.columns:  # 4 significant digits: curvatures span decades
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(number)
    if markdown:
        return markdown_table(frame)
    return text_cells(frame, terminal).to_string(index=False)


def to_text(result: ProbeResult, markdown: bool = False) -> str:
    """The summary, section by section, each section's table under it; lines escaped."""
    clean = markdown_text if markdown else terminal
    tables = result.tables()
    blocks = []
    for section in result.sections():
        lines = [clean(line) for line in section.lines]
        if section.table:
            lines += ["", _table(tables[section.table], markdown)]
        blocks.append(lines)
    if markdown:
        title, *rest = blocks[0]
        blocks[0] = [f"# {title}", "", *rest]
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def render_probe(fmt: str, result: ProbeResult) -> str:
    if fmt == "json":
        return json.dumps(clean_json(result.document()), indent=2) + "\n"
    if fmt in ("table", "markdown"):
        return to_text(result, markdown=fmt == "markdown")
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
