"""Small-end outliers: eigenvalues below the Marchenko-Pastur lower edge (docs/theory.md section 6.3).

Staats, Thamm & Rosenow (NeurIPS 2025) find that trained layers deviate from
the MP law at the small end as well as above ``lambda_+``, and that those small
singular values carry information an SVD truncation would remove.

Tolerance, mirroring the spike threshold of :mod:`spectralyzer.fit.mp`: for
``N > M`` the smallest eigenvalue of a white Wishart matrix sits below
``mu_- = sigma^2 (sqrt(N) - sqrt(M))^2`` by Tracy-Widom fluctuations of scale
``s_- = sigma^2 (sqrt(N) - sqrt(M)) (1/sqrt(M) - 1/sqrt(N))^(1/3)``
(Feldheim & Sodin 2010, GAFA 20).  An eigenvalue is a small-end outlier when it
is above the numerical-zero tolerance (zeros are ``rank_loss``) and below
``mu_- - t s_-`` with ``t`` the same TW1 99% quantile 2.02, so a pure random
matrix shows a false one about 1 time in 100.  At ``N = M`` the lower edge is
0 (a hard edge) and none are counted.
"""

from __future__ import annotations

import math

import numpy as np

from .mp import TW1_QUANTILE_99, MPFit


def lower_edge_threshold(sigma2: float, N: int, M: int, t: float = TW1_QUANTILE_99) -> float:
    """``sigma^2 (mu_- - t s_-)`` for ``N x M`` matrices (``N >= M``), at least 0."""
    a, b = math.sqrt(N), math.sqrt(M)
    if a <= b:
        return 0.0
    mu = (a - b) ** 2
    scale = (a - b) * (1 / b - 1 / a) ** (1 / 3)
    return max(0.0, sigma2 * (mu - t * scale))


def count_small_outliers(evals: np.ndarray, mp: MPFit, N: int, M: int, zero_tol: float) -> int:
    """Eigenvalues in ``(zero_tol, lower_edge_threshold)`` under the fitted MP law."""
    if not math.isfinite(mp.sigma_mp):
        return 0
    threshold = lower_edge_threshold(mp.sigma_mp**2, N, M)
    x = np.asarray(evals, dtype=np.float64)
    return int(np.count_nonzero((x > zero_tol) & (x < threshold)))
