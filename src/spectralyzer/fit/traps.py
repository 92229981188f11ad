"""Correlation traps and ``rand_distance`` from the top of a shuffled copy's spectrum
(docs/theory.md section 3.8).

The randomised ESD enters the metrics through its Marchenko-Pastur fit only, and
that fit (:func:`~.mp.fit_mp_top`) needs the sum of all its eigenvalues (the
squared Frobenius norm, which a shuffle keeps), how many are not zero, and the
largest ones down to the first below the spike threshold.  The traps are the
spikes of that fit; ``rand_distance`` is the Kolmogorov-Smirnov distance between
the layer's ESD and the fitted law of its shuffled copy: the MP bulk, the traps
as point masses and the structural zeros as a mass at 0 (:func:`rand_cdf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .mp import MPFit, fit_mp_top, mp_cdf

#: a Ritz value settles the fit when its residual is below this times ``lambda_max``
#: (and below its distance to the threshold); measured in docs/theory.md section 3.8
SETTLED = 2e-2
#: or when it has risen from check to check by a ratio below RISE_RATIO and SAFETY times
#: the rise still to come at that ratio leaves it below the threshold (the same section)
RISE_RATIO = 0.8
SAFETY = 3.0


@dataclass(frozen=True)
class Check:
    """One look at a growing Krylov space: its Ritz values (descending), its fit's traps."""

    theta: np.ndarray
    traps: int


@dataclass(frozen=True)
class ShuffledTop:
    """What the trap metrics need of a layer's shuffled copy, in the ESD's units."""

    top: np.ndarray  # its largest eigenvalues, descending (all of them when computed in full)
    total: float  # the sum of all its eigenvalues: ||W||_F^2, pooled over slices
    count: int  # its eigenvalues that are not structural zeros (all-zero rows or columns)
    size: int  # all its eigenvalues, slices * M
    error: float  # a bound on the error of each eigenvalue in ``top``
    finite: bool = True  # False for non-finite weights or eigenvalues beyond float64

    @classmethod
    def undefined(cls, size: int) -> ShuffledTop:
        return cls(np.empty(0), math.nan, 0, size, math.nan, finite=False)

    def scaled(self, factor: float) -> ShuffledTop:
        """The same spectrum times ``factor`` (e.g. 1/N for a normalised ESD)."""
        return ShuffledTop(
            self.top * factor, self.total * factor, self.count, self.size, self.error * factor
        )


def trap_fit(top: ShuffledTop, N: int, M: int) -> MPFit:
    """The MP fit of the shuffled copy; its ``num_spikes`` are the traps."""
    if not top.finite:
        return MPFit.failed()
    fit = fit_mp_top(top.top, top.total, top.count, N, M, error=top.error)
    if fit is None:
        raise ValueError("the known top of the shuffled spectrum does not reach the threshold")
    return fit


def settles(
    fit: MPFit,
    theta: np.ndarray,
    residuals: np.ndarray,
    count: int,
    N: int,
    before: tuple[Check, Check] | None = None,
) -> bool:
    """Whether Ritz values ``theta`` (descending, lower bounds of the largest eigenvalues)
    with their residual norms settle ``fit``, the shuffled copy's fit replayed from them;
    ``before`` holds the two previous looks at the same space, one block apart.

    Settled: the fit reaches a Ritz value below its threshold, and that value stays
    below it either by more than its residual (an eigenvalue is within the residual of
    every Ritz value, which must be below ``SETTLED lambda_max``) or by more than
    ``SAFETY`` times the rise still to come when its rises shrink geometrically
    (:func:`rise_to_come`); the traps' residuals are below ``SETTLED lambda_max`` and
    their errors (``min(r, r^2 / gap)``) negligible in the bulk's sum.  A failed fit is
    final: Ritz values are lower bounds and the total is exact, so when the known ones
    hold the whole sum the rest are zeros.
    """
    if math.isnan(fit.sigma_mp):
        return True
    k = fit.num_spikes
    r = residuals[: k + 1]
    if (r[:k] > SETTLED * theta[0]).any():
        return False
    by_residual = r[k] <= SETTLED * theta[0] and theta[k] + r[k] < fit.spike_threshold
    to_come = rise_to_come(theta, k, before)
    by_rise = to_come is not None and theta[k] + SAFETY * to_come < fit.spike_threshold
    if not (by_residual or by_rise):
        return False
    gaps = np.maximum(theta[:k] - theta[1 : k + 1], 1e-300)
    trap_errors = np.minimum(r[:k], r[:k] ** 2 / gaps).sum()
    return bool(trap_errors <= 1e-6 * fit.sigma_mp**2 * N * (count - k))


def rise_to_come(theta: np.ndarray, k: int, before: tuple[Check, Check] | None) -> float | None:
    """How far the ``k``-th Ritz value may still rise, if its last two rises shrink by a
    ratio ``q < RISE_RATIO`` (a geometric tail, ``d q / (1 - q)``); ``None`` without two
    earlier looks that counted ``k`` traps too, or when the rises do not shrink so.

    A Ritz value of a growing (nested) space never falls (Cauchy interlacing), and at the
    edge of a Marchenko-Pastur bulk it converges about geometrically (docs/theory.md 3.8).
    """
    if before is None or any(check.traps != k for check in before):
        return None
    older, last = before
    first, second = last.theta[k] - older.theta[k], theta[k] - last.theta[k]
    if not (first > 0 and 0 <= second < RISE_RATIO * first):
        return None
    ratio = second / first
    return float(second * ratio / (1 - ratio))


def rand_cdf(x: np.ndarray, top: ShuffledTop, fit: MPFit, N: int, M: int) -> np.ndarray:
    """Distribution function of the shuffled copy's fitted law: structural zeros at 0,
    ``count - k`` eigenvalues in the MP bulk, the ``k`` traps as point masses.  Without
    a bulk (a failed fit) it is the known eigenvalues above their error as point masses,
    and zeros."""
    x = np.asarray(x, dtype=float)
    bulk = not math.isnan(fit.sigma_mp)
    points = top.top[: fit.num_spikes] if bulk else top.top[top.top > top.error]
    zeros = top.size - (top.count if bulk else points.size)
    mass = zeros * (x >= 0) + points.size - np.searchsorted(-points, -x, side="left")
    if bulk:
        mass = mass + (top.count - fit.num_spikes) * mp_cdf(x, fit.sigma_mp**2, N, M)
    return mass / top.size


def rand_distance(evals: np.ndarray, top: ShuffledTop, fit: MPFit, N: int, M: int) -> float:
    """``sup_x |F_ESD(x) - F_rand(x)|`` for an ascending ESD (numerical zeros set to 0 by
    the caller): checked on both sides of every jump of either (the fitted law is
    continuous elsewhere)."""
    points = np.concatenate((evals, top.top, [0.0]))
    below = np.nextafter(points, -np.inf)
    n = evals.size
    gaps = [
        np.searchsorted(evals, points, side="right") / n - rand_cdf(points, top, fit, N, M),
        np.searchsorted(evals, below, side="right") / n - rand_cdf(below, top, fit, N, M),
    ]
    return float(np.abs(np.concatenate(gaps)).max())
