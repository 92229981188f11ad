"""One output layer: any result as a table, CSV, JSON or Markdown.

A result (an analysis, a comparison, a diff, a gate verdict, a probe) offers
three methods and no rendering code of its own (:class:`Result`).  Names come
from files the user did not write, so every format escapes them here with the
functions of :mod:`spectralyzer.escaping`; JSON escapes itself.  NaN and
infinities are written as ``null`` in JSON and as empty cells in CSV.

- ``json``: the result's document.
- ``csv``: its main (first) table.
- ``markdown``: each table, then the summary lines as bullets.
- ``table``: each table as plain text, then the summary lines; fitted to a
  terminal's width when one is given (:mod:`spectralyzer.render_table`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .choices import FORMATS
from .errors import OptionError
from .escaping import csv_cell, markdown, markdown_code
from .render_table import terminal_text

#: Floats in CSV: 10 significant digits, enough to compare runs, short enough to read.
FLOAT_FORMAT = "%.10g"
#: ``DataFrame.attrs`` key: the columns people see in a table (the rest: CSV and JSON only).
SHOWN = "shown_columns"
#: The column of layer names: written as inline code in Markdown.
NAME_COLUMN = "name"
#: ``DataFrame.attrs`` key: significant digits of the table's floats (default: 3 decimals).
DIGITS = "significant_digits"


class Result(Protocol):
    """What :func:`render` needs of a result."""

    def document(self) -> dict[str, Any]: ...  # the JSON document (NaN allowed)

    def tables(self) -> dict[str, pd.DataFrame]: ...  # named tables, the first the main one

    def summary_lines(self) -> list[str]: ...  # plain lines for people, not yet escaped


class Sectioned(Result, Protocol):
    """A result whose lines come in sections, each followed by the table it explains (a probe)."""

    def sections(self) -> list[Any]: ...  # each has ``lines`` and ``table`` (a name, or None)


def render(
    result: Result,
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    width: int | None = None,
    color: bool = False,
) -> str:
    """``result`` as text in ``fmt`` (one of FORMATS).

    ``columns`` picks the main table's columns (table, csv, markdown); an
    unknown one is an :class:`OptionError`.  ``width`` fits the table to a
    terminal that wide, ``color`` colours phases and warnings (table only);
    without them the table is plain and complete, as for a pipe.
    """
    if fmt not in FORMATS:
        raise OptionError("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "json":
        if columns:
            raise OptionError("columns", "picks the columns of a table; JSON has the whole result")
        return json_text(result.document())
    tables = {name: frame for name, frame in result.tables().items()}
    if columns:
        main = next(iter(tables), None)
        if main is None:
            raise OptionError("columns", "this result has no table to pick columns from")
        tables[main] = pick_columns(tables[main], columns)
    if fmt == "csv":
        return csv_text(next(iter(tables.values()))) if tables else ""
    if hasattr(result, "sections") and not columns:
        return sectioned_text(result, tables, fmt, width=width, color=color)
    if fmt == "markdown":
        return markdown_text(tables, result.summary_lines())
    shown = {name: shown_frame(frame) for name, frame in tables.items()}
    return terminal_text(
        shown, result.summary_lines(), width=width, color=color, fixed=bool(columns)
    )


def pick_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The table with exactly ``columns``, in that order (shown in full, also to people)."""
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        raise OptionError(
            "columns",
            f"unknown column(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(map(str, frame.columns))}",
        )
    picked = frame[list(dict.fromkeys(columns))].copy()
    picked.attrs[SHOWN] = tuple(picked.columns)
    return picked


def with_shown(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` marked to show people only ``columns`` (a CSV keeps every column)."""
    frame.attrs[SHOWN] = tuple(c for c in columns if c in frame.columns)
    return frame


def shown_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of a table that people see, floats as text to 3 decimals."""
    columns = frame.attrs.get(SHOWN) or tuple(frame.columns)
    return format_floats(frame[list(columns)])


def sectioned_text(
    result: Sectioned,
    tables: dict[str, pd.DataFrame],
    fmt: str,
    *,
    width: int | None = None,
    color: bool = False,
) -> str:
    """Table or Markdown text of a sectioned result: each section's lines, then its table."""
    blocks = []
    for n, section in enumerate(result.sections()):
        if fmt == "markdown":
            lines = [markdown(line) for line in section.lines]
            if n == 0 and lines:
                lines = [f"# {lines[0]}", "", *lines[1:]]
            block = "\n".join(lines)
            if section.table:
                block += "\n\n" + markdown_table(tables[section.table]).rstrip("\n")
        else:
            block = terminal_text({}, section.lines, width=width).rstrip("\n")
            if section.table:
                frame = {section.table: shown_frame(tables[section.table])}
                block += "\n\n" + terminal_text(frame, [], width=width, color=color).rstrip("\n")
        blocks.append(block)
    return "\n\n".join(blocks) + "\n"


# --- JSON


def json_text(document: Any) -> str:
    """The document as indented JSON, NaN/Inf as null."""
    return json.dumps(clean_json(document), indent=2) + "\n"


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


def records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    """A table as a list of JSON objects (None stays None)."""
    return None if frame is None else frame.to_dict(orient="records")


# --- CSV


def csv_text(frame: pd.DataFrame) -> str:
    """CSV of a DataFrame, text cells neutralised (:func:`~spectralyzer.escaping.csv_cell`)."""
    return text_cells(frame, csv_cell).to_csv(index=False, float_format=FLOAT_FORMAT)


def text_cells(frame: pd.DataFrame, clean: Callable[[str], str]) -> pd.DataFrame:
    """A copy with ``clean`` applied to every text cell (names from files); the rest as is."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: clean(v) if isinstance(v, str) else v)
    return frame


# --- Markdown


def markdown_text(tables: dict[str, pd.DataFrame], lines: Sequence[str]) -> str:
    """Each non-empty table (the later ones under a heading), then the lines as bullets."""
    parts = []
    for n, (name, frame) in enumerate(tables.items()):
        if len(frame):
            table = markdown_table(shown_frame(frame))
            parts.append(table if n == 0 else f"### {markdown(name)}\n\n{table}")
    if lines:
        parts.append("\n".join(f"- {markdown(line)}" for line in lines) + "\n")
    return "\n".join(parts)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (floats to 3 decimals).

    Every cell and header is escaped (:func:`~spectralyzer.escaping.markdown`):
    names from files must not add HTML or break the table.  Layer names are
    inline code where that is safe (:func:`~spectralyzer.escaping.markdown_code`).
    """
    frame = format_floats(frame)
    clean = [markdown_code if c == NAME_COLUMN else markdown for c in frame.columns]
    lines = [
        "| " + " | ".join(markdown(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(f(v) for f, v in zip(clean, row, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


# --- numbers for people


def format_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with float columns as text for people: 3 decimals, or the table's own
    significant digits (``attrs[DIGITS]``: curvatures span decades)."""
    digits = frame.attrs.get(DIGITS)
    text = number if digits is None else (lambda x: significant(x, digits))
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column].map(text)
    return frame


def significant(x: Any, digits: int) -> str:
    """A float to ``digits`` significant digits (``n/a`` for NaN); anything else as ``str``."""
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


def number(x: Any) -> str:
    """A float to 3 decimals (``nan`` for NaN); anything else as ``str``."""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def shape_text(shape: Sequence[int]) -> str:
    """``(384, 1536)`` -> ``384x1536``."""
    return "x".join(map(str, shape))
