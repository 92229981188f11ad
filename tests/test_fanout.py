"""--workers: the same tables as the serial run, retries, failures reported, progress counted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import spectralyzer.fanout as fanout_module
from fanout_support import SHAPES, flaky, make_models, without_timings
from spectralyzer.cli import main
from spectralyzer.errors import SpectralyzerError
from spectralyzer.fanout import FanOut, split
from spectralyzer.gate_policy import gate
from spectralyzer.pipeline import cost, make_options, run_analysis
from spectralyzer.render import render
from spectralyzer.series import compare
from spectralyzer.workers import Failure, InlinePool, LocalPool, cores, threads_per_worker

OPTIONS = make_options(threads=1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool():
    """Two worker processes for the whole module (starting them is the slow part)."""
    workers = LocalPool(2, threads=1)
    yield workers
    workers.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"), 4)


def document(result) -> dict:
    return without_timings(json.loads(render(result, "json")))


class Recorder:
    """The pipeline's progress callbacks, recorded."""

    def __init__(self) -> None:
        self.plans: list[tuple[float, int]] = []
        self.steps: list[tuple[float, int]] = []

    def on_plan(self, total: float, count: int) -> None:
        self.plans.append((total, count))

    def progress(self, done: float, count: int) -> None:
        self.steps.append((done, count))


@pytest.mark.parametrize("randomize", [False, True])
def test_analyze_on_two_workers_gives_the_serial_document(pool, models, randomize):
    options = make_options(threads=1, randomize=randomize, seed=5)
    serial = run_analysis(models[1], options)
    shown = Recorder()
    fanned = run_analysis(
        models[1],
        options,
        on_plan=shown.on_plan,
        progress=shown.progress,
        spectra=FanOut(pool).spectra,
    )
    assert document(fanned) == document(serial)
    assert "workers" in fanned.timings  # the ESDs were computed on the pool
    total = sum(cost(layer.spec) for layer in serial.spectra.values())
    assert shown.plans == [(total, len(SHAPES))]
    assert shown.steps[-1] == (pytest.approx(total), len(SHAPES))  # counted across workers
    assert [count for _, count in shown.steps] == sorted(count for _, count in shown.steps)


def test_analyze_of_minilm_on_two_workers_gives_the_serial_document(pool, minilm_path):
    serial = run_analysis(minilm_path, OPTIONS)
    fanned = run_analysis(minilm_path, OPTIONS, spectra=FanOut(pool).spectra)
    assert document(fanned) == document(serial)


def test_units_share_the_work_out_and_keep_every_layer(models):
    from spectralyzer.io import open_checkpoint
    from spectralyzer.layers import plan

    with open_checkpoint(models[0]) as checkpoint:
        specs, _ = plan(checkpoint.tensors(), OPTIONS.selection)
    units = split(specs * 8, workers=2)  # 32 layers
    assert sorted(s.name for unit in units for s in unit) == sorted(s.name for s in specs * 8)
    assert 4 <= len(units) <= 2 * 4 + 1
    assert all(len({(s.N, s.M) for s in unit}) <= 2 for unit in units)


def test_compare_on_two_workers_gives_the_serial_document(pool, models):
    serial = compare(models, options=OPTIONS)
    shown = Recorder()
    fanned = compare(
        models,
        options=OPTIONS,
        on_plan=shown.on_plan,
        progress=shown.progress,
        runner=FanOut(pool).runner,
    )
    assert without_timings(fanned.document()) == without_timings(serial.document())
    per_model = sorted(
        (sum(cost(layer.spec) for layer in run_analysis(m, OPTIONS).spectra.values()), len(SHAPES))
        for m in models
    )
    assert sorted(shown.plans) == per_model  # each model counted once, whichever worker ran it
    assert sorted(shown.steps) == per_model


def test_gate_on_two_workers_gives_the_serial_verdict(pool, models):
    serial = gate(models[0], models[2], options=OPTIONS)
    fanned = gate(models[0], models[2], options=OPTIONS, runner=FanOut(pool).strict_runner)
    assert document(fanned) == document(serial)


def test_the_pool_retries_a_unit_once_then_reports_it(pool, tmp_path):
    modes = ["fine", "once", "always", "fine"]
    finished: list[int] = []
    items = [(str(tmp_path), i, mode) for i, mode in enumerate(modes)]
    results = pool.run(
        flaky, items, [f"unit {i}" for i in range(4)], lambda i, _: finished.append(i)
    )
    assert results[:2] == [0, 10] and results[3] == 30
    assert isinstance(results[2], Failure)
    assert results[2].unit == "unit 2"
    assert results[2].error == "ValueError: unit 2 failed on attempt 2"
    attempts = sorted(p.name for p in tmp_path.iterdir())
    assert attempts == ["0-1", "1-1", "1-2", "2-1", "2-2", "3-1"]
    assert sorted(finished) == [0, 1, 2, 3]  # each unit reported once, when it ended


class LosingPool(InlinePool):
    """In this process, but the listed submissions of an item (``{index: [1, 2, ...]}``)
    lose their worker, as a local pool's units in flight do when another unit's worker dies."""

    def __init__(self, losing: dict[int, list[int]]) -> None:
        self.losing, self.submitted, self.gone = losing, Counter(), set()

    def submit(self, fn, item):
        index = item[1]
        self.submitted[index] += 1
        if self.submitted[index] not in self.losing.get(index, ()):
            return super().submit(fn, item)
        handle = LostAttempt()
        self.gone.add(handle)
        return handle

    def lost(self, handle) -> bool:
        return handle in self.gone


