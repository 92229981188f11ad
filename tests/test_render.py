"""The one output layer: every result in every format, and a terminal table people can read."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import gaussian, pareto_entries
from spectralyzer.errors import OptionError
from spectralyzer.gate_policy import Policy, evaluate
from spectralyzer.layer_diff import diff
from spectralyzer.pipeline import run_analysis
from spectralyzer.render import FORMATS, render
from spectralyzer.render_table import ANSI, RESET, terminal_view
from spectralyzer.series import compare
from spectralyzer.tables import TABLE_COLUMNS

WIDTHS = (60, 80, 110, 200)
MLP = sorted((Path(__file__).resolve().parents[1] / "data" / "mlp").glob("epoch_*.safetensors"))
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return run_analysis(minilm_path)


def encoder_weights(seed=0, scale=1.0):
    """Names that share ``encoder.layer.`` and ``.weight``, as in a transformer."""
    names = [f"encoder.layer.{i}.attention.self.{p}.weight" for i in range(2) for p in "qkv"]
    return {
        n: torch.as_tensor(
            pareto_entries(96, 64, mu=2.5, seed=seed + i) * scale, dtype=torch.float32
        )
        for i, n in enumerate(names)
    }


@pytest.fixture(scope="module")
def encoder():
    return run_analysis(encoder_weights())


@dataclass
class ProbeLike:
    """A result with several tables, as the probe's (curvature, batch size, per layer)."""

    def document(self):
        return {"curvature": {"top": [3.0, float("nan")]}, "per_layer": [{"name": "a"}]}

    def tables(self):
        return {
            "curvature": pd.DataFrame({"matrix": ["hessian", "ggn"], "lambda_1": [3.0, 2.5]}),
            "batch-size": pd.DataFrame({"batch_size": [16, 32], "lr_max": [0.1, 0.2]}),
            "per-layer": pd.DataFrame({"name": ["a.weight", "b.weight"], "alpha": [2.5, 3.5]}),
        }

    def summary_lines(self):
        return ["model in eval mode", "probe done"]


def lines_of(text):
    return text.splitlines()


def first_table(text):
    """The header and rows of the first table (notes above it left out)."""
    lines = lines_of(text.split("\n\n")[0])
    start = next(i for i, line in enumerate(lines) if line.split()[0] == "name")
    return lines[start], lines[start + 1 :]


@pytest.mark.parametrize("width", WIDTHS)
def test_fitted_table_fits_the_terminal(minilm, width):
    text = render(minilm, "table", width=width)
    assert max(map(len, lines_of(text))) <= width
    header, rows = first_table(text)
    assert len(rows) == len(minilm.details)  # every layer, one line each
    assert {"name", "phase", "alpha", "alpha_weighted"} <= set(header.split())  # first priorities


def test_piped_table_is_plain_and_complete(minilm):
    text = render(minilm, "table")
    header = lines_of(text)[0].split()
    assert header == [c for c in TABLE_COLUMNS if c not in ("num_traps", "tail_law")]
    for name in minilm.details["name"]:
        assert re.search(rf"^ *{re.escape(name)} ", text, re.M)
    assert "…" not in text and "names below" not in text and "not shown" not in text
    assert "\x1b" not in text
    assert max(map(len, lines_of(text))) > 110  # nothing was cut to fit


def test_names_lose_their_common_prefix_and_suffix_on_a_narrow_terminal(encoder):
    text = render(encoder, "table", width=60)
    assert "names below start with encoder.layer. and end with .weight" in text
    rows = [line.split()[0] for line in first_table(text)[1]]
    assert rows == [f"{i}.attention.self.{p}" for i in range(2) for p in "kqv"]  # natural order
    assert max(map(len, lines_of(text))) <= 60
    wide = render(encoder, "table", width=200)  # fits as it is: nothing shortened
    assert wide == render(encoder, "table")
    assert "encoder.layer.0.attention.self.q.weight" in wide


