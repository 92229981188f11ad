"""``spectralyzer watch`` and the alarms (issue 16): polling, completeness, table, report, exit codes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from helpers import gaussian, pareto_entries
from spectralyzer import analyze
from spectralyzer.alarms import fail_on_kinds, find_alarms
from spectralyzer.cli import main
from spectralyzer.errors import OptionError
from spectralyzer.run_table import COLUMNS
from spectralyzer.watch import WatchSettings, hf_complete, ready, signature

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("a.weight", "b.weight", "c.weight")  # no block numbers: no correlation flow


def _checkpoint(path: Path, seed: int, planted: bool = False) -> None:
    """Three Gaussian 96 x 48 layers (alpha well above 2); ``planted``: b.weight heavy-tailed."""
    layers = {
        n: torch.from_numpy(gaussian(96, 48, seed=seed + i)).float() for i, n in enumerate(NAMES)
    }
    if planted:
        layers["b.weight"] = torch.from_numpy(pareto_entries(96, 48, 0.8, seed=seed)).float()
    save_file(layers, path)


def _details(name, alpha, traps=math.nan, warning="", jump=math.nan, z=math.nan):
    return {
        "name": name,
        "alpha": alpha,
        "num_traps": traps,
        "warning": warning,
        "flow_jump": jump,
        "flow_z": z,
    }


def test_alarm_rules_on_known_tables():
    before = pd.DataFrame(
        [
            _details("x", 2.5, 0),
            _details("y", 1.5, 1),
            _details("z", 3.0, 0, "flow-jump", 1.5, 4.0),
            _details("w", math.nan),
        ]
    )
    after = pd.DataFrame(
        [
            _details("x", 1.9, 0),  # falls below 2: alarm
            _details("y", 1.4, 3),  # already below 2: no alpha alarm; traps 1 -> 3: alarm
            _details("z", 3.0, 0, "flow-jump", 1.5, 4.0),  # jump already there: nothing
            _details("w", 1.8),  # no fit before: alarm
            _details("v", 4.0, 2, "under-trained;flow-jump", -1.2, -3.5),  # new layer
        ]
    )
    found = {(a.kind, a.layer) for a in find_alarms(before, after, "ckpt")}
    assert found == {("alpha", "x"), ("traps", "y"), ("alpha", "w"), ("traps", "v"), ("flow", "v")}
    first = {(a.kind, a.layer) for a in find_alarms(None, before, "ckpt")}
    assert first == {("alpha", "y"), ("traps", "y"), ("flow", "z")}  # compared with nothing
    alarm = next(a for a in find_alarms(before, after, "ckpt") if a.layer == "x")
    assert alarm.line() == "ckpt: x: alpha 1.90 fell below 2 (was 2.50)"
    assert fail_on_kinds("any") == {"alpha", "traps", "flow"} and fail_on_kinds(None) == set()
    with pytest.raises(OptionError, match="fail_on"):
        fail_on_kinds(["alpha", "loss"])


def test_ready_needs_two_equal_polls_and_analyses_a_rewritten_file_again():
    a, b, c = Path("run/ckpt-10"), Path("run/ckpt-9"), Path("run/ckpt-11")
    sig1, sig2 = (("m", 10, 1),), (("m", 20, 2),)
    previous = {a: (sig1, True), b: (sig1, True), c: (sig1, False)}
    current = {a: (sig1, True), b: (sig1, True), c: (sig1, False)}
    assert ready(previous, current, {}) == [b, a]  # natural order; c is not complete
    assert ready(previous, current, {b: sig1}) == [a]  # analysed as it is
    assert ready(previous, {a: (sig2, True)}, {}) == []  # still changing
    assert ready({a: (sig2, True)}, {a: (sig2, True)}, {a: sig1}) == [a]  # rewritten: again
    assert ready({}, current, {}) == []  # first sight


def test_completeness_of_files_and_hugging_face_folders(tmp_path):
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    assert signature(empty)[1] is False
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    (folder / shards[0]).write_bytes(b"x" * 10)
    assert not hf_complete(folder)  # a shard named -of-: the index is still to come
    (folder / shards[1]).write_bytes(b"x" * 10)
    assert not hf_complete(folder)
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "')  # being written
    assert not hf_complete(folder)
    index.write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    assert hf_complete(folder) and signature(folder)[1]
    (folder / shards[1]).unlink()
    assert not hf_complete(folder)
    single = tmp_path / "checkpoint-6"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"x")
    assert hf_complete(single)


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for step in (1, 2, 3, 4):
        _checkpoint(folder / f"step_{step}.safetensors", seed=step, planted=step == 3)
    return folder


def test_watch_once_writes_the_table_and_report_and_fails_on_the_planted_alarm(run, tmp_path):
    table = tmp_path / "run.csv"
    runner = CliRunner()
    args = ["watch", str(run), "--once", "--interval", "0.05", "--table", str(table)]
    result = runner.invoke(main, [*args, "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(table)
    assert list(rows.columns) == list(COLUMNS)
    assert list(rows["step"]) == [1, 2, 3, 4]
    # expected alarms by the rule, from analysing each checkpoint alone
    alphas = [
        analyze(run / f"step_{s}.safetensors")[0].set_index("name")["alpha"] for s in (1, 2, 3, 4)
    ]
    expected = []
    for i, alpha in enumerate(alphas):
        was = alphas[i - 1] if i else None
        expected.append(
            " ".join(
                f"alpha:{n}" for n in NAMES if alpha[n] < 2 and (was is None or not was[n] < 2)
            )
        )
    assert expected == ["", "", "alpha:b.weight", ""]  # the construction: only the planted layer
    assert list(rows["alarms"].fillna("")) == expected
    assert list(rows["alpha"]) == pytest.approx([a.mean() for a in alphas])
    assert "spectralyzer: alarm: step_3.safetensors: b.weight: alpha" in result.stderr
    assert (tmp_path / "report" / "index.html").is_file()
    # --fail-on alpha: exit 1 at the planted checkpoint; step 4 is never analysed
    failing = tmp_path / "fail.jsonl"
    stop = runner.invoke(main, [*args[:-1], str(failing), "--fail-on", "alpha"])
    assert stop.exit_code == 1, stop.output
    lines = [json.loads(line) for line in failing.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and lines[2]["num_alarms"] == 1
    assert "stopping: alpha alarm (--fail-on)" in stop.stderr
    # the same run again appends to the CSV without a second header
    again = runner.invoke(main, [*args, "--max-checkpoints", "2", "-q"])
    assert again.exit_code == 0 and again.stdout == ""
    assert len(pd.read_csv(table)) == 6


def test_watch_refuses_bad_options_and_targets(run, tmp_path):
    runner = CliRunner()
    inside = runner.invoke(main, ["watch", str(run), "--once", "--table", str(run / "t.csv")])
    assert inside.exit_code == 2 and "input folder" in inside.stderr
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    mixed = runner.invoke(
        main, ["watch", str(run), "--once", "--interval", "0.05", "--table", str(other)]
    )
    assert mixed.exit_code == 2 and "other columns" in mixed.stderr
    assert other.read_text() == "a,b\n1,2\n"
    for bad in (["--interval", "0"], ["--max-checkpoints", "0"], ["--fail-on", "loss"]):
        result = runner.invoke(main, ["watch", str(run), "--once", *bad])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (bad, result.output)
    missing = runner.invoke(main, ["watch", str(tmp_path / "nope"), "--once"])
    assert missing.exit_code == 2
    with pytest.raises(OptionError, match="timeout"):
        WatchSettings(timeout=-1)


def test_watch_stops_at_the_timeout_and_skips_what_cannot_be_read(tmp_path):
    from spectralyzer.watch import watch

    run = tmp_path / "run"
    run.mkdir()
    assert watch(run, settings=WatchSettings(interval=0.05, timeout=0.3)).stopped == "timeout"
    _checkpoint(run / "good-1.safetensors", seed=1)
    (run / "broken-2.pt").write_bytes(b"not a checkpoint at all")
    errors = []
    outcome = watch(
        run,
        settings=WatchSettings(interval=0.05, once=True),
        on_error=lambda path, err: errors.append((path.name, str(err))),
    )
    assert [e.label for e in outcome.entries] == ["good-1.safetensors"]
    assert [name for name, _ in errors] == ["broken-2.pt"] and "broken-2.pt" in errors[0][1]
    with pytest.raises(OptionError, match="randomize"):
        watch(run, settings=WatchSettings(once=True, fail_on=("traps",)))


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "spectralyzer.cli", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_watch_follows_a_run_and_waits_for_sharded_folders_to_complete(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    table = tmp_path / "t.jsonl"
    watcher = _spawn(
        str(run),
        "--interval",
        "0.2",
        "--max-checkpoints",
        "2",
        "--timeout",
        "120",
        "--table",
        str(table),
    )

    def train() -> None:
        time.sleep(0.5)
        _checkpoint(run / "checkpoint-900.safetensors", seed=9)
        sharded = run / "checkpoint-1000"
        sharded.mkdir()
        weights = {
            f"{n}": torch.from_numpy(gaussian(96, 48, seed=i)).float() for i, n in enumerate(NAMES)
        }
        save_file({"a.weight": weights["a.weight"]}, sharded / "model-00001-of-00002.safetensors")
        time.sleep(1.5)  # several polls with one shard only: not complete
        save_file({k: weights[k] for k in NAMES[1:]}, sharded / "model-00002-of-00002.safetensors")
        time.sleep(0.5)
        weight_map = {"a.weight": "model-00001-of-00002.safetensors"}
        weight_map |= {k: "model-00002-of-00002.safetensors" for k in NAMES[1:]}
        (sharded / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": weight_map})
        )

    writer = threading.Thread(target=train)
    writer.start()
    try:
        out, err = watcher.communicate(timeout=150)
    finally:
        writer.join()
        watcher.kill()
    assert watcher.returncode == 0, err
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [(r["model"], r["step"], r["num_layers"]) for r in rows] == [
        ("checkpoint-900.safetensors", 900, 3),
        ("checkpoint-1000", 1000, 3),  # all three layers: read only once complete
    ]
    assert out.count("\n") == 2


def test_sigterm_ends_the_watch_with_143_and_keeps_the_rows(run, tmp_path):
    table = tmp_path / "t.csv"
    watcher = _spawn(str(run), "--interval", "0.2", "--table", str(table), "--timeout", "120")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (table.exists() and table.stat().st_size):
            time.sleep(0.1)
        assert table.exists(), "the watch never wrote a row"
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("spectralyzer: error: terminated")
    rows = pd.read_csv(table)
    assert len(rows) >= 1 and np.isfinite(rows["alpha"]).all()
