import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import damage
import spectralyzer
from spectralyzer.cli import main
from spectralyzer.gate_policy import Policy, evaluate
from spectralyzer.layer_diff import Diff, diff, diff_frames


@pytest.fixture(scope="module")
def minilm(minilm_path):
    weights = load_file(minilm_path)
    details, summary = spectralyzer.analyze(weights)
    return weights, details, summary


def verdict_of(minilm, candidate, policy=Policy()):  # noqa: B008
    _, base, summary = minilm
    cand, cand_summary = spectralyzer.analyze(candidate)
    return evaluate(Diff(diff_frames(base, cand), summary, cand_summary), policy)


class Row(NamedTuple):
    """One row of the README's gate table: the candidate and what the gate must say of it."""

    build: Callable  # state dict -> (candidate, names of the modified layers)
    modified: int
    passed: bool
    failed: int
    missed: int  # modified layers that passed (false alarms must be 0 on every row)


# The README's table (section "Did a modification ... damage the model?"), row by row,
# with the numbers it states. 39 layers are gated on all-MiniLM-L6-v2.
README_TABLE = {
    "copy": Row(lambda sd: (damage.copy(sd), []), 0, True, 0, 0),
    "float16 round trip": Row(lambda sd: (damage.fp16_round_trip(sd), []), 0, True, 0, 0),
    "30% magnitude pruning (mild)": Row(
        lambda sd: damage.magnitude_prune(sd, fraction=0.3), 39, True, 0, 39
    ),
    "5% added noise (mild)": Row(lambda sd: damage.add_noise(sd, relative=0.05), 39, True, 0, 39),
    "rank-10% SVD truncation of 80% of the layers": Row(
        lambda sd: damage.low_rank(sd, keep=0.1, share=0.8), 31, False, 31, 0
    ),
    "3 layers re-initialised at random": Row(lambda sd: damage.reinit(sd, count=3), 3, False, 3, 0),
    "90% magnitude pruning": Row(
        lambda sd: damage.magnitude_prune(sd, fraction=0.9), 39, False, 39, 0
    ),
    "100% added noise": Row(lambda sd: damage.add_noise(sd, relative=1.0), 39, False, 39, 0),
}
GATED = ["d_log_spectral_norm", "d_log_norm", "d_log_stable_rank"]
# "Largest changes seen": copy and float16 below 0.001 in every metric; the mild cases at
# most 0.039 / 0.006 / 0.033 (rounded as the README prints them)
MILD_LARGEST = {"d_log_spectral_norm": 0.0395, "d_log_norm": 0.0065, "d_log_stable_rank": 0.0335}


@pytest.mark.parametrize("row", list(README_TABLE))
def test_every_row_of_the_readme_gate_table(minilm, row):
    expected = README_TABLE[row]
    candidate, modified = expected.build(minilm[0])
    _, base, summary = minilm
    cand, cand_summary = spectralyzer.analyze(candidate)
    frame = diff_frames(base, cand)
    verdict = evaluate(Diff(frame, summary, cand_summary))
    failed, modified = set(verdict.failures), set(modified)
    assert len(verdict.checked) == 39
    assert len(modified) == expected.modified
    assert verdict.passed is expected.passed, sorted(failed)
    assert sorted(failed - modified) == []  # false alarms: 0 on every row
    assert len(failed) == expected.failed, sorted(failed)
    assert len(modified - failed) == expected.missed, sorted(modified - failed)
    deltas = frame.set_index("name")
    if not modified:
        columns = [c for c in deltas.columns if c.startswith("d_")]
        assert (deltas[columns].abs().max() < 1e-3).all(), deltas[columns].abs().max()
    elif expected.passed:
        largest = deltas.loc[sorted(modified), GATED].abs().max()
        assert (largest <= pd.Series(MILD_LARGEST)).all(), largest


def test_scale_collapse_of_one_layer(minilm):
    candidate = damage.copy(minilm[0])
    name = "encoder.layer.3.attention.output.dense.weight"
    candidate[name] = candidate[name] * 4  # exact in float32; every eigenvalue x 16
    _, base, summary = minilm
    cand, cand_summary = spectralyzer.analyze(candidate)
    row = diff_frames(base, cand).set_index("name").loc[name]
    # W -> 4W: every eigenvalue x 16; alpha, phase and stable rank unchanged
    assert row["d_log_spectral_norm"] == pytest.approx(math.log10(16), rel=1e-9)
    assert row["d_log_norm"] == pytest.approx(math.log10(16), rel=1e-9)
    assert row["d_log_stable_rank"] == pytest.approx(0, abs=1e-9)
    assert row["d_alpha"] == pytest.approx(0, abs=1e-9) and not row["phase_changed"]
    assert row["d_alpha_weighted"] == pytest.approx(row["alpha_base"] * math.log10(16), rel=1e-6)
    verdict = evaluate(Diff(diff_frames(base, cand), summary, cand_summary))
    assert list(verdict.failures) == [name]
    assert "scale collapse" in verdict.failures[name][0]
    assert any("scale collapse" in note for note in verdict.notes)


