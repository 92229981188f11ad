"""Names from files (tensor, shard, model file names) are shown escaped everywhere.

A checkpoint is a file the user did not write: its tensor names must not
colour or retitle the terminal, forge a second ``spectralyzer: error:`` line,
inject formulas into CSV, HTML into Markdown, break the JUnit XML or the
figures, or make two layers share one image file.  JSON stays exact.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from spectralyzer.cli import main

PLAIN = "encoder.layer.0.attention.self.query.weight"
HOSTILE = {
    "colour": "\x1b[31mred\x1b[0m.dense.weight",
    "title": "\x1b]0;owned\x07title.weight",  # OSC: click's ANSI stripping leaves it
    "newline": "ok.weight\nspectralyzer: error: forged line",
    "return": "cr.weight\rspectralyzer: error: overwritten",
    "bidi": "\u202egnp.weight",
    "script": "<script>alert(1)</script>",
    "img": "<img src=x onerror=alert(1)>",
    "formula": '=HYPERLINK("http://x","y")',
    "math": "$\\cmd$",
    "long": "l" * 300,
    "twin_space": "twin a.weight",
    "twin_mark": "twin?a.weight",
}
NAMES = [PLAIN, *HOSTILE.values()]
ONLY_IN_CANDIDATE = "<img src=y onerror=alert(2)>\nspectralyzer: error: unmatched"
# what a terminal must never receive: C0 (except LF between lines), DEL, C1, U+2028/9, bidi
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def weights(names, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (scale * rng.normal(size=(64, 32))).astype(np.float32) for name in names}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    base, candidate = folder / "base.safetensors", folder / "candidate.safetensors"
    save_file(weights(NAMES), str(base))
    save_file(weights(NAMES + [ONLY_IN_CANDIDATE], scale=10.0, seed=1), str(candidate))
    return base, candidate


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def assert_terminal_safe(text: str) -> None:
    """No raw control character and no forged ``spectralyzer: error:`` line."""
    assert UNSAFE.search(text) is None, repr(UNSAFE.search(text).group())
    for line in text.splitlines():  # also splits at \r, \x1c-\x1e, \x85, U+2028/9
        assert not line.startswith("spectralyzer: error:"), line


def assert_markdown_inert(text: str) -> None:
    assert "<script" not in text and "<img" not in text
    assert UNSAFE.search(text) is None


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def assert_csv_neutral(text: str, expected_names=NAMES) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(FORMULA_START) or is_number(cell), cell
            assert UNSAFE.search(cell) is None, cell
    assert len(rows) == len(expected_names)  # every record on one line, none split
    return rows


def test_terminal_table_escapes_control_characters(models):
    result = run("analyze", models[0])
    assert result.exit_code == 0, result.output
    assert_terminal_safe(result.stdout)
    assert_terminal_safe(result.stderr)
    assert "\\x1b[31mred" in result.stdout  # shown, escaped
    assert PLAIN in result.stdout  # ordinary names as they are


def test_csv_neutralises_formulas_and_controls(models):
    result = run("analyze", models[0], "--format", "csv")
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in assert_csv_neutral(result.stdout)]
    assert "'" + HOSTILE["formula"] in names
    assert PLAIN in names


def test_markdown_is_inert_and_json_exact(models):
    result = run("analyze", models[0], "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert_markdown_inert(result.stdout)
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    columns = table[0].count(" | ")
    assert len(table) == len(NAMES) + 2  # header, rule, one line per layer
    assert all(len(re.findall(r"(?<!\\)\|", line)) == columns + 2 for line in table[2:])
    assert "&lt;script&gt;" in result.stdout
    # JSON escapes by itself: the names stay exact there
    data = json.loads(run("analyze", models[0], "--format", "json").stdout)
    assert {layer["name"] for layer in data["layers"]} == set(NAMES)


def checkpoint(folder: Path, names: list[str]) -> Path:
    path = folder / "model.safetensors"
    save_file(weights(names), str(path))
    return path


def esd_images(report: Path) -> list[str]:
    return sorted(p.name for p in (report / "figures").glob("esd_*.svg"))


def test_report_markdown_and_csv_are_inert(tmp_path):
    names = [PLAIN, *(HOSTILE[k] for k in ("colour", "newline", "script", "img", "formula"))]
    result = run("analyze", checkpoint(tmp_path, names), "--report", tmp_path / "report", "-q")
    assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    assert_markdown_inert((report / "report.md").read_text(encoding="utf-8"))
    assert_csv_neutral((report / "layers.csv").read_text(encoding="utf-8"), names)
    assert "<script>alert" not in (report / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["math", "long"])
def test_report_figures_survive_math_and_long_names(tmp_path, kind):
    model = checkpoint(tmp_path, [PLAIN, HOSTILE[kind]])
    result = run("analyze", model, "--report", tmp_path / "report", "-q")
    assert result.exit_code == 0, result.output
    esd = esd_images(tmp_path / "report")
    assert len(esd) == 2 and f"esd_{PLAIN}.svg" in esd  # ordinary names keep their file name
    assert all(len(n) <= 255 and re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in esd)


def test_report_gives_names_with_one_slug_their_own_images(tmp_path):
    names = [PLAIN, HOSTILE["twin_space"], HOSTILE["twin_mark"]]
    result = run("analyze", checkpoint(tmp_path, names), "--report", tmp_path / "report", "-q")
    assert result.exit_code == 0, result.output
    assert len(esd_images(tmp_path / "report")) == 3
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert len(set(re.findall(r"figures/(esd_[^)]+)", markdown))) == 3


def test_diff_outputs_escape_names(models):
    table = run("diff", *models)
    assert table.exit_code == 0, table.output
    assert_terminal_safe(table.stdout)
    markdown = run("diff", *models, "--format", "markdown")
    assert_markdown_inert(markdown.stdout)
    rows = assert_csv_neutral(
        run("diff", *models, "--format", "csv").stdout, NAMES + [ONLY_IN_CANDIDATE]
    )
    assert "'" + HOSTILE["formula"] in [row["name"] for row in rows]


@pytest.fixture(scope="module")
def gate_run(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    summary = folder / "step_summary.md"
    result = run(
        "gate", *models, "--junit", folder / "gate.xml", "--markdown", folder / "gate.md",
        "--report", folder / "report", env={"GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    return result, folder


def test_gate_verdict_lines_escape_names(gate_run):
    result, _ = gate_run
    assert result.exit_code == 1, result.output  # every layer was scaled by 10: FAIL
    assert_terminal_safe(result.stdout)
    assert_terminal_safe(result.stderr)
    assert "\\x1b[31mred" in result.stdout


def test_gate_markdown_and_step_summary_are_inert(gate_run):
    _, folder = gate_run
    for text in (
        (folder / "gate.md").read_text("utf-8"),
        (folder / "step_summary.md").read_text("utf-8"),
    ):
        assert_markdown_inert(text)
        assert "&lt;script&gt;" in text and f"`{PLAIN}`" in text


def test_gate_junit_is_well_formed_xml(gate_run):
    _, folder = gate_run
    cases = ElementTree.parse(folder / "gate.xml").getroot().findall("testcase")
    names = {case.get("name") for case in cases}
    assert len(cases) == len(NAMES)
    escaped = "\\x1b[31mred\\x1b[0m.dense.weight"
    assert {PLAIN, HOSTILE["script"], HOSTILE["formula"], escaped} <= names
    assert not any(UNSAFE.search(name) for name in names)


def test_gate_report_is_inert(gate_run):
    _, folder = gate_run
    assert_markdown_inert((folder / "report" / "report.md").read_text("utf-8"))
    diff_csv = (folder / "report" / "diff.csv").read_text("utf-8")
    assert_csv_neutral(diff_csv, [*NAMES, ONLY_IN_CANDIDATE])


def test_plot_draws_math_and_long_names(models, tmp_path):
    out = tmp_path / "esd.png"
    result = run("plot", models[0], "--layer", r"\$|^l+$|twin|script", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_shard_name_with_control_characters_gives_one_escaped_line(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(weights(["w.weight"]), str(folder / "model-00001-of-00001.safetensors"))
    shard = "x\x1b]0;owned\x07.safetensors\nspectralyzer: error: forged"
    index = {"weight_map": {"w.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run("analyze", folder)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectralyzer: error: ")
    assert UNSAFE.search(result.stderr.rstrip("\n")) is None
    assert "\\x1b]0;owned\\x07" in lines[0]


def test_compare_escapes_model_file_names(tmp_path):
    paths = [tmp_path / "=1+2.safetensors", tmp_path / "<img src=x>.safetensors"]
    for seed, path in enumerate(paths):
        save_file(weights([PLAIN, "b.weight"], seed=seed), str(path))
    csv_out = run("compare", *paths, "--format", "csv")
    assert csv_out.exit_code == 0, csv_out.output
    labels = [row["model"] for row in csv.DictReader(io.StringIO(csv_out.stdout))]
    assert "'=1+2.safetensors" in labels
    assert_markdown_inert(run("compare", *paths, "--format", "markdown").stdout)


# --- the escaping functions one by one: what each stops; ordinary names untouched

ORDINARY = [
    "encoder.layer.0.attention.self.query.weight",
    "embeddings.word_embeddings.weight",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
]
CLEANERS = ["terminal", "csv_cell", "markdown", "xml_text"]


@pytest.fixture
def escaping():
    """The module under test, imported here so the CLI tests above run without it."""
    return importlib.import_module("spectralyzer.escaping")


@pytest.mark.parametrize("clean", CLEANERS)
@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_are_unchanged(escaping, clean, name):
    assert getattr(escaping, clean)(name) == name
    assert escaping.figure_text(name) == name
    assert escaping.markdown_code(name) == f"`{name}`"
    assert escaping.file_names([name], "esd_", ".png") == {name: f"esd_{name}.png"}


def test_terminal_keeps_one_line_and_shows_the_escapes(escaping):
    text = "a\x1b[31mb\nspectralyzer: error: x\rc\u202ed\u2028e\x85f\ud800"
    out = escaping.terminal(text)
    assert out == "a\\x1b[31mb\\nspectralyzer: error: x\\rc\\u202ed\\u2028e\\x85f\\ud800"
    assert len(out.splitlines()) == 1
    out.encode("utf-8")  # a lone surrogate no longer fails to print


def test_csv_cell_prefixes_formulas(escaping):
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert escaping.csv_cell(text).startswith("'")
    assert escaping.csv_cell("a=b") == "a=b"


def test_markdown_escapes_html_pipes_backticks_links_math(escaping):
    out = escaping.markdown("<script>`x`|[a](b)$y$\nz")
    assert "<" not in out and "\n" not in out
    assert re.search(r"(?<!\\)[|`\[\]$]", out) is None
    assert escaping.markdown_code("a`b") == "a\\`b"  # no code span to break out of


def test_xml_text_is_always_well_formed(escaping):
    element = ElementTree.Element("testcase", name=escaping.xml_text("a\x00\x1b\ufffe\ud800b"))
    ElementTree.fromstring(ElementTree.tostring(element, encoding="unicode"))


def test_figure_text_is_not_mathtext_and_is_short(escaping):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title(escaping.figure_text("$\\cmd$ and $\\frac{$"))
    fig.canvas.draw()  # mathtext would raise on \cmd
    plt.close(fig)
    short = escaping.figure_text("x" * 300, width=40)
    assert len(short) == 40 and short.startswith("x") and "…" in short


def test_file_names_are_safe_capped_and_distinct(escaping):
    names = ["a b", "a?b", "a_b", "A_B", "../../etc/passwd", "q" * 300, "q" * 299 + "r"]
    files = escaping.file_names(names, "esd_", ".png")
    assert files["a_b"] == "esd_a_b.png"  # the ordinary name keeps its file name
    assert len({f.lower() for f in files.values()}) == len(names)
    for f in files.values():
        assert re.fullmatch(r"esd_[A-Za-z0-9_.-]+\.png", f) and len(f) <= 120
