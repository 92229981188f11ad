"""The Hill estimator: the power-law MLE at a fixed xmin (docs/theory.md section 6.1).

TempBalance, AlphaDecay and the model-balancing code ("alpha_mid") fix xmin at
the median eigenvalue: with the ``N`` eigenvalues ascending, ``i = floor(N/2)``,
``n = N - i`` and ``alpha = 1 + n / (sum_{j >= i} ln lambda_j - n ln lambda_i)``.
AlphaQ keeps the top ``k = max(10, floor(0.1 N))`` eigenvalues instead.

That is the estimator of CSN eq. 3.1 with xmin given, so it is the scan of
:func:`~spectralyzer.fit.powerlaw.fit_power_law` restricted to the one candidate
``xmin = lambda_i`` (same alpha, KS distance ``D`` and ``sigma = (alpha-1)/sqrt(n)``).
Should other eigenvalues equal ``lambda_i`` exactly, the tail holds all of them.
"""

from __future__ import annotations

import numpy as np

from .powerlaw import XMIN_FLOOR, PowerLawFit, fit_power_law

HILL_TAILS = ("median", "alphaq")  # named tail sizes; an integer k is also accepted
ALPHAQ_MIN_K = 10  # AlphaQ: at least 10 eigenvalues in the tail ...
ALPHAQ_FRACTION = 0.1  # ... or a tenth of them, whichever is more
MIN_K = 3  # the scan needs three distinct values at or above xmin


def hill_tail_size(num_evals: int, k: str | int = "median") -> int:
    """Eigenvalues in the tail: ``N - floor(N/2)``, AlphaQ's ``max(10, floor(0.1 N))``
    or ``k`` itself, never more than ``N``."""
    if k == "median":
        return num_evals - num_evals // 2
    if k == "alphaq":
        return min(num_evals, max(ALPHAQ_MIN_K, int(ALPHAQ_FRACTION * num_evals)))
    return min(num_evals, int(k))


def fit_hill(
    evals: np.ndarray, *, k: str | int = "median", xmin_floor: float = XMIN_FLOOR
) -> PowerLawFit:
    """Hill fit of the eigenvalues above ``xmin_floor`` with ``xmin`` at rank ``N - tail``.

    ``k``: ``"median"`` (alpha_mid), ``"alphaq"`` or an integer tail size.  Fails as
    :func:`fit_power_law` does (NaN alpha and a reason), never raises on a 1-D array.
    """
    x = np.asarray(evals, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        return fit_power_law(x, xmin_floor=xmin_floor)  # its error or failure
    x = np.sort(x[x > xmin_floor])
    if x.size == 0:
        return PowerLawFit.failed(f"no eigenvalues above {xmin_floor:g}")
    xmin = float(x[x.size - hill_tail_size(x.size, k)])
    return fit_power_law(x, xmin_floor=xmin_floor, xmin_range=(xmin, xmin))
