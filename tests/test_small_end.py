"""SETOL's detX / ERG gap and small-end outliers below the MP lower edge
(docs/theory.md section 6.3), and the diff/gate warning when an edit removes them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectralyzer.fit.detx import detx_num
from spectralyzer.fit.mp import fit_mp
from spectralyzer.fit.small_end import count_small_outliers, lower_edge_threshold
from spectralyzer.gate_policy import evaluate
from spectralyzer.layer_diff import diff
from spectralyzer.pipeline import make_options, run_analysis


def detx_weightwatcher(evals: np.ndarray) -> int:
    """weightwatcher 0.7's detX_constraint, written out: ascending ESD rescaled to mean 1,
    the first idx from the top at which prod(evals[idx:]) < 1 gives N - idx."""
    x = np.sort(evals) * (len(evals) / np.sum(evals))
    for idx in range(len(x) - 1, 0, -1):
        if np.prod(x[idx:]) < 1.0:
            return len(x) - idx
    return len(x)


def test_detx_hand_computed():
    # mean 1.6: rescaled 2.5, 1.25, 0.625, 0.3125, 0.3125; log sums 0.92, 1.14, 0.67, -0.49
    assert detx_num(np.array([0.5, 4.0, 1.0, 2.0, 0.5])) == 4
    assert detx_num(np.array([3.0, 1.0])) == 2  # ln 1.5 > 0, ln 1.5 + ln 0.5 < 0
    assert detx_num(np.ones(7)) == 7  # never negative: the whole ESD
    assert detx_num(np.array([0.0, 1e-30, 2.0, 1.0]), zero_tol=1e-20) == 2  # zeros left out
    assert detx_num(np.zeros(3)) == 0


@pytest.mark.parametrize("seed", range(5))
def test_detx_equals_weightwatcher_on_heavy_tailed_spectra(seed):
    w = np.random.default_rng(seed).standard_t(2.5 + seed, size=(300, 120))
    evals = np.linalg.eigvalsh(w.T @ w)
    assert detx_num(evals) == detx_weightwatcher(evals)


def test_erg_gap_in_the_analysis_is_detx_minus_the_tail():
    w = np.random.default_rng(1).standard_t(3.0, size=(400, 160))
    result = run_analysis({"w.weight": torch.from_numpy(w)}, make_options())
    row = result.details.iloc[0]
    evals = result.spectra["w.weight"].esd.evals
    assert row["detx_num"] == detx_weightwatcher(evals)
    assert row["n_tail"] == int(np.sum(evals >= row["xmin"]))
    assert row["erg_gap"] == row["detx_num"] - row["n_tail"]


def test_lower_edge_threshold_formula():
    # N = 400, M = 100, sigma^2 = 1: mu_- = (20 - 10)^2 = 100, s_- = 10 (1/10 - 1/20)^(1/3)
    expected = 100 - 2.02 * 10 * (0.05 ** (1 / 3))
    assert lower_edge_threshold(1.0, 400, 100) == pytest.approx(expected, rel=1e-12)
    assert lower_edge_threshold(2.0, 400, 100) == pytest.approx(2 * expected, rel=1e-12)
    assert lower_edge_threshold(1.0, 100, 100) == 0.0  # hard edge: none counted


def planted(seed: int, small: list[float], n: int = 400, m: int = 100) -> np.ndarray:
    """Gaussian N x M with its smallest singular values replaced by ``small``."""
    w = np.random.default_rng(seed).normal(size=(n, m))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    s[len(s) - len(small) :] = small
    return (u * s) @ vt


def small_count(w: np.ndarray) -> int:
    evals = np.linalg.eigvalsh(w.T @ w)
    n, m = w.shape
    return count_small_outliers(evals, fit_mp(evals, n, m), n, m, zero_tol=1e-9 * evals[-1])


def test_planted_small_singular_values_are_counted():
    """Below sigma^2 (mu_- - 2.02 s_-) ~ 92.6 for 400 x 100: planting eigenvalues 30 and 50
    adds exactly those to what the pure Gaussian shows (seed 1 has a false one, as about
    1 in 100 do)."""
    assert [small_count(planted(seed, [])) for seed in range(4)] == [0, 1, 0, 0]
    for seed in (0, 2, 3):
        assert small_count(planted(seed, [math.sqrt(30.0)])) == 1
        assert small_count(planted(seed, [math.sqrt(30.0), math.sqrt(50.0)])) == 2
        assert small_count(planted(seed, [0.0, math.sqrt(30.0)])) == 1  # a zero is rank loss


def test_false_alarm_rate_is_about_one_in_a_hundred():
    hits = sum(small_count(planted(seed, [])) > 0 for seed in range(100, 300))
    assert hits <= 6  # binomial(200, 0.01): P(> 6) < 0.5%


def test_diff_and_gate_warn_when_an_edit_removes_small_end_outliers():
    base = planted(7, [math.sqrt(20.0), math.sqrt(40.0)])
    u, s, vt = np.linalg.svd(base, full_matrices=False)
    truncated = (u[:, :-2] * s[:-2]) @ vt[:-2]  # SVD truncation drops the two smallest
    state = {"layer.weight": torch.from_numpy(base)}
    edited = {"layer.weight": torch.from_numpy(truncated)}
    result = diff(state, edited)
    row = result.layers.iloc[0]
    assert row["lost_small_outliers"] == 2
    warning = [line for line in result.summary_lines() if line.startswith("warning:")]
    assert warning == [
        "warning: 2 eigenvalue(s) below the MP lower edge removed in 1 layer(s) "
        "(small-end outliers carry information): layer.weight"
    ]
    verdict = evaluate(result)
    assert verdict.passed  # a warning, not a failure
    assert warning[0] in verdict.notes
    same = diff(state, {"layer.weight": torch.from_numpy(base.copy())})
    assert same.layers.iloc[0]["lost_small_outliers"] == 0
    assert not any(line.startswith("warning:") for line in same.summary_lines())
    assert not any(n.startswith("warning:") for n in evaluate(same).notes)
