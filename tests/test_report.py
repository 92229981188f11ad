"""The report folder and the plot command; the HTML is opened in headless Chromium."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from helpers import skip_unless_installed_locally
from spectralyzer.cli import main

pytest.importorskip("matplotlib")
MODEL = Path(__file__).resolve().parents[1] / "data" / "mlp" / "epoch_30.safetensors"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("r") / "report"
    result = CliRunner().invoke(
        main, ["analyze", str(MODEL), "--randomize", "--report", str(folder)]
    )
    assert result.exit_code == 0, result.output
    return folder


def test_report_folder_contents(report):
    assert {p.name for p in report.iterdir()} == {
        "index.html",
        "report.md",
        "figures",
        "layers.csv",
        "summary.json",
        ".spectralyzer-report.json",  # the marker: a later --report may replace this folder
    }
    figures = sorted(p.name for p in (report / "figures").iterdir())
    assert figures == sorted(
        [
            "depth.png",
            "histograms.png",
            "flow.png",  # 0.weight, 2.weight, 4.weight: blocks 0, 2, 4 of the role *.weight
            "esd_0.weight.svg",  # per-layer panels: SVG written without matplotlib
            "esd_2.weight.svg",
            "esd_4.weight.svg",
        ]
    )
    for f in figures:
        data = (report / "figures" / f).read_bytes()
        assert data.startswith(PNG) if f.endswith(".png") else data.startswith(b"<svg")
    assert len(pd.read_csv(report / "layers.csv")) == 3
    assert json.loads((report / "summary.json").read_text())["num_layers"] == 3
    markdown = (report / "report.md").read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", markdown):
        assert (report / link).is_file(), link


def test_html_is_self_contained(report):
    page = (report / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 6
    assert sum(s.startswith("data:image/png;base64,") for s in sources) == 3  # depth, hist, flow
    assert sum(s.startswith("data:image/svg+xml;base64,") for s in sources) == 3  # the layers
    assert "http://" not in page and "https://" not in page


def test_report_refuses_a_folder_that_is_not_a_report(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["analyze", str(MODEL), "--report", str(tmp_path)])
    assert result.exit_code == 2 and "not an earlier report" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_plot_command(tmp_path):
    out = tmp_path / "esd.png"
    result = CliRunner().invoke(main, ["plot", str(MODEL), "--layer", r"^[24]\.", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG)
    none = CliRunner().invoke(main, ["plot", str(MODEL), "--layer", "nothing", "-o", str(out)])
    assert none.exit_code == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def need_chromium() -> str:
    """The browser; skips when it is missing locally, fails when it is missing under CI."""
    skip_unless_installed_locally("Debian's chromium (.ci/setup installs it)", CHROMIUM is not None)
    return CHROMIUM


def test_html_renders_in_headless_chromium(report, tmp_path):
    need_chromium()
    url = (report / "index.html").as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        shot = tmp_path / "page.png"
        subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600", f"--screenshot={shot}", url],
            capture_output=True, timeout=120,
        )  # fmt: skip
    assert 'data-figures-rendered="6"' in dom  # every embedded figure decoded with a size
    assert 'data-table-rows="3"' in dom
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000


SERIES = sorted(MODEL.parent.glob("epoch_*.safetensors"))


def test_compare_report(tmp_path):
    folder = tmp_path / "series"
    args = ["compare", *map(str, SERIES), "--accuracy", str(MODEL.parent / "accuracy.csv")]
    result = CliRunner().invoke(main, [*args, "--report", str(folder)])
    assert result.exit_code == 0, result.output
    figures = {p.name for p in (folder / "figures").iterdir()}
    assert "depth.png" in figures and "accuracy_alpha_weighted.png" in figures
    assert {"alpha_heatmap.png", "role_metrics.png", "model_means.png"} <= figures  # along steps
    assert len(figures) == 1 + 3 + 5  # depth, the run figures, and one scatter per metric
    assert len(pd.read_csv(folder / "models.csv")) == 4
    page = (folder / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert "Kendall" in (folder / "report.md").read_text() or "kendall_tau" in page


def test_gate_report_puts_the_verdict_on_top(tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(MODEL)
    weights["2.weight"] = weights["2.weight"] * 4  # one layer's scale changes: the gate fails
    bad = tmp_path / "bad.safetensors"
    save_file(weights, bad)
    folder = tmp_path / "gate"
    result = CliRunner().invoke(main, ["gate", str(MODEL), str(bad), "--report", str(folder)])
    assert result.exit_code == 1, result.output
    page = (folder / "index.html").read_text()
    assert page.index("FAIL") < page.index("<table")
    assert page.count('<tr class="bad">') == 1
    assert len(pd.read_csv(folder / "diff.csv")) == 3
    chromium = need_chromium()  # the rendering check below is part of this test: no silent bypass
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", (folder / "index.html").as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    assert 'data-figures-rendered="1"' in dom and 'data-table-rows="3"' in dom
