"""Tables as plain text for people: complete for a pipe, fitted to a terminal's width.

Piped or written to a file, a table keeps every row and shown column (a tool
or a wide editor reads it).  On a terminal ``width`` columns wide, a row that
wraps onto two lines no longer lines up with its header, so the table is made
to fit: names lose the prefix and suffix they all share (a line above the
table says which), an overlong name is shortened in the middle, and columns
are kept by :data:`PRIORITY` while they fit; a long text column (the gate's
reasons) is wrapped instead of left out.  Colour (ANSI) marks phases and
warnings only when asked for.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from typing import IO

import pandas as pd

from .escaping import shorten_middle, terminal

#: Which columns a narrow terminal keeps first; others follow in table order.
PRIORITY = (
    "name",
    "phase",
    "alpha",
    "alpha_weighted",
    "warning",
    "log_spectral_norm",
    "why",
    "d_log_spectral_norm",
    "d_log_norm",
    "d_log_stable_rank",
    "phase_candidate",
    "became_nonfinite",
    "d_alpha",
    "phase_base",
    "status",
    "rank",
    "accuracy",
    "log_norm",
    "stable_rank",
    "layer_type",
    "shape",
    "num_spikes",
    "num_traps",
    "tail_law",
)
NAME_COLUMN = "name"
KEY_SHARE = 0.3  # a fitted table's first column (the names) keeps this share of the width ...
KEY_MIN = 16  # ... or at least this many characters
WRAP_MIN = 20  # a text column is wrapped into no fewer characters than this
PHASE_COLOURS = {
    "heavy-tailed": "green",
    "bulk+spikes": "yellow",
    "bulk-decay": "yellow",
    "bleeding-out": "yellow",
    "random-like": "red",
    "rank-collapse": "red",
}
WARNING_COLUMNS = ("warning", "became_nonfinite")
ANSI = {"green": "\x1b[32m", "yellow": "\x1b[33m", "red": "\x1b[31m"}
RESET = "\x1b[0m"


def terminal_view(stream: IO[str], environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """``width`` and ``color`` for output to ``stream``: a terminal's, none for a pipe or file.

    Colour is off when ``NO_COLOR`` is set to anything non-empty (no-color.org).
    """
    if not stream.isatty():
        return {"width": None, "color": False}
    return {"width": shutil.get_terminal_size().columns, "color": not environ.get("NO_COLOR")}


def terminal_text(
    tables: Mapping[str, pd.DataFrame],
    lines: Sequence[str],
    *,
    width: int | None = None,
    color: bool = False,
    fixed: bool = False,
) -> str:
    """Each non-empty table (the later ones titled ``name:``), then the summary lines.

    Cells and lines are escaped (:func:`~spectralyzer.escaping.terminal`).
    ``fixed``: the main table's columns were picked by the user; none is left out.
    """
    parts = []
    for n, (name, frame) in enumerate(tables.items()):
        if len(frame):
            block = text_table(frame, width, color, fixed=fixed and n == 0)
            parts.append(block if n == 0 else f"{terminal(name)}:\n{block}")
    if lines:
        parts.append("".join(fit_line(terminal(line), width) for line in lines))
    return "\n".join(parts)


def text_table(
    frame: pd.DataFrame, width: int | None = None, color: bool = False, fixed: bool = False
) -> str:
    """One table, right-aligned as pandas prints it; fitted when ``width`` is given."""
    cells = {str(c): [terminal(v) for v in frame[c]] for c in frame.columns}
    # as pandas does, a number column keeps one more space in front (room for a sign)
    heads = {str(c): " " * _numeric(frame[c]) + terminal(c) for c in frame.columns}
    notes: list[str] = []
    wrap: dict[str, int] = {}
    if width is not None and table_width(cells, heads) > width:
        cells, notes = shorten_names(cells)
        if not fixed and table_width(cells, heads) > width:
            cells, wrap, left_out = choose_columns(cells, heads, width)
            if left_out:
                notes.append(f"not shown at this width: {', '.join(left_out)}")
    body = layout(cells, heads, wrap, color)
    return "".join(fit_line(note, width) for note in notes) + body


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def table_width(cells: Mapping[str, list[str]], heads: Mapping[str, str]) -> int:
    return sum(column_width(heads[c], v) for c, v in cells.items()) + len(cells) - 1


def column_width(head: str, values: Sequence[str]) -> int:
    return max([len(head), *map(len, values)])


def shorten_names(cells: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Names without the prefix and suffix they all share; returns the cells and the
    line that says what was dropped."""
    if NAME_COLUMN not in cells:
        return cells, []
    names = cells[NAME_COLUMN]
    prefix, suffix = common_affixes(names)
    if not (prefix or suffix):
        return cells, []
    names = [n[len(prefix) : len(n) - len(suffix)] for n in names]
    said = [f"start with {prefix}"] * bool(prefix) + [f"end with {suffix}"] * bool(suffix)
    return {**cells, NAME_COLUMN: names}, [f"names below {' and '.join(said)}"]