def test_columns_pick_the_table_and_unknown_ones_are_named(minilm):
    text = render(minilm, "table", columns=["alpha", "name"], width=60)
    header = [line for line in lines_of(text) if "alpha" in line][0]
    assert header.split() == ["alpha", "name"]
    csv_text = render(minilm, "csv", columns=["name", "xmin"])  # a column people do not see
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert list(rows[0]) == ["name", "xmin"] and len(rows) == len(minilm.details)
    assert "| alpha | name |" in render(minilm, "markdown", columns=["alpha", "name"])
    with pytest.raises(OptionError, match="columns: unknown column.*'alpah'"):
        render(minilm, "table", columns=["name", "alpah"])
    with pytest.raises(OptionError, match="columns"):
        render(minilm, "json", columns=["name"])
    with pytest.raises(OptionError, match="format"):
        render(minilm, "yaml")


def test_colour_only_when_asked(minilm):
    plain = render(minilm, "table", width=110)
    coloured = render(minilm, "table", width=110, color=True)
    assert "\x1b" not in plain and "\x1b" not in render(minilm, "markdown")
    assert f"{ANSI['green']}heavy-tailed{RESET}" in coloured
    assert f"{ANSI['yellow']}over-trained{RESET}" in coloured
    assert SGR.sub("", coloured) == plain  # colour changes no character people read


def test_colour_never_lets_a_name_through_unescaped():
    weights = {"\x1b[31mred.weight": torch.as_tensor(gaussian(64, 32, seed=1), dtype=torch.float32)}
    weights["plain.weight"] = torch.as_tensor(gaussian(64, 32, seed=2), dtype=torch.float32)
    text = render(run_analysis(weights), "table", width=80, color=True)
    assert "\\x1b[31mred" in text
    assert set(SGR.findall(text)) <= {*ANSI.values(), RESET}
    assert "\x1b[31mred" not in text


def test_terminal_view_follows_the_stream_and_no_color():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert terminal_view(io.StringIO(), {}) == {"width": None, "color": False}
    assert terminal_view(Tty(), {})["color"] is True
    assert isinstance(terminal_view(Tty(), {})["width"], int)
    assert terminal_view(Tty(), {"NO_COLOR": "1"})["color"] is False


@pytest.fixture(scope="module")
def results(encoder):
    base = encoder_weights()
    candidate = {**base, "encoder.layer.0.attention.self.q.weight": base[next(iter(base))] * 20}
    difference = diff(base, candidate)
    return {
        "analysis": encoder,
        "series": compare(
            MLP, accuracy={p.name: a for p, a in zip(MLP, (0.6, 0.7, 0.8, 0.9), strict=True)}
        ),
        "diff": difference,
        "verdict": evaluate(difference, Policy()),
        "probe": ProbeLike(),
    }


@pytest.mark.parametrize("kind", ["analysis", "series", "diff", "verdict", "probe"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_result_renders_in_every_format(results, kind, fmt):
    result = results[kind]
    tables = result.tables()
    main = next(iter(tables.values()))
    text = render(result, fmt)
    if fmt == "json":
        assert "NaN" not in text and set(json.loads(text)) == set(result.document())
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(main) and list(rows[0]) == [str(c) for c in main.columns]
    elif fmt == "markdown":
        rules = sum(line.startswith("|---|") for line in lines_of(text))
        assert rules == sum(1 for t in tables.values() if len(t))
        for line in result.summary_lines():
            assert f"- {line.split(':')[0]}" in text
    else:
        for name, frame in list(tables.items())[1:]:
            assert (f"{name}:" in text) == bool(len(frame))
        assert text.rstrip("\n").endswith(result.summary_lines()[-1])
    for width in WIDTHS if fmt == "table" else ():
        assert max(map(len, lines_of(render(result, fmt, width=width)))) <= width


def test_diff_json_carries_both_summaries(results):
    document = json.loads(render(results["diff"], "json"))
    assert set(document) == {"layers", "base_summary", "candidate_summary"}
    assert document["base_summary"]["num_layers"] == 6
    assert document["candidate_summary"]["num_layers"] == 6
    assert {row["name"] for row in document["layers"]} == set(encoder_weights())


def test_gate_verdict_as_json_and_markdown(results):
    verdict = results["verdict"]
    assert not verdict.passed
    document = json.loads(render(verdict, "json"))
    assert document["passed"] is False and list(document["failures"]) == list(verdict.failures)
    markdown = render(verdict, "markdown")
    assert "| `encoder.layer.0.attention.self.q.weight` |" in markdown
    assert "- spectralyzer gate: FAIL (1 of 6 layers failed)" in markdown
