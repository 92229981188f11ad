"""``spectralyzer.Monitor`` (issue 16): the training-run alarms from inside a plain PyTorch loop."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import spectralyzer
from helpers import pareto_entries
from spectralyzer import AlarmError, AnalysisOptions, Monitor, OptionError
from spectralyzer.run_table import COLUMNS

PLANT_AT = 10


def _train(
    monitor: Monitor, steps: int = 16, plant_at: int | None = PLANT_AT
) -> list[tuple[int, list]]:
    """A tiny regression loop; at ``plant_at`` the middle layer gets heavy-tailed weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 32), torch.randn(128, 10)
    rung = []
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == plant_at:
            with torch.no_grad():
                model[2].weight.copy_(torch.from_numpy(pareto_entries(64, 64, 0.8, seed=1)) * 0.01)
        alarms = monitor.step(model, step)
        if alarms:
            rung.append((step, alarms))
    return rung


def test_monitor_finds_the_planted_alarm_in_a_training_loop(tmp_path):
    table = tmp_path / "run.csv"
    monitor = Monitor(every=5, table=table)
    rung = _train(monitor)
    assert [e.step for e in monitor.entries] == [0, 5, 10, 15]  # every 5th step, 0 included
    # 0/2/4.weight form a stack ("*.weight"): the planted layer also breaks the correlation flow
    flow = [
        "flow-jump" in e.details.set_index("name")["warning"]["2.weight"] for e in monitor.entries
    ]
    assert flow == [False, False, True, True]  # rings once, when it starts
    assert [(step, [(a.kind, a.layer) for a in alarms]) for step, alarms in rung] == [
        (PLANT_AT, [("alpha", "2.weight"), ("flow", "2.weight")])
    ]
    # the alarm agrees with analysing the planted weights alone
    alpha = monitor.entries[2].details.set_index("name")["alpha"]
    assert (
        alpha["2.weight"] < 2 <= monitor.entries[1].details.set_index("name")["alpha"]["2.weight"]
    )
    assert (
        rung[0][1][0].line().startswith(f"step {PLANT_AT}: 2.weight: alpha {alpha['2.weight']:.2f}")
    )
    rows = pd.read_csv(table)
    assert list(rows.columns) == list(COLUMNS) and list(rows["step"]) == [0, 5, 10, 15]
    assert list(rows["num_alarms"]) == [0, 0, 2, 0]
    series = monitor.series()
    assert list(series.models.sort_values("step")["alpha"]) == pytest.approx(
        [e.summary["alpha"] for e in monitor.entries]
    )


def test_fail_on_raises_at_the_planted_step_and_stops_the_loop():
    monitor = Monitor(every=5, fail_on="alpha")
    with pytest.raises(AlarmError) as caught:
        _train(monitor)
    assert [(a.kind, a.layer) for a in caught.value.alarms] == [("alpha", "2.weight")]
    assert monitor.entries[-1].step == PLANT_AT  # nothing analysed after the alarm
    with pytest.raises(OptionError, match="randomize"):
        Monitor(every=5, fail_on="traps")  # traps are not counted without randomised copies
    # with randomised copies the planted layer's outsized entries are correlation traps too
    traps = Monitor(every=5, fail_on="traps", options=AnalysisOptions(randomize=True))
    with pytest.raises(AlarmError) as caught:
        _train(traps)
    counts = [e.details.set_index("name")["num_traps"]["2.weight"] for e in traps.entries]
    assert counts[-1] > 0 and counts[:-1] == [0, 0]
    assert [(a.kind, a.layer) for a in caught.value.alarms] == [("traps", "2.weight")]
    assert caught.value.alarms[0].message == f"correlation traps 0 -> {int(counts[-1])}"


def test_monitor_checks_its_settings_and_skips_off_steps():
    for bad in (0, -5, 2.5, True):
        with pytest.raises(OptionError, match="every"):
            Monitor(every=bad)
    with pytest.raises(OptionError, match="fail_on"):
        Monitor(fail_on="loss")
    with pytest.raises(OptionError, match="options"):
        Monitor(options={"randomize": True})
    monitor = Monitor(every=3, options=AnalysisOptions(randomize=True))
    model = torch.nn.Linear(48, 96)
    assert monitor.step(model, 1) == [] and monitor.entries == []
    monitor.step(model, 3)
    assert monitor.entries[0].summary["num_traps"] is not None  # randomised: traps counted
    assert spectralyzer.Monitor is Monitor
