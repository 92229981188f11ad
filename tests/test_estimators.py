"""Named alpha estimators (docs/theory.md section 6.1): hill against its closed form and a
known Pareto law, xmin-peak against a straightforward implementation of its published
description, and every output recording the estimator."""

from __future__ import annotations

import bisect
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from spectralyzer.cli import main
from spectralyzer.errors import OptionError
from spectralyzer.fit.estimators import Estimator
from spectralyzer.fit.hill import fit_hill
from spectralyzer.fit.powerlaw import XMIN_FLOOR, fit_power_law
from spectralyzer.fit.xmin_peak import esd_peak, fit_xmin_peak
from spectralyzer.metrics import zero_tolerance
from spectralyzer.pipeline import make_options, run_analysis


def pareto(alpha: float, n: int, seed: int) -> np.ndarray:
    """``n`` draws of the density ``(alpha - 1) x^-alpha`` on ``x >= 1`` (inverse CDF)."""
    return np.random.default_rng(seed).uniform(size=n) ** (-1.0 / (alpha - 1.0))


def hill_closed_form(evals: np.ndarray, tail: int) -> float:
    """``1 + n / (sum_{j >= i} ln lambda_j - n ln lambda_i)``, ascending, ``i = N - tail``."""
    x = np.sort(evals)
    i = x.size - tail
    n = x.size - i
    return 1.0 + n / (np.sum(np.log(x[i:])) - n * np.log(x[i]))


@pytest.mark.parametrize(("k", "tail"), [("median", 2500), ("alphaq", 500), (40, 40)])
def test_hill_is_its_closed_form(k, tail):
    x = pareto(2.5, 5000, seed=1)  # N = 5000: median tail 2500, AlphaQ max(10, 500) = 500
    fit = fit_hill(x, k=k)
    assert fit.ok and fit.n_tail == tail
    assert fit.alpha == pytest.approx(hill_closed_form(x, tail), rel=1e-12)
    assert fit.xmin == np.sort(x)[x.size - tail]
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(tail), rel=1e-12)
    assert fit_hill(x[:9], k="alphaq").n_tail == 9  # fewer than 10: the whole ESD


def test_hill_recovers_a_known_pareto_exponent_within_its_standard_error():
    """Above its median a Pareto(alpha) sample is Pareto(alpha) again, so the median Hill
    fit is the MLE on n = N/2 points with standard error (alpha - 1)/sqrt(n) (CSN eq. 3.2):
    each of 40 seeds lands within 4 standard errors (|z| > 4: p = 6e-5), and the z-scores
    (alpha_hat - alpha)/SE have mean 0 +- 3/sqrt(40) and spread near 1."""
    alpha, n_evals = 2.5, 4000
    z = []
    for seed in range(40):
        fit = fit_hill(pareto(alpha, n_evals, seed))
        se = (alpha - 1.0) / math.sqrt(fit.n_tail)
        assert fit.n_tail == n_evals // 2
        z.append((fit.alpha - alpha) / se)
    z = np.array(z)
    assert np.abs(z).max() < 4.0
    assert abs(z.mean()) < 3 / math.sqrt(z.size)
    assert 0.7 < z.std() < 1.3


def reference_xmin_peak(
    evals: np.ndarray, floor: float, compat: bool
) -> tuple[float, float, float]:
    """The published description, written out: (alpha, xmin, D).

    Histogram of log10(lambda) (eigenvalues above the floor) in 100 equal bins; peak =
    10^(left edge of the fullest bin); Clauset candidates (distinct values but the two
    largest) with 0.95 peak <= xmin <= 1.5 peak (compat: log10(0.95 peak) <= xmin);
    alpha = 1 + n / sum ln(x / xmin); candidates with alpha < 1.01 dropped; D = the
    largest |P - F| over the distinct tail values, F the fraction strictly below; the
    smallest D wins, the smaller xmin on a tie.
    """
    x = sorted(float(v) for v in evals if v > floor)
    counts, edges = np.histogram(np.log10(x), bins=100)
    peak = 10 ** edges[int(np.argmax(counts))]
    low = math.log10(0.95 * peak) if compat else 0.95 * peak
    distinct = sorted(set(x))
    best = None
    for xmin in distinct[:-2]:
        if not low <= xmin <= 1.5 * peak:
            continue
        tail = [v for v in x if v >= xmin]
        n = len(tail)
        alpha = 1.0 + n / sum(math.log(v / xmin) for v in tail)
        if alpha - 0.01 < 1.0:
            continue
        d = 0.0
        for u in sorted(set(tail)):
            below = bisect.bisect_left(tail, u) / n  # tail is sorted
            model = 1.0 - (u / xmin) ** (1.0 - alpha)
            d = max(d, abs(model - below))
        if best is None or d < best[2]:
            best = (alpha, xmin, d)
    assert best is not None
    return best


def crowd_on_pareto(seed: int) -> np.ndarray:
    """A Pareto(2.5) tail from 1 and a crowd of 150 near 50: the histogram peaks at the
    crowd, above which few eigenvalues remain, so the lower limit decides the fit."""
    rng = np.random.default_rng(seed)
    return np.concatenate([pareto(2.5, 1000, seed), 50.0 * np.exp(rng.normal(0, 0.002, 150))])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("compat", [False, True])
