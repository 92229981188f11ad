"""Likelihood-ratio tests of the tail against the powerlaw package and samples of known laws."""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

from spectralyzer.fit import tail_tests as tt


def pareto(rng, n, alpha, xmin=1.0):
    """Exact samples of p(x) ~ x^-alpha on [xmin, inf) (inverse CDF)."""
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def cutoff_power_law(rng, n, a, lam):
    """Samples of p(x) ~ x^-a exp(-lam x) on [1, inf): Pareto(a) thinned by exp(-lam (x - 1))."""
    out = np.empty(0)
    while out.size < n:
        x = pareto(rng, 4 * n, a)
        out = np.concatenate((out, x[rng.random(x.size) < np.exp(-lam * (x - 1.0))]))
    return out[:n]


def samples():
    rng = np.random.default_rng(0)
    return {
        "power_law": pareto(rng, 2000, 2.5, xmin=0.3),
        "exponential": 2.0 + rng.exponential(3.0, 800),
        "lognormal": rng.lognormal(1.0, 0.7, 1500),
        "truncated_power_law": cutoff_power_law(rng, 1500, 1.8, 0.02),
    }


@pytest.fixture(scope="module")
def package_comparisons():
    """powerlaw.Fit at a fixed xmin (its own alpha) on each sample, and its comparisons."""
    powerlaw = pytest.importorskip("powerlaw")
    out = {}
    for law, x in samples().items():
        xmin = float(np.sort(x)[x.size // 5])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = powerlaw.Fit(x, xmin=xmin, verbose=False)
            package = {alt: fit.distribution_compare("power_law", alt) for alt in tt.ALTERNATIVES}
            exp_lambda = fit.exponential.parameter1
        out[law] = (x, xmin, fit.power_law.alpha, package, exp_lambda)
    return out


@pytest.mark.parametrize("law", list(samples()))
def test_ratios_and_p_values_equal_the_powerlaw_package(package_comparisons, law):
    x, xmin, alpha, package, exp_lambda = package_comparisons[law]
    ours = tt.compare_tail(x, xmin, alpha)
    for alt, (R, p) in package.items():
        c = ours.comparisons[alt]
        assert c.R == pytest.approx(R, abs=2e-3, rel=1e-5), alt
        if p > 1e-12:  # the package's 1 - cdf rounds tiny p to 0; ours keeps them (chi2.sf)
            assert c.p == pytest.approx(p, rel=2e-2, abs=1e-12), alt
        else:
            assert c.p < 1e-12
    assert ours.comparisons["exponential"].params[0] == pytest.approx(exp_lambda, rel=1e-3)


@pytest.mark.parametrize("law", list(samples()))
def test_the_verdict_names_the_law_that_drew_the_sample(law):
    x = samples()[law]
    xmin = float(np.sort(x)[x.size // 5])
    tail = x[x >= xmin]
    alpha = 1.0 + tail.size / np.log(tail / xmin).sum()  # CSN eq. 3.1
    assert tt.compare_tail(x, xmin, alpha).verdict == law


def test_fitted_parameters_recover_those_of_the_sample():
    rng = np.random.default_rng(3)
    x = 2.0 + rng.exponential(0.5, 20000)  # lam = 2 above xmin = 2
    assert tt.compare_tail(x, 2.0, 3.0).comparisons["exponential"].params[0] == pytest.approx(
        2.0, rel=0.03
    )
    x = rng.lognormal(0.5, 0.4, 20000)  # the whole range: xmin below every sample
    mu, s = tt.compare_tail(x, float(x.min()), 3.0).comparisons["lognormal"].params
    assert mu == pytest.approx(0.5, abs=0.02) and s == pytest.approx(0.4, rel=0.03)
    x = cutoff_power_law(rng, 20000, 1.5, 0.05)
    a, lam = tt.compare_tail(x, 1.0, 2.0).comparisons["truncated_power_law"].params
    assert a == pytest.approx(1.5, abs=0.05) and lam == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize("tmax", [math.inf, 40.0])
@pytest.mark.parametrize(
    "loglik",
    [
        lambda t, tmax: tt.power_law_loglik(t, 2.3, tmax),
        lambda t, tmax: tt.exponential_loglik(t, 0.7, tmax),
        lambda t, tmax: tt.lognormal_loglik(t, -3.0, 2.5, tmax),
        lambda t, tmax: tt.truncated_power_law_loglik(t, 1.4, 0.05, tmax),
        lambda t, tmax: tt.truncated_power_law_loglik(t, 0.3, 2.0, tmax),  # a < 1: inner peak
        lambda t, tmax: tt.truncated_power_law_loglik(t, 2.2, 0.0, tmax),  # lam = 0: power law
    ],
)
def test_each_density_integrates_to_one_on_its_range(loglik, tmax):
    def density(u):  # in u = ln t, so that the infinite range is well resolved
        t = math.exp(u)
        return math.exp(float(loglik(np.array([t]), tmax)[0])) * t

    top = min(math.log(tmax), 300.0)  # every density here has < 1e-30 of its mass beyond e^300
    total, _ = integrate.quad(density, 0.0, top, points=[1.0, 5.0, 20.0], limit=400, epsrel=1e-10)
    assert total == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_the_nested_ratio_is_never_positive(seed):
    """The power law is the lam = 0 member of the truncated power law: R <= 0, also truncated."""
    rng = np.random.default_rng(seed)
    x = pareto(rng, 600, 2.0 + seed / 2)
    xs = np.sort(x)
    for xmax in (None, float(xs[-3])):
        tail = xs[(xs >= xs[100]) & (xs <= (xmax or np.inf))]
        alpha = 1.0 + tail.size / np.log(tail / xs[100]).sum()  # untruncated MLE, near optimal
        R = (
            tt.compare_tail(x, float(xs[100]), alpha, xmax=xmax)
            .comparisons["truncated_power_law"]
            .R
        )
        assert R <= 1e-9


def test_ratios_do_not_depend_on_the_unit():
    x = samples()["truncated_power_law"]
    a, b = tt.compare_tail(x, 1.5, 2.0), tt.compare_tail(1e-4 * x, 1.5e-4, 2.0)
    assert a.verdict == b.verdict
    for alt in tt.ALTERNATIVES:
        assert b.comparisons[alt].R == pytest.approx(a.comparisons[alt].R, abs=1e-6)
    assert b.comparisons["exponential"].params[0] == pytest.approx(
        1e4 * a.comparisons["exponential"].params[0]
    )


def test_vuong_p_value_is_that_of_a_normal_statistic():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.0, 0.4])
    R, p = tt.likelihood_ratio(d, np.zeros_like(d))
    z = d.sum() / (d.std() * math.sqrt(d.size))
    assert R == pytest.approx(d.sum())
    assert p == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2)))))
    R, p = tt.likelihood_ratio(np.zeros(5), np.full(5, 0.5), nested=True)
    assert R == -2.5 and p == pytest.approx(math.erfc(math.sqrt(2.5)))  # chi2_1 survival of 5