class LostAttempt:
    value, error = None, "BrokenProcessPool: a worker died"


def test_an_attempt_that_lost_its_worker_is_not_counted_against_the_unit(tmp_path):
    """Unit 0 fails once and its retry is lost: it gets its own second attempt. Unit 1
    fails every time: two failures of its own, whatever is lost between. Unit 2 loses its
    worker twice: reported, not retried for ever."""
    pool = LosingPool({0: [2], 1: [2], 2: [1, 2]})
    items = [(str(tmp_path), i, mode) for i, mode in enumerate(["once", "always", "fine"])]
    results = pool.run(flaky, items, ["unit 0", "unit 1", "unit 2"])
    assert results[0] == 0
    assert isinstance(results[1], Failure)
    assert results[1].error == "ValueError: unit 1 failed on attempt 2"
    assert isinstance(results[2], Failure) and results[2].error.startswith("BrokenProcessPool")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0-1", "0-2", "1-1", "1-2"]


def test_a_unit_whose_worker_dies_is_retried_in_a_fresh_pool(pool, tmp_path):
    """A worker that exits breaks the whole process pool: the unit is retried in a fresh
    one and succeeds. A unit in flight beside it when it died is retried too (whether one
    was is a race, so its attempts are not pinned here; the rule is tested above)."""
    items = [(str(tmp_path), i, mode) for i, mode in enumerate(["die", "fine", "fine"])]
    assert pool.run(flaky, items, [f"unit {i}" for i in range(3)]) == [0, 10, 20]
    attempts = {p.name for p in tmp_path.iterdir()}
    assert {"0-1", "0-2", "1-1", "2-1"} <= attempts <= {"0-1", "0-2", "1-1", "1-2", "2-1", "2-2"}


def test_a_failed_analyze_unit_is_listed_as_skipped_and_the_rest_finish(models, monkeypatch):
    real = fanout_module.layer_spectra
    attempts: list[int] = []

    def breaks_on_b(job):
        if any(spec.name == "b.weight" for spec in job.specs):
            attempts.append(1)
            raise RuntimeError("worker lost")
        return real(job)

    monkeypatch.setattr(fanout_module, "layer_spectra", breaks_on_b)
    fan = FanOut(InlinePool())
    result = run_analysis(models[0], OPTIONS, spectra=fan.spectra)
    serial = run_analysis(models[0], OPTIONS)
    assert len(attempts) == 2  # retried once
    (failed,) = [s for s in result.skipped if s.name == "b.weight"]
    assert "failed twice on a worker (RuntimeError: worker lost)" in failed.reason
    assert result.summary["num_skipped"] == serial.summary["num_skipped"] + 1
    others = serial.details[serial.details["name"] != "b.weight"].reset_index(drop=True)
    assert result.details.drop(columns="correlation_flow", errors="ignore").equals(
        others.drop(columns="correlation_flow", errors="ignore")
    )
    with pytest.raises(SpectralyzerError, match=r"1 unit\(s\) not analysed after a retry"):
        fan.check()


def test_diff_needs_both_models_and_says_which_failed(models, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(models[1].read_bytes()[:200])
    fan = FanOut(InlinePool())
    with pytest.raises(SpectralyzerError, match="broken.safetensors: InputError"):
        gate(models[0], broken, options=OPTIONS, runner=fan.strict_runner)


def test_cli_compare_with_a_broken_checkpoint_writes_the_rest_and_exits_2(models, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(models[1].read_bytes()[:200])
    out = tmp_path / "out.json"
    args = ["compare", str(models[0]), str(broken), str(models[2]), "-q", "--threads", "1"]
    args += ["--format", "json"]
    run = subprocess.run(
        [sys.executable, "-m", "spectralyzer.cli", *args, "--workers", "2", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectralyzer: error: 1 unit(s) not analysed")
    assert "broken.safetensors" in lines[0]
    written = json.loads(out.read_text())
    expected = compare([models[0], models[2]], options=OPTIONS).document()
    assert [m["model"] for m in written["models"]] == [m["model"] for m in expected["models"]]
    assert without_timings(written)["layers"] == without_timings(expected)["layers"]
    assert any("broken.safetensors was not analysed" in note for note in written["notes"])


def test_ray_without_the_extra_is_one_line_naming_it(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = CliRunner().invoke(main, ["analyze", str(models[0]), "--ray", "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "spectralyzer: error: --ray needs Ray, an optional extra: pip install 'spectralyzer[ray]'"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be from 1 to"),
        (["--ray", "other.safetensors"], "is not a Ray address"),
    ],
)
def test_bad_fanout_options_exit_2_naming_the_flag(models, args, message):
    result = CliRunner().invoke(main, ["compare", str(models[0]), *args, "-q"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_threads_per_worker_share_the_cores():
    assert threads_per_worker(1) == cores()
    assert threads_per_worker(2 * cores()) == 1
    assert threads_per_worker(2, threads=3) == 3


def test_ray_init_leaves_the_signal_handlers_as_they_were():
    """ray.init installs a SIGTERM handler that exits at once (code 15, not 143, no flag);
    the runner puts the run's handlers back around it."""
    import signal

    from spectralyzer.ray_runner import _handlers_kept

    def mine(signum, frame):  # pragma: no cover - never delivered
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with _handlers_kept():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does, in effect
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
