"""An ESD panel as SVG text, without matplotlib: the report draws one per layer.

The panel shows what :func:`.esd_curves.esd_curves` computes (histogram, randomised
histogram, power-law and Marchenko-Pastur fits, xmin and lambda+, spikes and traps)
on log-log axes, like the matplotlib figure of ``spectralyzer plot``. Writing the
SVG is string formatting: about a millisecond a panel, where drawing and encoding a
PNG with matplotlib took about 0.1 s, more than the whole analysis of a small model
(docs/benchmarks.md).
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from ..escaping import shorten_middle, terminal
from ..fit.traps import ShuffledTop
from .esd_curves import EsdCurves, esd_curves

WIDTH, HEIGHT = 550, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 15, 42, 45  # margins around the plot area
COLOURS = {
    "esd": "#1f77b4",
    "random": "#595959",
    "power": "#000000",
    "mp": "#2ca02c",
    "trap": "#ff7f0e",
    "spike": "#d62728",
}


class _Axes:
    """Log-log coordinates of the plot area."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        (self.x0, self.x1), (self.y0, self.y1) = (np.log10(x_range), np.log10(y_range))

    def x(self, values) -> np.ndarray:
        t = (np.log10(values) - self.x0) / (self.x1 - self.x0)
        return LEFT + t * (WIDTH - LEFT - RIGHT)

    def y(self, values) -> np.ndarray:
        t = (np.log10(values) - self.y0) / (self.y1 - self.y0)
        return HEIGHT - BOTTOM - t * (HEIGHT - TOP - BOTTOM)


def esd_svg(row: pd.Series, evals: np.ndarray, randomized: ShuffledTop | None = None) -> str:
    """The SVG document of one layer's ESD panel (its metrics ``row``)."""
    curves = esd_curves(row, evals, randomized)
    warning = f" [{row['warning']}]" if row["warning"] else ""
    title = shorten_middle(terminal(row["name"]), 80)
    subtitle = f"{row['phase']}, alpha {row['alpha']:.2f}{warning}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="10">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        _text(WIDTH / 2, 14, title, anchor="middle", size=9),
        _text(WIDTH / 2, 27, subtitle, anchor="middle", size=9),
    ]
    if curves is not None:
        parts += _panel(curves)
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="black"/>'
    )
    parts.append(_text(WIDTH / 2, HEIGHT - 8, "eigenvalue of W^T W", anchor="middle"))
    parts.append(
        f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {HEIGHT / 2})">density</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(c: EsdCurves) -> list[str]:
    tops = [c.density.max()] + ([c.randomized.max()] if c.randomized is not None else [])
    if c.power_law is not None:
        tops.append(c.power_law[1].max())
    axes = _Axes((c.bins[0], c.bins[-1]), (c.floor, max(tops) * 2))
    out = _ticks(axes)
    floored = np.maximum(c.density, c.floor)
    out.append(_steps(axes, c.bins, floored, c.floor, fill=COLOURS["esd"]))
    legend = [("ESD", COLOURS["esd"], "box")]
    if c.randomized is not None:
        rand = np.maximum(c.randomized, c.floor)
        out.append(_steps(axes, c.bins, rand, c.floor, stroke=COLOURS["random"]))
        legend.append(("shuffled copy (fitted law)", COLOURS["random"], "line"))
    if c.power_law is not None:
        out.append(_line(axes, *c.power_law, COLOURS["power"], 1.2))
        out.append(_vline(axes, c.xmin, COLOURS["power"], "2,2"))
        legend += [(f"power law, alpha {c.alpha:.2f}", COLOURS["power"], "line")]
        legend += [("xmin", COLOURS["power"], "dots")]
    if c.mp is not None:
        if c.mp[0].size:
            out.append(_line(axes, *_inside(axes, *c.mp), COLOURS["mp"], 1.2))
            legend.append(("Marchenko-Pastur fit", COLOURS["mp"], "line"))
        out.append(_vline(axes, c.lambda_plus, COLOURS["mp"], "5,3"))
        legend.append(("lambda+", COLOURS["mp"], "dashes"))
    base = HEIGHT - BOTTOM
    for x in axes.x(c.traps) if c.traps.size else []:
        out.append(_text(x, base - 14, "x", anchor="middle", colour=COLOURS["trap"], size=11))
    if c.traps.size:
        legend.append((f"{c.traps.size} correlation trap(s)", COLOURS["trap"], "x"))
    for x in axes.x(c.spikes) if c.spikes.size else []:
        out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base - 8}" '
                   f'stroke="{COLOURS["spike"]}"/>')  # fmt: skip
    if c.spikes.size:
        legend.append((f"{c.spikes.size} spikes", COLOURS["spike"], "line"))
    return out + _legend(legend)


