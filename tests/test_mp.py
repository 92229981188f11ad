import numpy as np
import pytest
from scipy import integrate

from helpers import esd, gaussian, spike_position, spiked
from spectralyzer.fit.mp import fit_mp, mp_density, mp_edges


@pytest.mark.parametrize(
    ("n", "m", "sigma"), [(1000, 500, 0.7), (2000, 400, 1.3), (500, 500, 0.05)]
)
def test_gaussian_matrices_recover_sigma_and_lambda_plus_without_spikes(n, m, sigma):
    evals = esd(gaussian(n, m, sigma, seed=n + m))
    fit = fit_mp(evals, n, m)
    assert fit.sigma_mp == pytest.approx(sigma, rel=0.02)
    assert fit.lambda_plus == pytest.approx(sigma**2 * (np.sqrt(n) + np.sqrt(m)) ** 2, rel=0.03)
    assert fit.num_spikes == 0
    assert evals[-1] == pytest.approx(fit.lambda_plus, rel=0.03)  # crisp edge
    assert fit.mp_softrank == pytest.approx(fit.lambda_plus / evals[-1])


def test_no_false_spikes_over_many_gaussian_matrices():
    false = sum(fit_mp(esd(gaussian(400, 200, seed=s)), 400, 200).num_spikes for s in range(40))
    assert false <= 2  # TW 99% quantile: about 0.4 expected


@pytest.mark.parametrize("k", [1, 3, 10])
def test_planted_spikes_are_counted(k):
    n, m = 1000, 500
    theta2 = np.linspace(5, 20, k) * np.sqrt(n * m)  # all well past the BBP threshold
    evals = esd(spiked(n, m, list(np.sqrt(theta2)), seed=k))
    fit = fit_mp(evals, n, m)
    assert fit.num_spikes == k
    assert fit.sigma_mp == pytest.approx(1.0, rel=0.02)
    np.testing.assert_allclose(evals[-k:], [spike_position(t, n, m) for t in theta2], rtol=0.1)


def test_mp_density_is_a_density_and_fits_a_gaussian_esd():
    n, m, sigma2 = 1200, 400, 0.5
    lo, hi = mp_edges(sigma2, n, m)
    mass, _ = integrate.quad(mp_density, lo, hi, args=(sigma2, n, m), limit=200)
    assert mass == pytest.approx(1.0, abs=1e-6)
    evals = esd(gaussian(n, m, np.sqrt(sigma2), seed=5))
    grid = np.linspace(lo, hi, 4001)
    cdf = integrate.cumulative_trapezoid(mp_density(grid, sigma2, n, m), grid, initial=0)
    empirical = np.searchsorted(evals, grid, side="right") / m
    assert np.abs(cdf - empirical).max() < 0.02


def test_degenerate_inputs_do_not_raise():
    assert np.isnan(fit_mp(np.array([]), 10, 10).sigma_mp)
    assert np.isnan(fit_mp(np.zeros(10), 10, 10).lambda_plus)
    assert np.isnan(fit_mp(np.array([1.0, np.nan]), 10, 2).sigma_mp)
