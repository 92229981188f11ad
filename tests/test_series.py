import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from scipy import stats

from helpers import gaussian, pareto_entries
from spectralyzer.cli import main
from spectralyzer.series import agreement, compare, read_accuracy


def test_agreement_on_known_answers():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    exact = agreement(x, 2 * x + 1)
    assert exact["kendall_tau"] == pytest.approx(1.0) and exact["spearman_rho"] == pytest.approx(
        1.0
    )
    assert exact["r2"] == pytest.approx(1.0) and exact["rmse"] == pytest.approx(0.0, abs=1e-12)
    swapped = agreement(x, np.array([1.0, 3.0, 2.0, 4.0]))
    assert swapped["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert swapped["spearman_rho"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    fit = stats.linregress(a, b)
    noisy = agreement(a, b)
    assert noisy["r2"] == pytest.approx(fit.rvalue**2)
    residual = b - (fit.intercept + fit.slope * a)
    assert noisy["rmse"] == pytest.approx(math.sqrt(np.mean(residual**2)))
    assert math.isnan(agreement(x[:2], x[:2])["kendall_tau"])  # too few models


def _series(tmp_path, mus):
    """One 'model' per tail index mu: two Pareto-entry layers each (alpha ~ 1 + mu/2 for mu < 2)."""
    paths = []
    for i, mu in enumerate(mus):
        path = tmp_path / f"m{i}.safetensors"
        layers = {
            f"l{j}.weight": torch.from_numpy(pareto_entries(400, 200, mu, seed=10 * i + j)).float()
            for j in range(2)
        }
        save_file(layers, path)
        paths.append(path)
    return paths


def test_compare_ranks_models_and_scores_metrics_against_accuracy(tmp_path):
    mus = [0.8, 1.2, 1.6, 2.0]
    paths = _series(tmp_path, mus)
    # a series whose accuracy falls as the tails get lighter: alpha must rank it exactly
    accuracy = {f"m{i}.safetensors": 0.95 - 0.1 * mu for i, mu in enumerate(mus)}
    series = compare(paths, accuracy=accuracy, rank_by="alpha")
    assert list(series.models["model"]) == [p.name for p in paths]  # best (lowest alpha) first
    assert list(series.models["rank"]) == [1, 2, 3, 4]
    table = series.correlations.set_index("metric")
    assert table.loc["alpha", "kendall_tau"] == pytest.approx(-1.0)
    assert table.loc["alpha", "spearman_rho"] == pytest.approx(-1.0)
    assert 0.8 < table.loc["alpha", "r2"] <= 1.0
    assert len(series.layers) == 2 * len(mus)
    assert set(series.layers["depth"]) == {0, 1}
    assert not any("differ" in note for note in series.notes)


def test_compare_warns_when_architectures_differ(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"x.weight": torch.from_numpy(gaussian(64, 32)).float()}, a)
    torch.save({"y.weight": torch.from_numpy(gaussian(96, 32)).float()}, b)
    series = compare([a, b])
    assert any("architecture family" in note for note in series.notes)
    assert series.correlations is None


def test_read_accuracy_by_label_path_or_error(tmp_path):
    csv = tmp_path / "acc.csv"
    csv.write_text("model,error\n/some/where/m0.pt,0.1\nm1,0.25\n")
    assert read_accuracy(csv, ["m0.pt", "m1"]) == pytest.approx({"m0.pt": 0.9, "m1": 0.75})
    csv.write_text("model,accuracy\nm0,71.5\n")
    assert read_accuracy(csv, ["m0", "m9"]) == {"m0": 71.5}


def test_compare_cli(tmp_path):
    paths = _series(tmp_path, [0.8, 1.6, 2.4])
    acc = tmp_path / "acc.csv"
    acc.write_text("model,accuracy\na,0.9\nb,0.8\nc,0.7\n")
    layers = tmp_path / "layers.csv"
    runner = CliRunner()
    args = ["compare", *map(str, paths), "--labels", "a,b,c", "--accuracy", str(acc)]
    result = runner.invoke(main, [*args, "--format", "json", "--layers-out", str(layers)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sorted(m["model"] for m in data["models"]) == ["a", "b", "c"]
    hats = [m["alpha_weighted"] for m in data["models"]]  # default --rank-by, best first
    assert hats == sorted(hats) and [m["rank"] for m in data["models"]] == [1, 2, 3]
    assert {c["metric"] for c in data["correlations"]} >= {"alpha", "alpha_weighted", "log_norm"}
    assert layers.read_text().startswith("model,depth,name")
    table = runner.invoke(main, [*args])
    assert "metric against accuracy" in table.stdout and "kendall_tau" in table.stdout
    bad = runner.invoke(main, ["compare", *map(str, paths), "--labels", "a,b"])
    assert bad.exit_code == 2
    missing = runner.invoke(main, ["compare", str(paths[0]), str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "nope.pt" in missing.stderr