def _inside(axes: _Axes, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve within the plot's y range (above it clipped to the top)."""
    keep = y >= 10**axes.y0
    return x[keep], np.minimum(y[keep], 10**axes.y1)


def _steps(axes: _Axes, bins, heights, floor, fill: str = "none", stroke: str = "none") -> str:
    """A histogram as one path: up and across each bin, from and back to the baseline."""
    xs, ys, base = axes.x(bins), axes.y(heights), axes.y(floor)
    points = [f"M{xs[0]:.1f},{base:.1f}"]
    for i, y in enumerate(ys):
        points.append(f"L{xs[i]:.1f},{y:.1f}L{xs[i + 1]:.1f},{y:.1f}")
    points.append(f"L{xs[-1]:.1f},{base:.1f}" + ("Z" if fill != "none" else ""))
    opacity = ' fill-opacity="0.55"' if fill != "none" else ""
    return f'<path d="{"".join(points)}" fill="{fill}"{opacity} stroke="{stroke}"/>'


def _line(axes: _Axes, x: np.ndarray, y: np.ndarray, colour: str, width: float) -> str:
    if not x.size:
        return ""
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(axes.x(x), axes.y(y), strict=True))
    return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{width}"/>'


def _vline(axes: _Axes, x: float, colour: str, dash: str) -> str:
    at = float(axes.x(x))
    if not LEFT <= at <= WIDTH - RIGHT:
        return ""
    return (
        f'<line x1="{at:.1f}" y1="{TOP}" x2="{at:.1f}" y2="{HEIGHT - BOTTOM}" '
        f'stroke="{colour}" stroke-dasharray="{dash}"/>'
    )


def _ticks(axes: _Axes) -> list[str]:
    """At most 6 labelled decades per axis, plain text (``1e-03``)."""
    out = []
    for lo, hi, place in ((axes.x0, axes.x1, "x"), (axes.y0, axes.y1, "y")):
        first, last = math.ceil(lo), math.floor(hi)
        step = max(1, math.ceil((last - first + 1) / 6))
        for k in range(first, last + 1, step):
            label = f"1e{k:+03d}".replace("+", "")
            if place == "x":
                x = float(axes.x(10.0**k))
                out.append(f'<line x1="{x:.1f}" y1="{HEIGHT - BOTTOM}" x2="{x:.1f}" '
                           f'y2="{HEIGHT - BOTTOM + 4}" stroke="black"/>')  # fmt: skip
                out.append(_text(x, HEIGHT - BOTTOM + 15, label, anchor="middle"))
            else:
                y = float(axes.y(10.0**k))
                out.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" '
                           f'stroke="black"/>')  # fmt: skip
                out.append(_text(LEFT - 6, y + 3, label, anchor="end"))
    return out


def _legend(entries: list[tuple[str, str, str]]) -> list[str]:
    """A legend box in the lower left corner, one entry a line."""
    x, line = LEFT + 6, 11
    top = HEIGHT - BOTTOM - 6 - line * len(entries)
    out = [f'<rect x="{x - 3}" y="{top - 9}" width="150" height="{line * len(entries) + 6}" '
           'fill="white" fill-opacity="0.8" stroke="#cccccc"/>']  # fmt: skip
    for i, (label, colour, mark) in enumerate(entries):
        y = top + i * line
        if mark == "box":
            out.append(f'<rect x="{x}" y="{y - 6}" width="14" height="7" fill="{colour}" '
                       'fill-opacity="0.55"/>')  # fmt: skip
        elif mark == "x":
            out.append(_text(x + 7, y + 1, "x", anchor="middle", colour=colour))
        else:
            dash = {"dots": ' stroke-dasharray="2,2"', "dashes": ' stroke-dasharray="5,3"'}
            out.append(f'<line x1="{x}" y1="{y - 3}" x2="{x + 14}" y2="{y - 3}" '
                       f'stroke="{colour}"{dash.get(mark, "")}/>')  # fmt: skip
        out.append(_text(x + 19, y, label, size=8))
    return out


def _text(
    x: float, y: float, text: str, anchor: str = "start", colour: str = "black", size: int = 10
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{colour}" '
        f'font-size="{size}">{html.escape(text)}</text>'
    )