def test_unmatched_and_reshaped_layers_are_listed(minilm):
    candidate = damage.copy(minilm[0])
    del candidate["pooler.dense.weight"]
    name = "encoder.layer.0.intermediate.dense.weight"  # 1536 x 384: prune half the units
    candidate[name] = candidate[name][::2].clone()
    _, base, summary = minilm
    cand, cand_summary = spectralyzer.analyze(candidate)
    result = Diff(diff_frames(base, cand), summary, cand_summary)
    rows = result.layers.set_index("name")
    assert rows.loc["pooler.dense.weight", "status"] == "unmatched"
    assert rows.loc[name, "status"] == "shape-changed"
    assert rows.loc[name, "shape_candidate"] == (768, 384)
    verdict = evaluate(result)
    assert verdict.unmatched == ["pooler.dense.weight"]
    assert not evaluate(result, Policy(fail_on_unmatched=True)).passed


def test_policy_thresholds_and_layer_patterns(minilm, tmp_path):
    candidate, damaged = damage.reinit(minilm[0])
    assert (
        evaluate_names(minilm, candidate, Policy(exclude="|".join(map(escape, damaged)))) == set()
    )
    policy_file = tmp_path / "gate.toml"
    policy_file.write_text(
        "max_d_log_norm = 10.0\nmax_d_log_spectral_norm = 10.0\n"
        "max_d_log_stable_rank = 10.0\nfail_on_phases = []\nalpha_band = [0, 100]\n"
    )
    assert evaluate_names(minilm, candidate, Policy.from_toml(policy_file)) == set()
    policy_file.write_text("max_d_lognorm = 1\n")
    with pytest.raises(spectralyzer.InputError, match="unknown policy key"):
        Policy.from_toml(policy_file)


def escape(name):
    import re

    return re.escape(name)


def evaluate_names(minilm, candidate, policy):
    return set(verdict_of(minilm, candidate, policy).failures)


def test_diff_of_a_model_with_itself_is_zero(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(64, 32, generator=g)}, path)
    result = diff(path, path)
    row = result.layers.iloc[0]
    assert row["status"] == "matched" and row["d_alpha"] == 0 and row["d_log_norm"] == 0
    assert math.isnan(row["new_traps"]) and not row["phase_changed"]


def test_gate_cli_exit_codes_and_reports(minilm, minilm_path, tmp_path, monkeypatch):
    base = minilm_path
    candidate, damaged = damage.reinit(minilm[0])
    bad = tmp_path / "bad.safetensors"
    save_file(candidate, bad)
    summary_file = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_file))
    runner = CliRunner()
    junit, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    failed = runner.invoke(
        main, ["gate", str(base), str(bad), "--junit", str(junit), "--markdown", str(md)]
    )
    assert failed.exit_code == 1, failed.output
    assert "\nspectralyzer gate: FAIL (3 of 39 layers failed)\n" in failed.stdout
    for name in damaged:
        assert name in failed.stdout
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "39" and suite.get("failures") == "3"
    assert len(suite.findall("testcase/failure")) == 3
    assert "FAIL" in md.read_text() and summary_file.read_text() == md.read_text()
    passed = runner.invoke(main, ["gate", str(base), str(base)])
    assert passed.exit_code == 0 and "PASS" in passed.stdout
    assert "PASS" in summary_file.read_text()  # appended after the failing run's summary
    usage = runner.invoke(main, ["gate", str(base), str(tmp_path / "missing.pt")])
    assert usage.exit_code == 2
    policy = tmp_path / "p.toml"
    policy.write_text("nonsense = 1\n")
    assert (
        runner.invoke(main, ["gate", str(base), str(bad), "--policy", str(policy)]).exit_code == 2
    )
    table = runner.invoke(main, ["diff", str(base), str(bad), "--format", "json"])
    document = json.loads(table.stdout)
    assert set(document) == {"layers", "base_summary", "candidate_summary"}
    rows = {r["name"]: r for r in document["layers"]}
    assert all(rows[name]["d_log_norm"] != 0 for name in damaged)


SMALL = Path(__file__).resolve().parents[1] / "data" / "mlp" / "epoch_30.safetensors"


@pytest.mark.parametrize(
    ("change", "modified", "fails"),
    [
        (lambda sd: (damage.copy(sd), []), 0, False),
        (lambda sd: (damage.fp16_round_trip(sd), []), 0, False),
        (lambda sd: damage.reinit(sd, count=1), 1, True),
        (lambda sd: damage.low_rank(sd, keep=0.1, share=1.0), 3, True),
        (damage.magnitude_prune, 3, True),
        (damage.add_noise, 3, True),
    ],
    ids=["copy", "fp16", "reinit-1", "low-rank", "prune-90%", "noise-100%"],
)
def test_gate_on_the_small_trained_mlp(change, modified, fails):
    """The 64-256-256-10 MLP trained by data/train_mlp.py, damaged or not: the README's
    "copy and float16 pass; one re-initialised layer, SVD truncation, 90% pruning and large
    noise fail, with no false alarm" (measured: every modified layer fails, none missed)."""
    weights = load_file(SMALL)
    candidate, damaged = change(weights)
    verdict = evaluate(diff(weights, candidate))
    assert len(verdict.checked) == 3 and len(damaged) == modified
    assert verdict.passed is not fails, verdict.failures
    assert sorted(verdict.failures) == sorted(damaged)  # no false alarm, none missed


def test_compare_the_training_series():
    series_dir = SMALL.parent
    paths = sorted(series_dir.glob("epoch_*.safetensors"))
    runner = CliRunner()
    args = [
        "compare",
        *map(str, paths),
        "--accuracy",
        str(series_dir / "accuracy.csv"),
        "--format",
        "json",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["models"]) == 4 and all(m["num_layers"] == 3 for m in data["models"])
    assert all(c["n"] == 4 for c in data["correlations"])
