"""Marchenko-Pastur fit of an ESD's random bulk (docs/theory.md section 2).

For ``W`` (N x M, N >= M, Q = N/M) with i.i.d. entries of variance sigma^2, the
eigenvalues of ``W^T W / N`` fill ``[lambda_-, lambda_+]`` with
``lambda_± = sigma^2 (1 ± 1/sqrt(Q))^2`` (Marchenko & Pastur 1967).  The ESD
here is not divided by N, so in its scale ``lambda_± = sigma^2 (sqrt(N) ± sqrt(M))^2``.

Fit.  ``E tr(W^T W) = N M sigma^2``, so the mean eigenvalue of the bulk divided
by N estimates sigma^2.  Spikes inflate that mean, so the fit iterates: estimate
sigma^2 from the eigenvalues below the spike threshold, recount the spikes,
repeat until the count stops changing (it can only grow, so this terminates).

Spike threshold.  The largest eigenvalue of a white Wishart matrix fluctuates on
the Tracy-Widom scale (Johnstone 2001, Ann. Statist. 29, Thm 1):
``mu = (sqrt(N-1) + sqrt(M))^2``, ``s = (sqrt(N-1) + sqrt(M)) (1/sqrt(N-1) + 1/sqrt(M))^(1/3)``
(times sigma^2).  An eigenvalue is a spike when it exceeds
``sigma^2 (mu + t s)`` with ``t`` the TW1 quantile 2.02 (P = 0.99, Johnstone
Table 1), so a pure random matrix shows a false spike about 1 time in 100.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import sqrt

import numpy as np

TW1_QUANTILE_99 = 2.02  # Tracy-Widom (beta=1) 99% quantile, Johnstone (2001) Table 1


@dataclass(frozen=True)
class MPFit:
    """Marchenko-Pastur fit of one ESD, in the ESD's own scale (eigenvalues of W^T W)."""

    sigma_mp: float  # entry standard deviation of the bulk
    lambda_plus: float  # upper bulk edge sigma^2 (sqrt(N) + sqrt(M))^2
    lambda_minus: float  # lower bulk edge sigma^2 (sqrt(N) - sqrt(M))^2
    spike_threshold: float  # lambda_plus plus the Tracy-Widom margin
    num_spikes: int  # eigenvalues above spike_threshold
    mp_softrank: float  # lambda_plus / lambda_max

    @classmethod
    def failed(cls) -> MPFit:
        nan = float("nan")
        return cls(nan, nan, nan, nan, 0, nan)


def mp_edges(sigma2: float, N: int, M: int) -> tuple[float, float]:
    """``(lambda_-, lambda_+) = sigma^2 (sqrt(N) -/+ sqrt(M))^2`` in the W^T W scale."""
    return sigma2 * (sqrt(N) - sqrt(M)) ** 2, sigma2 * (sqrt(N) + sqrt(M)) ** 2


def tracy_widom_threshold(sigma2: float, N: int, M: int, t: float = TW1_QUANTILE_99) -> float:
    """``sigma^2 (mu_NM + t s_NM)``: Johnstone's centring and scaling of lambda_max."""
    a, b = sqrt(max(N - 1, 1)), sqrt(M)
    mu = (a + b) ** 2
    scale = (a + b) * (1 / a + 1 / b) ** (1 / 3)
    return sigma2 * (mu + t * scale)


def mp_density(x: np.ndarray, sigma2: float, N: int, M: int) -> np.ndarray:
    """MP density of the eigenvalues of W^T W (not /N), zero outside the bulk.

    ``rho(l) = Q / (2 pi sigma^2 l) sqrt((l+ - l)(l - l-))`` for ``l = x / N``,
    divided by N for the change of variable.
    """
    q = N / M
    lo, hi = sigma2 * (1 - 1 / sqrt(q)) ** 2, sigma2 * (1 + 1 / sqrt(q)) ** 2
    lam = np.asarray(x, dtype=float) / N
    inside = (lam > lo) & (lam < hi)
    dens = np.zeros_like(lam)
    li = lam[inside]
    dens[inside] = q / (2 * np.pi * sigma2 * li) * np.sqrt((hi - li) * (li - lo))
    return dens / N


def fit_mp(
    evals: np.ndarray,
    N: int,
    M: int,
    *,
    zero_tol: float = 0.0,
    t: float = TW1_QUANTILE_99,
    max_iter: int = 200,
) -> MPFit:
    """Fit the MP bulk of an ascending ESD of ``N x M`` matrices (pooled slices allowed).

    Eigenvalues at or below ``zero_tol`` are numerical zeros of a rank-deficient
    matrix; an MP bulk with ``Q >= 1`` has none, so they are left out.
    """
    evals = np.asarray(evals, dtype=float)
    if not np.isfinite(evals).all():
        return MPFit.failed()
    evals = evals[evals > max(zero_tol, 0.0)]
    total = evals.size
    if total < 2:
        return MPFit.failed()
    csum = np.concatenate(([0.0], np.cumsum(evals)))

    def above(threshold: float) -> int:
        return total - int(np.searchsorted(evals, threshold, side="right"))

    k, sigma2, threshold = _spike_iteration(
        lambda k: csum[total - k], above, total, N, M, t, max_iter
    )
    return _fit_of(sigma2, threshold, k, float(evals[-1]), N, M)