def common_affixes(names: Sequence[str]) -> tuple[str, str]:
    """The dotted prefix and suffix every name shares (``encoder.layer.``, ``.weight``),
    never the whole of a name; ``("", "")`` for fewer than two distinct names."""
    distinct = set(names)
    if len(distinct) < 2:
        return "", ""
    prefix = os.path.commonprefix(list(distinct))
    prefix = prefix[: prefix.rfind(".") + 1]
    suffix = os.path.commonprefix([n[::-1] for n in distinct])[::-1]
    suffix = suffix[suffix.find(".") :] if "." in suffix else ""
    shortest = min(map(len, distinct))
    if len(prefix) + len(suffix) >= shortest:
        suffix = ""
    if len(prefix) >= shortest:
        prefix = ""
    return prefix, suffix


def choose_columns(
    cells: dict[str, list[str]], heads: Mapping[str, str], width: int
) -> tuple[dict[str, list[str]], dict[str, int], list[str]]:
    """The first column (what a row is), then the others by PRIORITY up to the first that
    does not fit; table order kept.

    The first column keeps at least KEY_SHARE of the width and gets whatever the
    chosen columns leave; longer cells are shortened in the middle.  A text
    column (words with spaces) that does not fit is wrapped into the room left
    when that is at least WRAP_MIN characters.  Returns the kept cells, the
    wrapped columns' widths and the names of the columns left out.
    """
    order = list(cells)
    key, rest = order[0], order[1:]
    rank = {
        c: PRIORITY.index(c) if c in PRIORITY else len(PRIORITY) + i for i, c in enumerate(rest)
    }
    need = column_width(heads[key], cells[key])
    floor = min(need, max(KEY_MIN, len(heads[key]), int(width * KEY_SHARE)))
    used, kept, wrap = floor, {key}, {}
    for column in sorted(rest, key=rank.__getitem__):
        room = width - used - 1
        if column_width(heads[column], cells[column]) <= room:
            used += column_width(heads[column], cells[column]) + 1
        elif room >= max(WRAP_MIN, len(heads[column])) and any(" " in v for v in cells[column]):
            wrap[column] = room
            used += room + 1
        else:
            break
        kept.add(column)
    room = min(need, floor + width - used)
    chosen = {c: cells[c] for c in order if c in kept}
    chosen[key] = [shorten_middle(v, room) for v in cells[key]]
    return chosen, wrap, [c for c in order if c not in kept]


def layout(
    cells: Mapping[str, list[str]], heads: Mapping[str, str], wrap: Mapping[str, int], color: bool
) -> str:
    """Header and rows, one space between columns; wrapped columns left-aligned."""
    if not cells:
        return ""
    widths = {c: wrap.get(c) or column_width(heads[c], v) for c, v in cells.items()}
    rows = len(next(iter(cells.values())))
    end = str.rstrip if wrap else str  # a wrapped column is padded on the right: trim it
    out = [end(" ".join(_pad(heads[c], widths[c], c in wrap) for c in cells))]
    for i in range(rows):
        pieces = {
            c: (textwrap.wrap(v[i], widths[c], break_on_hyphens=False) or [""])
            if c in wrap
            else [v[i]]
            for c, v in cells.items()
        }
        for k in range(max(map(len, pieces.values()))):
            line = []
            for c, parts in pieces.items():
                text = parts[k] if k < len(parts) else ""
                cell = _pad(text, widths[c], c in wrap)
                line.append(_colour(c, text, cell) if color else cell)
            out.append(end(" ".join(line)))
    return "\n".join(out) + "\n"


def _pad(text: str, width: int, left: bool) -> str:
    return text.ljust(width) if left else text.rjust(width)


def _colour(column: str, text: str, cell: str) -> str:
    """The padded ``cell`` with ``text`` coloured by what it says (phases, warnings)."""
    if column == "phase" or column.startswith("phase_"):
        name = PHASE_COLOURS.get(text)
    elif column in WARNING_COLUMNS:
        name = "yellow" if text else None
    elif column == "why":
        name = "red" if text else None
    else:
        name = None
    if name is None:
        return cell
    return cell.replace(text, ANSI[name] + text + RESET, 1)


def fit_line(line: str, width: int | None) -> str:
    """``line`` plus a newline, wrapped to ``width`` (continuations indented) when given."""
    if width is None or len(line) <= width:
        return line + "\n"
    wrapped = textwrap.wrap(
        line, width, subsequent_indent="  ", break_on_hyphens=False, drop_whitespace=True
    )
    return "\n".join(wrapped or [""]) + "\n"