def test_too_short_a_tail_or_a_bad_alpha_gives_no_verdict():
    assert tt.compare_tail(np.array([1.0, 2.0]), 1.0, 2.0).verdict == ""
    undefined = tt.compare_tail(np.arange(1.0, 50.0), 1.0, math.nan)
    assert undefined.verdict == "" and math.isnan(undefined.comparisons["lognormal"].R)


def test_on_minilm_ours_is_the_better_maximum_likelihood_fit_layer_by_layer(minilm_path):
    """On all-MiniLM-L6-v2's ESDs: the exponential equals the powerlaw package's; for the
    lognormal and truncated power law our optimum is at least as likely as the package's
    parameters (scored with our density, whose normalisation is exact; the package's own
    log-likelihood loses digits when mu is far below the data, as its lognormal fits are here)."""
    powerlaw = pytest.importorskip("powerlaw")
    import spectralyzer
    from spectralyzer.pipeline import make_options, run_analysis

    result = run_analysis(minilm_path, make_options(tail_tests=True))
    assert len(result.details) == 39
    _, summary = spectralyzer.analyze(minilm_path, tail_tests=True, layers="layer.0")
    assert sum(summary["tail_laws"].values()) == 6
    for row in result.details.itertuples():
        evals = result.spectra[row.name].esd.evals
        t = np.sort(evals[evals >= row.xmin]) / row.xmin
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = powerlaw.Fit(
                evals[evals > 1e-10],
                xmin=row.xmin,
                parameter_ranges={"alpha": [1, None]},
                verbose=False,
            )
            exp_R, _ = fit.distribution_compare("power_law", "exponential")
            ln, tpl = fit.lognormal, fit.truncated_power_law
        assert fit.power_law.alpha == pytest.approx(row.alpha, rel=1e-9)
        assert row.R_exponential == pytest.approx(exp_R, abs=1e-4)
        pl = tt.power_law_loglik(t, row.alpha).sum()
        theirs_ln = tt.lognormal_loglik(t, ln.mu - math.log(row.xmin), ln.sigma).sum()
        theirs_tpl = tt.truncated_power_law_loglik(t, tpl.alpha, tpl.Lambda * row.xmin).sum()
        assert pl - row.R_lognormal >= theirs_ln - 1e-6, row.name
        assert pl - row.R_truncated >= theirs_tpl - 1e-6, row.name
        assert row.R_truncated <= 1e-9
        assert row.tail_law in ("power_law", "undecided", *tt.ALTERNATIVES)


def test_truncated_exponential_comparison_equals_the_powerlaw_package():
    """With xmax (the fit after --fix-fingers) both laws are normalised on [xmin, xmax]."""
    powerlaw = pytest.importorskip("powerlaw")
    x = pareto(np.random.default_rng(1), 1500, 2.2)
    xs = np.sort(x)
    xmin, xmax = float(xs[300]), float(xs[-4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, xmin=xmin, xmax=xmax, verbose=False)
        R, p = fit.distribution_compare("power_law", "exponential")
        alpha = fit.power_law.alpha
    ours = tt.compare_tail(x, xmin, alpha, xmax=xmax).comparisons["exponential"]
    assert ours.R == pytest.approx(R, rel=1e-5)
    assert ours.p == pytest.approx(p, rel=2e-2)
