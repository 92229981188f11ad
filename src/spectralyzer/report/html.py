"""Pieces of a self-contained HTML page: embedded figures, sortable tables, cards.

Every page carries its own CSS and a few lines of JavaScript (click a column
head to sort; after load, ``body`` records how many figures decoded and how
many table rows exist, for automated checks), and references nothing outside
itself, so one file opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from .. import interrupts
from ..render import format_floats

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
.card{display:inline-block;border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.3em}
.card b{display:block;font-size:1.4em}.pass{color:#176f2c}.fail{color:#b00020}
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ddd;padding:2px 6px}
th{cursor:pointer;background:#f3f3f3}tr.warn td{background:#fff4e5}tr.bad td{background:#fde2e4}
figure{display:inline-block;margin:.4em}img{max-width:100%}
"""
SCRIPT = """
document.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[i].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
window.addEventListener('load', () => {
  const shown = Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.figuresRendered = shown.length;
  document.body.dataset.tableRows = document.querySelectorAll('table tbody tr').length;
});
"""


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    interrupts.check()  # a report of many layers takes a while: stop between figures
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def figure_html(data: bytes, alt: str) -> str:
    """A PNG or SVG figure, embedded (the page stays one self-contained file)."""
    mime = "image/svg+xml" if data.lstrip().startswith(b"<svg") else "image/png"
    encoded = base64.b64encode(data).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}"></figure>'


def table_html(frame: pd.DataFrame, table_id: str, row_classes: Sequence[str] | None = None) -> str:
    """A sortable table; ``row_classes`` (e.g. "warn", "bad") colour rows."""
    frame = format_floats(frame)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    classes = row_classes or [""] * len(frame)
    rows = []
    for record, cls in zip(frame.itertuples(index=False), classes, strict=True):
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in record)
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def cards_html(cards: Sequence[tuple[str, object]]) -> str:
    return "".join(
        f'<div class="card">{html.escape(k)}<b>{html.escape(str(v))}</b></div>' for k, v in cards
    )


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document."""
    title = html.escape(title)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n<h1>{title}</h1>\n"
        + "\n".join(sections)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