def fit_mp_top(
    top: np.ndarray,
    total_sum: float,
    count: int,
    N: int,
    M: int,
    *,
    error: float = 0.0,
    t: float = TW1_QUANTILE_99,
    max_iter: int = 200,
) -> MPFit | None:
    """:func:`fit_mp` of an ESD of which only the largest eigenvalues ``top`` (descending)
    are known, with the sum ``total_sum`` and number ``count`` of all its non-zero ones.

    The fit needs no more (docs/theory.md section 3.8): the bulk sum is ``total_sum``
    less the spikes.  ``None`` when the iteration counts past the known eigenvalues
    (a threshold at or below ``top[-1]``, unless ``top`` holds all ``count``).
    ``error`` bounds the error of each known eigenvalue: a bulk sum within the
    spikes' errors is rounding noise (a constant matrix is all spike), and the fit fails.
    """
    top = np.asarray(top, dtype=float)
    if count < 2 or not np.isfinite(top).all() or not total_sum > 0:
        return MPFit.failed()
    if top.size == 0:
        return None
    csum = np.concatenate(([0.0], np.cumsum(top)))
    complete = top.size >= count
    short = False

    def bulk_sum(k: int) -> float:
        return total_sum - csum[k]

    def above(threshold: float) -> int:
        nonlocal short
        n = int(np.count_nonzero(top > threshold))
        short = short or (n == top.size and not complete)
        return n

    k, sigma2, threshold = _spike_iteration(bulk_sum, above, count, N, M, t, max_iter)
    if short:
        return None
    if not bulk_sum(k) > (k + 1) * error:
        return MPFit.failed()  # the spikes are everything: rounding noise is no bulk
    return _fit_of(sigma2, threshold, k, float(top[0]), N, M)


def _spike_iteration(
    bulk_sum: Callable[[int], float],
    above: Callable[[float], int],
    total: int,
    N: int,
    M: int,
    t: float,
    max_iter: int,
) -> tuple[int, float, float]:
    """The fit's iteration (module docstring): ``sigma^2`` from the ``total - k``
    smallest eigenvalues (``bulk_sum(k)``), ``k`` the count ``above`` the threshold,
    until ``k`` stops changing.  Returns ``(k, sigma^2, threshold)``."""
    k = 0
    for _ in range(max_iter):
        bulk = total - k
        sigma2 = bulk_sum(k) / bulk / N
        threshold = tracy_widom_threshold(sigma2, N, M, t)
        k_new = min(above(threshold), total - 1)
        if k_new == k or sigma2 <= 0:
            break
        k = k_new
    return k, sigma2, threshold


def _fit_of(sigma2: float, threshold: float, k: int, lambda_max: float, N: int, M: int) -> MPFit:
    lam_minus, lam_plus = mp_edges(sigma2, N, M)
    return MPFit(
        sigma_mp=sqrt(max(sigma2, 0.0)),
        lambda_plus=lam_plus,
        lambda_minus=lam_minus,
        spike_threshold=threshold,
        num_spikes=k,
        mp_softrank=lam_plus / lambda_max,
    )


def mp_cdf(x: np.ndarray, sigma2: float, N: int, M: int) -> np.ndarray:
    """MP distribution function of the eigenvalues of W^T W (not /N): the integral of
    :func:`mp_density` from 0, in closed form (docs/theory.md section 3.8).

    With ``y = M/N <= 1`` and ``u = x / (N sigma^2)`` in ``[a, b] = [(1 - sqrt y)^2, (1 + sqrt y)^2]``,
    ``F = 1/2 + [R + (1 + y) asin((u - 1 - y) / (2 sqrt y))
    - (1 - y) asin(((1 + y) u - (1 - y)^2) / (2 sqrt(y) u))] / (2 pi y)``,
    ``R = sqrt((b - u)(u - a))``: the antiderivative of ``sqrt((b - u)(u - a)) / (2 pi y u)``.
    """
    y = M / N
    root = sqrt(y)
    a, b = (1 - root) ** 2, (1 + root) ** 2
    u = np.asarray(x, dtype=float) / (N * sigma2)
    out = np.where(u >= b, 1.0, 0.0)
    inside = (u > a) & (u < b)
    v = u[inside]
    r = np.sqrt((b - v) * (v - a))
    first = np.arcsin(np.clip((v - 1 - y) / (2 * root), -1.0, 1.0))
    second = np.arcsin(np.clip(((1 + y) * v - (1 - y) ** 2) / (2 * root * v), -1.0, 1.0))
    out[inside] = 0.5 + (r + (1 + y) * first - (1 - y) * second) / (2 * np.pi * y)
    return out
