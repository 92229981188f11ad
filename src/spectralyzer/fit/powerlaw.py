"""Power-law fit of an ESD tail by a vectorised Clauset-Shalizi-Newman scan.

For each candidate ``xmin`` (THEORY.md section 3; Clauset, Shalizi & Newman
2009, SIAM Review 51(4), eqs. 3.1, 3.7 and 3.9):

* ``alpha = 1 + n / sum_{x_i >= xmin} ln(x_i / xmin)``, the continuous MLE over
  the ``n`` eigenvalues at or above ``xmin``;
* ``D = max_j |C(u_j) - T(u_j)|`` over the distinct values ``u_j >= xmin``, with
  the empirical tail CDF ``C(u) = #{xmin <= x < u} / n`` and the fitted CDF
  ``T(u) = 1 - (u / xmin)^(1 - alpha)``;

and the fit is the candidate of smallest ``D`` among those with ``alpha > 1``;
``sigma = (alpha - 1) / sqrt(n)`` (eq. 3.2).  Candidates are the distinct
eigenvalues above ``xmin_floor`` except the two largest, and the CDF
conventions are those of the ``powerlaw`` package (2.0), so the result equals
``powerlaw.Fit(evals, parameter_ranges={'alpha': [1, None]})`` (tested to
1e-6; its default ``Fit(evals)`` caps alpha at 3, THEORY.md explains why that
is the wrong reference).  Running sums over the sorted eigenvalues give every
candidate's alpha at once; the KS distances are computed in blocks of
candidates, so a 4096-eigenvalue fit takes milliseconds instead of the
package's seconds.

``xmax`` (the "fingers" fix of THEORY.md) drops eigenvalues above it before the
scan and renormalises ``T`` to ``[xmin, xmax]``; alpha stays the untruncated
MLE on the kept eigenvalues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

XMIN_FLOOR = 1e-10  # eigenvalues at or below are numerical zeros (as weightwatcher)
_BLOCK_ELEMENTS = 1 << 21  # KS block size: candidates x distinct values per block


@dataclass(frozen=True)
class PowerLawFit:
    """The fitted tail ``p(lambda) ~ lambda^-alpha`` for ``xmin <= lambda <= xmax``."""

    alpha: float  # NaN when the fit failed
    xmin: float
    xmax: float  # largest eigenvalue used in the fit
    D: float  # Kolmogorov-Smirnov distance at the chosen xmin
    sigma: float  # standard error (alpha - 1) / sqrt(n_tail)
    n_tail: int  # eigenvalues in [xmin, xmax]
    status: str  # "ok" or "failed"
    reason: str  # why the fit failed; "" when ok

    @classmethod
    def failed(cls, reason: str) -> PowerLawFit:
        nan = math.nan
        return cls(nan, nan, nan, nan, nan, 0, "failed", reason)


def fit_power_law(
    evals: np.ndarray, *, xmin_floor: float = XMIN_FLOOR, xmax: float | None = None
) -> PowerLawFit:
    """Fit the power-law tail of a 1-D array of eigenvalues (any order)."""
    x = np.asarray(evals, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"eigenvalues must be a 1-D array, not shape {x.shape}")
    if not np.isfinite(x).all():
        return PowerLawFit.failed("non-finite eigenvalues")
    x = np.sort(x[x > xmin_floor])
    if xmax is not None:
        x = x[x <= xmax]
    unique = np.unique(x)
    if unique.size < 4:
        return PowerLawFit.failed(f"fewer than 4 distinct eigenvalues above {xmin_floor:g}")

    candidates = unique[:-2]  # as powerlaw: neither the largest value nor the one below it
    logs = np.log(x)
    # first index of each candidate in x, and the tail sums of log(x) from there
    first = np.searchsorted(x, candidates, side="left")
    tail_log_sum = np.cumsum(logs[::-1])[::-1]
    n = x.size - first
    log_xmin = np.log(candidates)
    with np.errstate(divide="ignore"):
        alphas = 1.0 + n / (tail_log_sum[first] - n * log_xmin)
    valid = np.isfinite(alphas) & (alphas > 1.0)
    if not valid.any():
        return PowerLawFit.failed("no candidate xmin gives alpha > 1")

    distances = _ks_distances(x, unique, candidates, first, alphas, xmax)
    distances[~valid] = np.inf
    best = int(np.argmin(distances))
    alpha, count = float(alphas[best]), int(n[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(candidates[best]),
        xmax=float(x[-1]),
        D=float(distances[best]),
        sigma=(alpha - 1.0) / math.sqrt(count),
        n_tail=count,
        status="ok",
        reason="",
    )


def _ks_distances(
    x: np.ndarray,
    unique: np.ndarray,
    candidates: np.ndarray,
    first: np.ndarray,
    alphas: np.ndarray,
    xmax: float | None,
) -> np.ndarray:
    """KS distance of every candidate, computed in blocks of candidates.

    Row ``k`` compares, over distinct values ``u_j >= u_k``, the empirical
    ``C = (#{x < u_j} - #{x < u_k}) / n_k`` with ``T = 1 - (u_j / u_k)^(1 - alpha_k)``
    (divided by ``1 - (xmax / u_k)^(1 - alpha_k)`` when ``xmax`` is given).
    Each block only visits the columns ``j >= `` its first candidate.
    """
    below = np.searchsorted(x, unique, side="left").astype(np.float64)  # #{x < u_j}
    log_u = np.log(unique)
    out = np.empty(candidates.size)
    step = max(1, _BLOCK_ELEMENTS // unique.size)
    for start in range(0, candidates.size, step):
        stop = min(start + step, candidates.size)
        expo = (1.0 - alphas[start:stop])[:, None]
        log_k = log_u[start:stop, None]
        inv_n = 1.0 / (x.size - first[start:stop]).astype(np.float64)[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            theo = np.expm1(expo * (log_u[None, start:] - log_k))  # -T
            if xmax is not None:
                theo /= -np.expm1(expo * (math.log(xmax) - log_k))
            diff = (below[None, start:] - below[start:stop, None]) * inv_n  # C
            diff += theo  # C - T
        np.abs(diff, out=diff)
        # columns left of each row's own candidate (u_j < u_k) do not count
        tri = np.arange(stop - start)
        diff[:, : stop - start][tri[:, None] > tri[None, :]] = 0.0
        out[start:stop] = np.nanmax(diff, axis=1) if np.isnan(diff).any() else diff.max(axis=1)
    return out
