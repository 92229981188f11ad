"""Honest progress (issue 14): weighted by each matrix's cost, shown off a terminal too.

The clock and the interval are injected: no test sleeps.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from spectralyzer.cli import main
from spectralyzer.cli import progress as progress_module
from spectralyzer.cli.progress import Progress, eta_text
from spectralyzer.layers import LayerSpec
from spectralyzer.pipeline import cost, run_analysis


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def off_terminal(models: int = 1, quiet: bool = False) -> tuple[Progress, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    shown = Progress(models, quiet=quiet, stream=stream, terminal=False, clock=clock, interval=15)
    return shown, stream, clock


def test_off_a_terminal_one_line_at_most_every_interval():
    shown, stream, clock = off_terminal()
    shown.on_plan(100.0, 4)
    clock.now = 5
    shown.advance(10.0, 1)
    assert stream.getvalue() == ""  # not yet 15 s
    clock.now = 20
    shown.advance(20.0, 2)
    assert stream.getvalue() == "analysed 2/4 matrices, 20% of the work, ETA 80 s\n"
    clock.now = 30
    shown.advance(60.0, 3)  # 10 s after the last line: nothing
    assert stream.getvalue().count("\n") == 1
    clock.now = 36
    shown.advance(90.0, 3)
    assert stream.getvalue().splitlines()[-1] == ("analysed 3/4 matrices, 90% of the work, ETA 4 s")


def test_the_work_not_the_matrix_count_sets_the_share_and_eta():
    """One big matrix is most of the work: after it, 1 of 4 matrices but 90% done."""
    shown, stream, clock = off_terminal()
    shown.on_plan(100.0, 4)
    clock.now = 60
    shown.advance(90.0, 1)
    assert stream.getvalue() == "analysed 1/4 matrices, 90% of the work, ETA 7 s\n"


def test_quiet_prints_nothing():
    shown, stream, clock = off_terminal(quiet=True)
    shown.on_plan(100.0, 4)
    clock.now = 100
    shown.advance(50.0, 2)
    assert stream.getvalue() == ""


def test_several_models_count_together():
    shown, stream, clock = off_terminal(models=2)
    shown.on_plan(100.0, 4)
    clock.now = 20
    shown.advance(100.0, 4)  # the first model done: half of the (estimated) work
    assert stream.getvalue() == "analysed 4/~8 matrices (model 1 of 2), 50% of the work, ETA 20 s\n"
    shown.on_plan(300.0, 6)  # the second model turns out larger
    clock.now = 40
    shown.advance(150.0, 3)
    assert stream.getvalue().splitlines()[-1] == (
        "analysed 7/10 matrices (model 2 of 2), 62% of the work, ETA 24 s"
    )


def test_on_a_terminal_the_bar_moves_by_cost():
    stream = io.StringIO()
    shown = Progress(1, stream=stream, terminal=True, clock=FakeClock())
    shown.on_plan(100.0, 4)
    shown.advance(90.0, 1)
    assert shown.bar.pos / shown.bar.length == pytest.approx(0.9)
    shown.close()


def test_eta_text():
    assert [eta_text(s) for s in (0.2, 45, 359, 3900)] == ["1 s", "45 s", "6 min", "1 h 05 min"]


def test_cost_is_gram_plus_eigensolver_per_slice():
    spec = LayerSpec(
        "w", "conv2d", (16, 8, 3, 3), "float32", N=16, M=8, num_slices=9, view="slices"
    )
    assert cost(spec) == 9 * (16 * 8**2 + 8**3)


@pytest.fixture
def model(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "embed.weight": torch.randn(400, 32, generator=g),
            "enc.0.weight": torch.randn(48, 32, generator=g),
            "enc.1.weight": torch.randn(32, 48, generator=g),
        },
        path,
    )
    return path


def test_the_pipeline_reports_cost_weighted_totals(model):
    plans, steps = [], []
    run_analysis(
        model, on_plan=lambda c, n: plans.append((c, n)), progress=lambda c, n: steps.append((c, n))
    )
    total = (400 * 32**2 + 32**3) + 2 * (48 * 32**2 + 32**3)
    assert plans == [(float(total), 3)]
    assert steps[-1] == (float(total), 3)
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize(
    ("command", "models"),
    [(("analyze",), 1), (("compare", "--labels", "a,b"), 2), (("diff",), 2), (("gate",), 2)],
)
def test_commands_print_progress_lines_off_a_terminal(model, monkeypatch, command, models):
    monkeypatch.setattr(progress_module, "INTERVAL", 0.0)  # a line on every report
    args = [*command, str(model), *([str(model)] * (models - 1))]
    result = CliRunner().invoke(main, args)  # CliRunner's stderr is not a terminal
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("analysed")]
    assert lines, result.stderr
    assert lines[-1].startswith(f"analysed {3 * models}/{3 * models} matrices")
    assert "100% of the work" in lines[-1]
    quiet = CliRunner().invoke(main, [*args, "-q"])
    assert quiet.exit_code == 0 and "analysed" not in quiet.stderr


def test_json_summary_carries_stage_timings(model):
    result = CliRunner().invoke(main, ["analyze", str(model), "--format", "json", "--randomize"])
    assert result.exit_code == 0, result.output
    timings = json.loads(result.stdout)["summary"]["timings"]
    # the CLI caches by default: reading and hashing for the cache is its own stage
    assert list(timings) == ["open", "cache", "load", "eigenvalues", "randomize", "fits", "total"]
    assert all(value >= 0 and round(value, 3) == value for value in timings.values())
    assert timings["total"] >= max(v for k, v in timings.items() if k != "total")
