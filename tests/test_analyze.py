import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import spectralyzer
from helpers import esd, gaussian, low_rank, package_dir, pareto_entries, spiked
from spectralyzer.pipeline import run_analysis
from spectralyzer.render import render
from spectralyzer.tables import SUMMARY_MEANS


def as_tensor(w):
    return torch.from_numpy(np.ascontiguousarray(w)).float()


def test_metrics_match_their_definitions():
    w = as_tensor(pareto_entries(300, 120, mu=2.5, seed=1))
    details, _ = spectralyzer.analyze({"layer.weight": w})
    row = details.iloc[0]
    s = torch.linalg.svdvals(w.double()).numpy()
    lam = s**2
    assert row["lambda_max"] == pytest.approx(lam.max(), rel=1e-9)
    assert row["log_norm"] == pytest.approx(
        math.log10(torch.linalg.norm(w.double()).item() ** 2), rel=1e-9
    )
    assert row["log_spectral_norm"] == pytest.approx(2 * math.log10(s.max()), rel=1e-9)
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(lam.max()), rel=1e-12)
    assert row["log_alpha_norm"] == pytest.approx(math.log10((lam ** row["alpha"]).sum()), rel=1e-9)
    assert row["stable_rank"] == pytest.approx(lam.sum() / lam.max(), rel=1e-9)
    p = lam / lam.sum()
    assert row["entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(len(p)), rel=1e-9)
    assert row["rank_loss"] == 0
    assert (row["N"], row["M"], row["Q"], row["num_evals"]) == (300, 120, 2.5, 120)
    assert row["sigma"] == pytest.approx((row["alpha"] - 1) / math.sqrt(row["n_tail"]))


def test_rank_loss_counts_numerical_zeros():
    w = as_tensor(low_rank(200, 100, 30, seed=2))
    details, _ = spectralyzer.analyze({"w.weight": w})
    assert details.loc[0, "rank_loss"] == 70
    assert details.loc[0, "phase"] == "rank-collapse"


def test_rows_follow_natural_name_order_and_summary_averages_fitted_layers():
    tensors = {
        "b.weight": as_tensor(gaussian(256, 128, seed=1)),
        "a.bias": torch.zeros(128),
        "a.weight": as_tensor(pareto_entries(256, 128, 2.0, seed=2)),
        "bad.weight": as_tensor(gaussian(64, 32, seed=3)),
    }
    tensors["bad.weight"][0, 0] = float("nan")
    details, summary = spectralyzer.analyze(tensors)
    assert list(details["name"]) == ["a.weight", "b.weight", "bad.weight"]  # not file order
    bad = details.set_index("name").loc["bad.weight"]
    assert bad["warning"] == "nonfinite-weights" and math.isnan(bad["alpha"])
    assert summary["num_layers"] == 3 and summary["num_fit_failed"] == 1
    assert summary["warnings"]["nonfinite-weights"] == 1
    good = details[details["name"] != "bad.weight"]
    for key in SUMMARY_MEANS:
        assert summary[key] == pytest.approx(good[key].mean()), key


def test_normalize_divides_eigenvalues_by_n():
    w = {"w.weight": as_tensor(gaussian(400, 100, seed=4))}
    raw, _ = spectralyzer.analyze(w)
    norm, summary = spectralyzer.analyze(w, normalize=True)
    assert norm.loc[0, "lambda_max"] == pytest.approx(raw.loc[0, "lambda_max"] / 400)
    assert norm.loc[0, "alpha"] == pytest.approx(raw.loc[0, "alpha"])
    assert norm.loc[0, "sigma_mp"] == pytest.approx(raw.loc[0, "sigma_mp"] / 20)
    assert "/ N" in summary["esd"]


def test_randomize_finds_a_planted_correlation_trap():
    w = gaussian(500, 250, sigma=0.02, seed=5)
    trapped = w.copy()
    trapped[7, 11] = 5.0  # one outsized element: a trap that survives shuffling
    details, summary = spectralyzer.analyze(
        {"clean.weight": as_tensor(w), "trap.weight": as_tensor(trapped)}, randomize=True, seed=1
    )
    rows = details.set_index("name")
    assert rows.loc["clean.weight", "num_traps"] == 0
    assert rows.loc["trap.weight", "num_traps"] >= 1
    assert "correlation-trap" in rows.loc["trap.weight", "warning"]
    assert summary["num_traps"] >= 1
    assert (
        0 <= rows.loc["clean.weight", "rand_distance"] < 0.1
    )  # a Gaussian is its own randomisation
    # the same shuffle alone as in a batch of two: only the eigensolver's rounding differs
    # (LAPACK's threaded call on one matrix against one thread per matrix)
    again, _ = spectralyzer.analyze({"trap.weight": as_tensor(trapped)}, randomize=True, seed=1)
    assert again.loc[0, "num_traps"] == rows.loc["trap.weight", "num_traps"]
    assert again.loc[0, "rand_distance"] == pytest.approx(
        rows.loc["trap.weight", "rand_distance"], rel=1e-12
    )


PHASE_CASES = {
    "random-like": lambda: gaussian(1000, 500, seed=11),
    "bleeding-out": lambda: spiked(
        1000, 500, list(np.sqrt([1.8, 2.0, 2.2]) * (1000 * 500) ** 0.25), seed=12
    ),
    "bulk+spikes": lambda: spiked(
        1000, 500, list(np.sqrt([8.0, 10.0, 12.0]) * (1000 * 500) ** 0.25), seed=13
    ),
    "bulk-decay": lambda: gaussian(1000, 500, seed=16) * np.arange(1, 501) ** -0.15,
    "heavy-tailed": lambda: pareto_entries(1000, 500, mu=1.5, seed=14),
    "rank-collapse": lambda: low_rank(1000, 500, 100, seed=15),
}


@pytest.mark.parametrize("phase", list(PHASE_CASES))
def test_each_phase_is_recognised(phase):
    details, _ = spectralyzer.analyze({"w.weight": as_tensor(PHASE_CASES[phase]())})
    assert details.loc[0, "phase"] == phase


def test_json_is_one_object_with_layers_and_summary():
    result = run_analysis({"w.weight": as_tensor(gaussian(64, 32, seed=6))})
    data = json.loads(render(result, "json"))
    assert set(data) == {"layers", "summary"}
    layer = data["layers"][0]
    for key in (
        "name",
        "layer_type",
        "shape",
        "alpha",
        "alpha_weighted",
        "xmin",
        "xmax",
        "D",
        "sigma",
        "log_norm",
        "log_spectral_norm",
        "log_alpha_norm",
        "stable_rank",
        "entropy",
        "rank_loss",
        "sigma_mp",
        "lambda_plus",
        "num_spikes",
        "mp_softrank",
        "phase",
        "warning",
    ):
        assert key in layer, key
    assert layer["shape"] == [64, 32]
    assert layer["num_traps"] is None  # not randomised: null, not NaN


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return spectralyzer.analyze(minilm_path, randomize=True)


def test_minilm_every_encoder_matrix_gets_a_finite_alpha(minilm):
    details, summary = minilm
    encoder = details[details["shape"].isin([(384, 384), (1536, 384), (384, 1536)])]
    assert len(encoder) == 6 * 6 + 1  # six per block, plus the pooler
    assert np.isfinite(encoder["alpha"]).all()
    assert (encoder["alpha"] > 1).all()
    assert summary["num_layers"] == 39  # + word and position embeddings
    assert [s["name"] for s in summary["skipped"]] == [
        "embeddings.position_ids",
        "embeddings.token_type_embeddings.weight",
    ]
    for key in SUMMARY_MEANS:
        assert math.isfinite(summary[key]), key
    assert summary["num_fit_failed"] == 0


def test_minilm_esd_matches_numpy(minilm, minilm_path):
    details, _ = minilm
    from safetensors import safe_open

    with safe_open(minilm_path, "pt") as f:
        w = f.get_tensor("encoder.layer.2.intermediate.dense.weight").double().numpy()
    row = details.set_index("name").loc["encoder.layer.2.intermediate.dense.weight"]
    lam = esd(w)
    assert row["lambda_max"] == pytest.approx(lam[-1], rel=1e-10)
    assert row["log_norm"] == pytest.approx(np.log10(lam.sum()), rel=1e-10)


def test_real_conv_net_facenet_onet():
    details, summary = spectralyzer.analyze(package_dir("facenet_pytorch") / "data" / "onet.pt")
    rows = details.set_index("name")
    assert rows.loc["conv3.weight", "layer_type"] == "conv2d"
    assert rows.loc["conv3.weight", "num_evals"] == 9 * 64  # 3x3 kernel positions of 64x64
    assert rows.loc["conv4.weight", "num_evals"] == 4 * 64  # Conv2d(64, 128, 2): N=128, M=64
    assert rows.loc["dense5.weight", "M"] == 256
    assert np.isfinite(rows["alpha"]).all()
    assert "conv1.weight" in {s["name"] for s in summary["skipped"]}  # 3 input channels < 8


def test_real_recurrent_net_silero_torchscript():
    details, _ = spectralyzer.analyze(package_dir("silero_vad") / "data" / "silero_vad.jit")
    rows = details.set_index("name")
    assert rows.loc["_model.decoder.rnn.weight_hh", "layer_type"] == "lstm"
    assert rows.loc["_model.encoder.0.reparam_conv.weight", "layer_type"] == "conv1d"
    assert np.isfinite(details["alpha"]).all()


def test_minilm_agrees_with_weightwatcher_reference(minilm):
    """weightwatcher 0.7.7 on the same checkpoint (bench/weightwatcher_reference.py made the CSV)."""
    import pandas as pd

    details, _ = minilm
    reference = pd.read_csv(Path(__file__).parent / "data" / "weightwatcher_0.7.7_minilm.csv")
    ours = details.set_index("name").loc[reference["name"]]
    assert len(reference) == len(details) == 39
    np.testing.assert_array_equal(ours["N"], reference["N"])
    np.testing.assert_array_equal(ours["M"], reference["M"])
    for column in (
        "alpha",
        "xmin",
        "D",
        "log_spectral_norm",
        "alpha_weighted",
        "log_norm",
        "log_alpha_norm",
        "stable_rank",
    ):
        np.testing.assert_allclose(ours[column], reference[column], rtol=1e-6, err_msg=column)
    np.testing.assert_array_equal(ours["n_tail"], reference["num_pl_spikes"])


def test_odd_but_valid_weights_are_analysed_or_skipped_with_a_reason():
    g = torch.Generator().manual_seed(0)
    tensors = {
        "zeros.weight": torch.zeros(64, 32),
        "rank1.weight": torch.outer(torch.randn(64, generator=g), torch.randn(32, generator=g)),
        "const.weight": torch.ones(64, 32),
        "row.weight": torch.randn(1, 300, generator=g),
        "col.weight": torch.randn(300, 1, generator=g),
        "bool.weight": torch.ones(64, 32, dtype=torch.bool),
        "int.weight": torch.ones(64, 32, dtype=torch.int32),
        "bf16.weight": torch.randn(64, 32, generator=g).bfloat16(),
        "f8.weight": torch.randn(64, 32, generator=g).to(torch.float8_e4m3fn),
        "aspect.weight": torch.randn(20000, 8, generator=g),
    }
    details, summary = spectralyzer.analyze(tensors, randomize=True)
    rows = details.set_index("name")
    for name in ("zeros.weight", "rank1.weight", "const.weight"):
        assert rows.loc[name, "phase"] == "rank-collapse", name
        assert "fit-failed" in rows.loc[name, "warning"]
        assert rows.loc[name, "num_spikes"] == 0  # rounding noise of the zeros is no spike
    for name in ("zeros.weight", "const.weight"):  # shuffling leaves them as they are
        assert rows.loc[name, "num_traps"] == 0
    assert rows.loc["rank1.weight", "rank_loss"] == 31
    for name in ("bf16.weight", "f8.weight", "aspect.weight"):
        assert np.isfinite(rows.loc[name, "alpha"]), name
    # an upcast float8 matrix has the ESD of its float32 values
    f8 = tensors["f8.weight"].float().double().numpy()
    assert rows.loc["f8.weight", "lambda_max"] == pytest.approx(esd(f8)[-1], rel=1e-10)
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"row.weight", "col.weight", "bool.weight", "int.weight"}
    assert "min_evals" in reasons["row.weight"] and "bool" in reasons["bool.weight"]


def test_fix_fingers_clips_planted_outsized_eigenvalues():
    # a heavy-tailed matrix plus three rank-one "fingers" far above its top eigenvalue
    w = pareto_entries(1000, 500, mu=2.0, seed=21)
    top = esd(w)[-1]
    w = spiked(1000, 500, list(np.sqrt(top * np.array([30.0, 60.0, 100.0]))), sigma=0.0) + w
    plain, _ = spectralyzer.analyze({"w.weight": as_tensor(w)})
    fixed, summary = spectralyzer.analyze({"w.weight": as_tensor(w)}, fix_fingers=True)
    assert plain.loc[0, "num_fingers"] == 0
    assert fixed.loc[0, "num_fingers"] >= 3  # the planted three, and maybe the Pareto top one
    assert fixed.loc[0, "xmax"] <= top * 1.01
    assert fixed.loc[0, "alpha"] > plain.loc[0, "alpha"]
    assert summary["fix_fingers"] is True
