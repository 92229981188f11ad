"""A model report folder: index.html (self-contained), report.md, figures/, layers.csv, summary.json.

The HTML embeds every figure as a base64 PNG and its own few lines of CSS and
JavaScript (click a column head to sort the table), so the one file opens
offline and can be attached to a pull request.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from ..escaping import file_names, markdown, terminal
from ..pipeline import Analysis
from ..render import json_text, markdown_table, render, shown_frame
from ..tables import SUMMARY_MEANS
from .html import cards_html, figure_html, page, png, table_html
from .panels import esd_panels
from .plots import depth_figure, flow_figure, histogram_figure
from .svg import esd_svg


def write_model_report(analysis: Analysis, folder: str | os.PathLike[str]) -> Path:
    """Write the report of one analysis into ``folder``; returns the index.html path."""
    folder = Path(folder)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    details, summary = analysis.details, analysis.summary
    images: dict[str, bytes] = {
        "depth.png": png(depth_figure(details)),
        "histograms.png": png(histogram_figure(details)),
    }
    flow = flow_figure(details)
    if flow is not None:
        images["flow.png"] = png(flow)
    layer_images = []
    # one SVG per layer, written without matplotlib (docs/benchmarks.md: PNGs cost more
    # than the analysis of a small model)
    image_names = file_names(details["name"], prefix="esd_", suffix=".svg")
    for row, evals, rand in esd_panels(analysis):
        name = image_names[row["name"]]
        images[name] = esd_svg(row, evals, rand).encode()
        layer_images.append((row["name"], name))
    for name, data in images.items():
        (figures / name).write_bytes(data)
    (folder / "layers.csv").write_text(render(analysis, "csv"), encoding="utf-8")
    (folder / "summary.json").write_text(json_text(summary))
    frame = shown_frame(analysis.tables()["layers"])
    lines = analysis.summary_lines()
    (folder / "report.md").write_text(
        _markdown(frame, summary, lines, layer_images, images), encoding="utf-8"
    )
    index = folder / "index.html"
    index.write_text(_html(frame, summary, lines, images, layer_images), encoding="utf-8")
    return index


def _markdown(frame, summary, lines, layer_images, figures) -> str:
    """report.md; ``figures`` are the names of the model-level figures written.

    Names from the checkpoint are Markdown-escaped (:func:`~spectralyzer.escaping.markdown`).
    """
    parts = [
        f"# spectralyzer report: {markdown(Path(str(summary.get('model', ''))).name)}",
        "",
        *[f"- {markdown(line)}" for line in lines],
        "",
        "![alpha and spectral norm along depth](figures/depth.png)",
        "![alpha and alpha-hat histograms](figures/histograms.png)",
        *(["![correlation flow](figures/flow.png)"] if "flow.png" in figures else []),
        "",
        markdown_table(frame),
        "## Layers",
        "",
        *[f"![{markdown(name)}](figures/{image})" for name, image in layer_images],
    ]
    return "\n".join(parts) + "\n"


def _html(frame, summary, summary_lines, images, layer_images) -> str:
    cards = [("layers", summary["num_layers"]), ("skipped", summary["num_skipped"])]
    cards += [(f"mean {k}", _number(summary[k])) for k in SUMMARY_MEANS[:5]]
    cards += [("fit failed", summary["num_fit_failed"])]
    lines = "".join(f"<li>{html.escape(terminal(line))}</li>" for line in summary_lines)
    return page(
        f"spectralyzer report: {Path(str(summary.get('model', ''))).name}",
        [
            f'<section id="summary">{cards_html(cards)}<ul>{lines}</ul></section>',
            '<section id="model-figures"><h2>Along depth</h2>'
            + figure_html(images["depth.png"], "alpha and log spectral norm against depth")
            + figure_html(images["histograms.png"], "histograms of alpha and alpha-hat")
            + (
                figure_html(images["flow.png"], "correlation flow: alpha against block, per role")
                if "flow.png" in images
                else ""
            )
            + "</section>",
            '<section id="layers"><h2>Layers</h2>'
            + table_html(frame, "layer-table", ["warn" if w else "" for w in frame["warning"]])
            + "</section>",
            '<section id="esd-figures"><h2>Empirical spectral densities</h2>'
            + "".join(figure_html(images[image], f"ESD of {name}") for name, image in layer_images)
            + "</section>",
        ],
    )


def _number(value) -> str:
    return f"{value:.3f}" if value is not None and np.isfinite(value) else "n/a"
