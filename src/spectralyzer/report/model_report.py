"""A model report folder: index.html (self-contained), report.md, figures/, layers.csv, summary.json.

The HTML embeds every figure as a base64 PNG and its own few lines of CSS and
JavaScript (click a column head to sort the table), so the one file opens
offline and can be attached to a pull request.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..pipeline import Analysis
from ..tables import SUMMARY_MEANS, clean_json, display_frame, markdown_table, summary_lines
from .plots import depth_figure, esd_figure, histogram_figure

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
.card{display:inline-block;border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.3em}
.card b{display:block;font-size:1.4em}
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ddd;padding:2px 6px}
th{cursor:pointer;background:#f3f3f3}tr.warn td{background:#fff4e5}
figure{display:inline-block;margin:.4em}img{max-width:100%}
"""
SORT_SCRIPT = """
// for automated checks: how many figures decoded and rendered
window.addEventListener('load', () => {
  const shown = Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.figuresRendered = shown.length;
  document.body.dataset.tableRows = document.querySelectorAll('#layer-table tbody tr').length;
});
document.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[i].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
"""


def write_model_report(analysis: Analysis, folder: str | os.PathLike[str]) -> Path:
    """Write the report of one analysis into ``folder``; returns the index.html path."""
    folder = Path(folder)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    details, summary = analysis.details, analysis.summary
    scale_by_n = "/ N" in summary.get("esd", "")
    images: dict[str, bytes] = {
        "depth.png": _png(depth_figure(details)),
        "histograms.png": _png(histogram_figure(details)),
    }
    layer_images = []
    for _, row in details.iterrows():
        spectra = analysis.spectra.get(row["name"])
        if spectra is None or not spectra.esd.finite:
            continue
        scale = 1.0 / row["N"] if scale_by_n else 1.0
        rand = spectra.randomized.evals * scale if spectra.randomized is not None else None
        name = "esd_" + re.sub(r"[^A-Za-z0-9_.-]", "_", row["name"]) + ".png"
        images[name] = _png(esd_figure(row, spectra.esd.evals * scale, rand))
        layer_images.append((row["name"], name))
    for name, data in images.items():
        (figures / name).write_bytes(data)
    details.assign(shape=details["shape"].map(lambda s: "x".join(map(str, s)))).to_csv(
        folder / "layers.csv", index=False, float_format="%.10g"
    )
    (folder / "summary.json").write_text(json.dumps(clean_json(summary), indent=2) + "\n")
    (folder / "report.md").write_text(_markdown(details, summary, layer_images))
    index = folder / "index.html"
    index.write_text(_html(details, summary, images, layer_images), encoding="utf-8")
    return index


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _markdown(details, summary, layer_images) -> str:
    frame = display_frame(details)
    parts = [
        f"# spectralyzer report: {Path(str(summary.get('model', ''))).name}",
        "",
        *[f"- {line}" for line in summary_lines(summary)],
        "",
        "![alpha and spectral norm along depth](figures/depth.png)",
        "![alpha and alpha-hat histograms](figures/histograms.png)",
        "",
        markdown_table(frame),
        "## Layers",
        "",
        *[f"![{name}](figures/{image})" for name, image in layer_images],
    ]
    return "\n".join(parts) + "\n"


def _html(details, summary, images, layer_images) -> str:
    def img(name: str, alt: str) -> str:
        data = base64.b64encode(images[name]).decode()
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'

    cards = [("layers", summary["num_layers"]), ("skipped", summary["num_skipped"])]
    cards += [(f"mean {k}", f"{summary[k]:.3f}" if summary[k] is not None and np.isfinite(summary[k]) else "n/a")
              for k in SUMMARY_MEANS[:5]]  # fmt: skip
    cards += [("fit failed", summary["num_fit_failed"])]
    frame = display_frame(details)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cls = ' class="warn"' if record.warning else ""
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in record)
        rows.append(f"<tr{cls}>{cells}</tr>")
    title = html.escape(f"spectralyzer report: {Path(str(summary.get('model', ''))).name}")
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(summary))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<section id="summary">{"".join(f'<div class="card">{html.escape(k)}<b>{html.escape(str(v))}</b></div>' for k, v in cards)}
<ul>{lines}</ul></section>
<section id="model-figures"><h2>Along depth</h2>{img("depth.png", "alpha and log spectral norm against depth")}
{img("histograms.png", "histograms of alpha and alpha-hat")}</section>
<section id="layers"><h2>Layers</h2><table id="layer-table"><thead><tr>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>
<section id="esd-figures"><h2>Empirical spectral densities</h2>
{"".join(img(image, f"ESD of {name}") for name, image in layer_images)}</section>
<script>{SORT_SCRIPT}</script>
</body></html>
"""
