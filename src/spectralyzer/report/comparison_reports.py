"""Report folders for a model series (compare) and for a gate verdict (gate)."""

from __future__ import annotations

import html
from pathlib import Path

from ..escaping import markdown as markdown_text
from ..gate_policy import Verdict
from ..layer_diff import Diff
from ..render import csv_text, markdown_table, render
from ..series import Series
from .html import cards_html, figure_html, page, png, table_html
from .plots import delta_figure, metric_accuracy_figure, series_depth_figure
from .run_plots import alpha_heatmap_figure, model_means_figure, role_metrics_figure

#: Figures of the series along training: file name -> caption.
RUN_FIGURES = {
    "alpha_heatmap.png": "alpha per layer (rows, by role) along training (columns)",
    "role_metrics.png": "layer metrics along training, mean per layer role",
    "model_means.png": "model means along training, with the accuracy when given",
}


def write_series_report(series: Series, folder: Path) -> Path:
    """index.html, report.md, models.csv, layers.csv (+ correlations.csv) and figures/."""
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    images = {"depth.png": png(series_depth_figure(series.layers))}
    if len(series.models) > 1:
        images["alpha_heatmap.png"] = png(alpha_heatmap_figure(series.layers))
        images["role_metrics.png"] = png(role_metrics_figure(series.layers))
        images["model_means.png"] = png(model_means_figure(series.models, series.layers))
    if series.correlations is not None:
        for _, row in series.correlations.iterrows():
            images[f"accuracy_{row['metric']}.png"] = png(
                metric_accuracy_figure(series.models, row["metric"], row["kendall_tau"])
            )
        (folder / "correlations.csv").write_text(csv_text(series.correlations), encoding="utf-8")
    for name, data in images.items():
        (figures / name).write_bytes(data)
    (folder / "models.csv").write_text(csv_text(series.models), encoding="utf-8")
    (folder / "layers.csv").write_text(csv_text(series.layers), encoding="utf-8")
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in series.summary_lines())
    sections = [
        f'<section id="models"><h2>Models</h2><ul>{notes}</ul>'
        + table_html(series.models, "models")
        + "</section>",
        '<section id="depth"><h2>alpha along depth</h2>'
        + figure_html(images["depth.png"], "alpha and log spectral norm against depth, every model")
        + "</section>",
    ]
    markdown = [
        "# spectralyzer comparison",
        "",
        *[f"- {markdown_text(n)}" for n in series.summary_lines()],
        "",
    ]
    markdown += [markdown_table(series.models), "![alpha along depth](figures/depth.png)", ""]
    run = [name for name in RUN_FIGURES if name in images]
    if run:
        sections.append(
            '<section id="training"><h2>Along training</h2>'
            + "".join(figure_html(images[n], RUN_FIGURES[n]) for n in run)
            + "</section>"
        )
        markdown += ["## Along training", "", *[f"![{RUN_FIGURES[n]}](figures/{n})" for n in run]]
    if series.correlations is not None:
        scatter = [n for n in images if n.startswith("accuracy_")]
        sections.append(
            '<section id="accuracy"><h2>Metrics against accuracy</h2>'
            + table_html(series.correlations, "correlations")
            + "".join(figure_html(images[n], n[9:-4] + " against accuracy") for n in scatter)
            + "</section>"
        )
        markdown += ["## Metrics against accuracy", "", markdown_table(series.correlations)]
        if series.family_correlations is not None:
            sections.append(
                '<section id="families"><h2>Within each family</h2>'
                + table_html(series.family_correlations, "family-correlations")
                + "</section>"
            )
            markdown += [
                "",
                "### Within each family",
                "",
                markdown_table(series.family_correlations),
            ]
        markdown += [f"![{n}](figures/{n})" for n in scatter]
    (folder / "report.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    index = folder / "index.html"
    index.write_text(page("spectralyzer comparison", sections), encoding="utf-8")
    return index


def write_gate_report(result: Diff, verdict: Verdict, folder: Path) -> Path:
    """index.html (verdict on top, failing layers highlighted), report.md, diff.csv, figures/."""
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    matched = result.matched.reset_index(drop=True)
    image = png(delta_figure(matched, set(verdict.failures)))
    (figures / "deltas.png").write_bytes(image)
    (folder / "diff.csv").write_text(csv_text(result.layers), encoding="utf-8")
    reasons = result.layers["name"].map(lambda n: "; ".join(verdict.failures.get(n, [])))
    table = result.layers.assign(why=reasons)
    word, cls = ("PASS", "pass") if verdict.passed else ("FAIL", "fail")
    cards = [("verdict", word), ("layers checked", len(verdict.checked))]
    cards += [("layers failed", len(verdict.failures)), ("unmatched", len(verdict.unmatched))]
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in verdict.notes)
    sections = [
        f'<section id="verdict" class="{cls}">{cards_html(cards)}<ul>{notes}</ul></section>',
        '<section id="deltas"><h2>Changes per layer</h2>'
        + figure_html(image, "change of log spectral norm and log norm per layer")
        + table_html(table, "diff", ["bad" if r else "" for r in reasons])
        + "</section>",
    ]
    markdown = render(verdict, "markdown") + "\n![changes per layer](figures/deltas.png)\n\n"
    (folder / "report.md").write_text(markdown + markdown_table(table), encoding="utf-8")
    index = folder / "index.html"
    index.write_text(page(f"spectralyzer gate: {word}", sections), encoding="utf-8")
    return index
