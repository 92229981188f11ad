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
    k = 0
    for _ in range(max_iter):
        bulk = total - k
        sigma2 = csum[bulk] / bulk / N
        threshold = tracy_widom_threshold(sigma2, N, M, t)
        k_new = min(total - int(np.searchsorted(evals, threshold, side="right")), total - 1)
        if k_new == k or sigma2 <= 0:
            break
        k = k_new
    lam_minus, lam_plus = mp_edges(sigma2, N, M)
    return MPFit(
        sigma_mp=sqrt(sigma2),
        lambda_plus=lam_plus,
        lambda_minus=lam_minus,
        spike_threshold=threshold,
        num_spikes=k,
        mp_softrank=lam_plus / evals[-1],
    )
