"""The series table of a watched run: one row per analysed checkpoint, appended as it comes.

CSV (a header, then rows) or JSON lines (one object a line), by the file's
extension. The columns are fixed, so rows appended by separate runs line up; a
CSV whose header differs is refused rather than mixed. Each row is written with
one ``write`` call in append mode (:func:`spectralyzer.outputs.append_text`), so
a reader never sees half a row from a run that is still going, and a killed run
leaves whole rows only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .alarms import Alarm
from .choices import RANK_METRICS
from .errors import InputError
from .outputs import Inputs, append_text, check_file_target
from .render import csv_text
from .series import Entry, model_row

COLUMNS = (
    "model",
    "step",
    "path",
    "num_layers",
    *RANK_METRICS,
    "num_fit_failed",
    "num_warnings",
    "num_traps",
    "num_alarms",
    "alarms",
)
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def table_row(entry: Entry, alarms: Sequence[Alarm]) -> dict[str, Any]:
    """The row of one checkpoint: its model means, counts and alarms (``kind:layer``)."""
    row = model_row(entry.label, entry.summary)
    row["step"] = entry.step
    row["num_alarms"] = len(alarms)
    row["alarms"] = " ".join(f"{alarm.kind}:{alarm.layer}" for alarm in alarms)
    return {column: row.get(column) for column in COLUMNS}


def is_json_lines(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(JSON_SUFFIXES)


def row_text(row: dict[str, Any], path: str | os.PathLike[str], header: bool) -> str:
    """The text appended for ``row``: a JSON line, or a CSV row (with the header first)."""
    if is_json_lines(path):
        clean = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
        }
        return json.dumps(clean) + "\n"
    frame = pd.DataFrame([row], columns=list(COLUMNS)).astype({"step": "Int64"})
    text = csv_text(frame)
    return text if header else text.split("\n", 1)[1]


def append_row(path: str | os.PathLike[str], row: dict[str, Any], inputs: Inputs) -> None:
    """Append ``row`` to the table at ``path`` (a CSV gets its header when new or empty)."""
    header = _csv_header(path)
    if header is not None and header != ",".join(COLUMNS):
        raise InputError(
            path,
            "exists with other columns than a spectralyzer series table; choose another --table",
        )
    check_file_target(path, inputs)  # before making its folder
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    append_text(path, row_text(row, path, header is None), inputs)


def _csv_header(path: str | os.PathLike[str]) -> str | None:
    """The first line of an existing, non-empty CSV table; None for JSON lines or a new file."""
    if is_json_lines(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")
