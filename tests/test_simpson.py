"""Simpson's paradox in ``compare`` (issue 15): correlations within each family beside the pooled one.

The constructed case: two architecture families (layer shapes 400x200 and
300x150). Within each, accuracy rises with the mean alpha (Kendall tau +1); the
second family has higher alphas and much lower accuracy, so pooled over both the
correlation is negative. The pooled and within-family numbers are checked
against scipy on the fitted alphas, and the sign reversal must be reported.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from scipy import stats

from helpers import pareto_entries
from spectralyzer.agreement import shape_families, sign_reversals, within_families
from spectralyzer.cli import main
from spectralyzer.series import Entry, assemble, compare

# (file, layer shape, tail index mu of the entries, accuracy): alpha grows with mu
CASES = [
    ("a0.safetensors", (400, 200), 0.6, 0.80),
    ("a1.safetensors", (400, 200), 0.9, 0.81),
    ("a2.safetensors", (400, 200), 1.2, 0.82),
    ("b0.safetensors", (300, 150), 1.5, 0.50),
    ("b1.safetensors", (300, 150), 1.8, 0.51),
    ("b2.safetensors", (300, 150), 2.1, 0.52),
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    for i, (name, shape, mu, _) in enumerate(CASES):
        layers = {
            f"l{j}.weight": torch.from_numpy(pareto_entries(*shape, mu, seed=10 * i + j)).float()
            for j in range(2)
        }
        save_file(layers, folder / name)
    return folder


def _accuracy():
    return {name: acc for name, _, _, acc in CASES}


def test_pooled_correlation_reverses_within_each_family_and_is_reported(zoo):
    series = compare([zoo / c[0] for c in CASES], accuracy=_accuracy(), rank_by="alpha")
    models = series.models.set_index("model")
    alpha = np.array([models.loc[c[0], "alpha"] for c in CASES])
    accuracy = np.array([c[3] for c in CASES])
    # the construction holds on the fitted alphas: increasing within each family, B above A
    assert np.all(np.diff(alpha[:3]) > 0) and np.all(np.diff(alpha[3:]) > 0)
    assert alpha[3:].min() > alpha[:3].max()
    pooled = series.correlations.set_index("metric").loc["alpha"]
    assert pooled["kendall_tau"] == pytest.approx(stats.kendalltau(alpha, accuracy).statistic)
    assert pooled["kendall_tau"] == pytest.approx((6 - 9) / 15)  # 6 concordant, 9 discordant
    assert [models.loc[c[0], "family"] for c in CASES] == ["A"] * 3 + ["B"] * 3
    within = series.family_correlations.set_index(["family", "metric"])
    for family, rows in (("A", slice(0, 3)), ("B", slice(3, 6))):
        row = within.loc[(family, "alpha")]
        assert row["n"] == 3
        assert row["kendall_tau"] == pytest.approx(1.0)
        assert row["spearman_rho"] == pytest.approx(
            stats.spearmanr(alpha[rows], accuracy[rows]).statistic
        )
    reversed_alpha = [w for w in series.warnings if w.startswith("Simpson's paradox: alpha ")]
    assert len(reversed_alpha) == 2  # both families disagree with the pool
    assert "-0.20" in reversed_alpha[0] and "+1.00 within family A" in reversed_alpha[0]
    assert any("within each family" in note for note in series.notes)


def test_family_labels_from_the_accuracy_csv_and_the_cli(zoo, tmp_path):
    paths = [str(zoo / c[0]) for c in CASES]
    csv = tmp_path / "acc.csv"
    rows = [f"{c[0]},{c[3]},{'x' if i % 2 else 'y'}" for i, c in enumerate(CASES)]
    csv.write_text("model,accuracy,family\n" + "\n".join(rows) + "\n")
    series = compare(paths, accuracy=csv)
    assert list(series.models.set_index("model").loc[[c[0] for c in CASES], "family"]) == list(
        "yxyxyx"
    )
    assert set(series.family_correlations["family"]) == {"x", "y"}
    runner = CliRunner()
    result = runner.invoke(main, ["compare", *paths, "--accuracy", str(csv), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert {r["family"] for r in json.loads(result.stdout)["family_correlations"]} == {"x", "y"}
    # --family labels win over the CSV; one family: no within-family table, no warning
    same = runner.invoke(
        main, ["compare", *paths, "--accuracy", str(csv), "--family", ",".join("z" * 6)]
    )
    assert same.exit_code == 0 and "Simpson" not in same.stderr
    assert "within each family" not in same.stdout
    shapes = runner.invoke(main, ["compare", *paths, "--accuracy", str(csv).replace("acc", "no")])
    assert shapes.exit_code == 2
    plain = tmp_path / "plain.csv"
    plain.write_text("model,accuracy\n" + "\n".join(f"{c[0]},{c[3]}" for c in CASES) + "\n")
    warned = runner.invoke(main, ["compare", *paths, "--accuracy", str(plain), "-q"])
    assert warned.exit_code == 0
    assert "spectralyzer: warning: Simpson's paradox: alpha " in warned.stderr
    bad = runner.invoke(main, ["compare", *paths, "--family", "a,b"])
    assert bad.exit_code == 2 and "--family" in bad.stderr


def _entry(label, shape, alpha):
    summary = {
        "model": label,
        "num_layers": 1,
        "num_fit_failed": 0,
        "warnings": {},
        "num_traps": None,
        "phases": {},
        **{m: alpha for m in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm")},
        "log_alpha_norm": alpha,
    }
    details = pd.DataFrame(
        {
            "name": ["w"],
            "layer_type": ["linear"],
            "shape": [shape],
            **{c: [alpha] for c in ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm")},
            "phase": ["heavy-tailed"],
        }
    )
    return Entry(label, None, summary, details)


def test_no_warning_when_families_agree_with_the_pool():
    # both families: accuracy falls with alpha, and so does the pool
    entries = [_entry(f"a{i}", (8, 4), 2.0 + i) for i in range(3)]
    entries += [_entry(f"b{i}", (6, 3), 2.5 + i) for i in range(3)]
    accuracy = {f"a{i}": 0.9 - 0.1 * i for i in range(3)}
    accuracy |= {f"b{i}": 0.85 - 0.1 * i for i in range(3)}
    series = assemble(entries, accuracy=accuracy)
    assert series.warnings == []
    assert set(series.family_correlations["family"]) == {"A", "B"}
    assert np.allclose(series.family_correlations["kendall_tau"], -1.0)


def test_sign_reversals_and_shape_families_on_known_answers():
    pooled = pd.DataFrame({"metric": ["alpha", "log_norm"], "kendall_tau": [-0.2, 0.5]})
    within = pd.DataFrame(
        {
            "family": ["A", "A", "B", "B"],
            "metric": ["alpha", "log_norm", "alpha", "log_norm"],
            "kendall_tau": [1.0, 0.0, np.nan, -0.4],
        }
    )
    lines = sign_reversals(pooled, within)
    assert len(lines) == 2  # tau 0 and NaN reverse nothing
    assert "alpha" in lines[0] and "family A" in lines[0]
    assert "log_norm" in lines[1] and "family B" in lines[1]
    shapes = [[(2, 3), (4, 5)], [(4, 5), (2, 3)], [(2, 3)], [(4, 5), (2, 3)], [(2, 3), (2, 3)]]
    assert shape_families(shapes) == ["A", "A", "B", "A", "C"]  # multisets, order-free
    frame = pd.DataFrame({"family": ["A"] * 3, "alpha": [1.0, 2.0, 3.0], "acc": [3.0, 2.0, 1.0]})
    for metric in ("alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm"):
        frame[metric] = frame["alpha"]
    table = within_families(frame, "acc")
    assert np.allclose(table["kendall_tau"], -1.0) and (table["n"] == 3).all()