def test_xmin_peak_equals_the_published_description_on_synthetic_spectra(seed, compat):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3.0, size=(300, 150))
    for evals in (np.linalg.eigvalsh(w.T @ w), crowd_on_pareto(seed)):
        fit = fit_xmin_peak(evals, compat=compat)
        alpha, xmin, d = reference_xmin_peak(evals, XMIN_FLOOR, compat)
        assert fit.xmin == xmin
        assert fit.alpha == pytest.approx(alpha, rel=1e-10, abs=1e-10)
        assert fit.D == pytest.approx(d, abs=1e-10)


def test_the_compat_lower_limit_changes_the_fit_where_the_tail_starts_below_the_peak():
    evals = crowd_on_pareto(0)
    peak = esd_peak(evals)
    assert 45 < peak < 50
    exact, compat = fit_xmin_peak(evals), fit_xmin_peak(evals, compat=True)
    assert 0.95 * peak <= exact.xmin <= 1.5 * peak
    # log10(0.95 peak) ~ 1.66 lets the scan reach down into the Pareto part
    assert math.log10(0.95 * peak) <= compat.xmin < 0.95 * peak
    assert compat.D < exact.D and compat.n_tail > 500


def test_xmin_peak_and_hill_on_minilm_through_the_pipeline(minilm_path):
    """Every MiniLM layer: the analysis' alpha equals the independent implementations, on
    the same ESD (eigenvalues above the floor max(1e-10, numerical-zero tolerance))."""
    peak = run_analysis(minilm_path, make_options(estimator="xmin-peak"))
    compat = run_analysis(minilm_path, make_options(estimator="xmin-peak", xmin_peak_compat=True))
    hill = run_analysis(minilm_path, make_options(estimator="hill"))
    assert len(peak.details) > 30
    differ = 0
    for i, name in enumerate(peak.details["name"]):
        spectra = peak.spectra[name]
        evals = spectra.esd.evals
        floor = max(XMIN_FLOOR, zero_tolerance(float(evals[-1]), spectra.spec.M))
        for result, mode in ((peak, False), (compat, True)):
            alpha, xmin, _ = reference_xmin_peak(evals, floor, mode)
            assert result.details["alpha"].iloc[i] == pytest.approx(alpha, rel=1e-10, abs=1e-10)
            assert result.details["xmin"].iloc[i] == xmin
        differ += compat.details["xmin"].iloc[i] != peak.details["xmin"].iloc[i]
        kept = evals[evals > floor]
        want = hill_closed_form(kept, kept.size - kept.size // 2)
        assert hill.details["alpha"].iloc[i] == pytest.approx(want, rel=1e-10)
    assert peak.summary["estimator"] == {
        "name": "xmin-peak",
        "bins": 100,
        "xmin_over_peak": [0.95, 1.5],
        "farms": None,
    }
    assert compat.summary["estimator"]["xmin_over_peak"] == ["log10(0.95 peak)", 1.5]
    print(f"MiniLM: the compat lower limit moved xmin in {differ} of {len(peak.details)} layers")


def test_default_is_clauset_with_numbers_unchanged():
    rng = np.random.default_rng(4)
    w = rng.standard_t(2.5, size=(200, 80))
    result = run_analysis({"w.weight": torch.from_numpy(w.astype(np.float32))}, make_options())
    evals = result.spectra["w.weight"].esd.evals
    floor = max(XMIN_FLOOR, zero_tolerance(float(evals[-1]), 80))
    assert result.details["alpha"].iloc[0] == fit_power_law(evals, xmin_floor=floor).alpha
    assert result.summary["estimator"] == {"name": "clauset", "farms": None}
    assert "estimator: clauset" in result.summary_lines()


def test_every_output_format_records_the_estimator(tmp_path):
    model = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    save_file({"a.weight": torch.from_numpy(rng.standard_t(3.0, (120, 60)))}, model)
    runner = CliRunner()
    args = ["analyze", str(model), "-q", "--estimator", "hill", "--hill-k", "alphaq"]
    csv = runner.invoke(main, [*args, "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    header, first = csv.output.splitlines()[:2]
    assert header.split(",")[-1] == "estimator" and first.endswith(",hill(k=alphaq)")
    js = runner.invoke(main, [*args, "--format", "json"])
    want = {"name": "hill", "k": "alphaq", "farms": None}
    assert json.loads(js.output)["summary"]["estimator"] == want
    table = runner.invoke(main, [*args, "--farms", "--farms-size", "50", "--farms-windows", "3"])
    assert "estimator: hill(k=alphaq)+farms(size=50,windows=3,ratio=1)" in table.output
    report = tmp_path / "report"
    assert runner.invoke(main, [*args, "--report", str(report)]).exit_code == 0
    assert "estimator: hill(k=alphaq)" in (report / "report.md").read_text()


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--estimator", "hill", "--fix-fingers"], "--fix-fingers"),
        (["--hill-k", "alphaq"], "--hill-k"),  # with the default clauset
        (["--estimator", "hill", "--hill-k", "2"], "--hill-k"),
        (["--xmin-peak-compat"], "--xmin-peak-compat"),
        (["--farms-ratio", "0.5", "--farms"], "--farms-ratio"),
    ],
)
def test_bad_combinations_exit_2_naming_the_flag(flags, flag):
    result = CliRunner().invoke(main, ["analyze", "nonexistent.safetensors", "-q", *flags])
    assert result.exit_code == 2
    assert result.output.startswith(f"spectralyzer: error: {flag}:"), result.output


def test_estimator_validates_its_fields():
    with pytest.raises(OptionError, match="estimator"):
        Estimator("median-hill")
    assert Estimator("hill", "25").hill_k == 25
