"""Continuous power-law fit of an ESD's tail (docs/theory.md section 3.1).

Method of Clauset, Shalizi & Newman (2009), "Power-law distributions in
empirical data", SIAM Review 51(4):661-703 (CSN below):

* for a candidate ``xmin`` and the ``n`` eigenvalues ``lambda_i >= xmin``, the
  maximum-likelihood exponent is ``alpha = 1 + n / sum ln(lambda_i / xmin)``
  (CSN eq. 3.1), with standard error ``sigma = (alpha - 1) / sqrt(n)`` (eq. 3.2);
* ``D`` is the Kolmogorov-Smirnov distance between the empirical CDF of the tail
  and the fitted ``P(lambda) = 1 - (lambda / xmin)^(1 - alpha)`` (eq. 3.9);
* ``xmin`` is the candidate of smallest ``D`` (CSN section 3.3).

It reproduces ``powerlaw.Fit(evals, parameter_ranges={'alpha': [1, None]})``
of the ``powerlaw`` package 2.0 (Alstott et al.), which weightwatcher calls on
the eigenvalues above 1e-10.  The details that decide which xmin wins:

* candidates are the distinct eigenvalues except the two largest (powerlaw scans
  ``unique(x[x < max(x)])`` and drops the last one); fewer than 2 candidates
  (fewer than 4 distinct eigenvalues) is a failed fit;
* ``D = max_k |P(u_k) - F(u_k)|`` over the distinct tail values ``u_k``, where
  ``F(u)`` is the fraction of the tail *strictly below* ``u`` (so both CDFs
  are 0 at ``xmin`` and the empirical value 1 is never used);
* a candidate counts only if ``alpha - 0.01 >= 1`` (powerlaw flags fits within
  0.01 of a parameter bound as noise and ``alpha > 1`` must hold);
* ties in ``D`` go to the smallest ``xmin`` (first index of an argmin).

powerlaw 2.0 takes the closed form above as it is only when it lies in
``(1.5, 3]``; elsewhere it minimises the same likelihood with Nelder-Mead
(``tol=1e-4``) started from it.  Started at the exact optimum, Nelder-Mead
returns it, so in practice the two agree to rounding (tested); the bound on the
difference is that tolerance.

``xmax`` (the "fingers" fix: leave out a few outsized eigenvalues) fits the
eigenvalues in ``[xmin, xmax]`` to the power law truncated at ``xmax``, density
``(alpha - 1) x^-alpha / (xmin^(1-alpha) - xmax^(1-alpha))``: alpha is the
root of the truncated likelihood equation and ``D`` uses the truncated CDF
``(1 - (x/xmin)^(1-alpha)) / (1 - (xmax/xmin)^(1-alpha))``.  That is what
powerlaw 1.x did and what powerlaw 2.0 documents; powerlaw 2.0's code uses the
untruncated closed form whenever that lands in ``(1.5, 3]`` (its Nelder-Mead
path, elsewhere, maximises the truncated likelihood as here).

The scan is vectorised: the alphas of all candidates come from suffix sums of
``ln lambda`` over the sorted eigenvalues, and the KS distances from a
(candidates x tail values) array built in cache-sized blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

XMIN_FLOOR = 1e-10  # eigenvalues at or below are numerical zeros (weightwatcher's threshold)
ALPHA_MARGIN = 0.01  # powerlaw rejects fits with alpha - 0.01 < 1 (too close to the bound 1)
_BLOCK_ELEMENTS = 1 << 15  # entries of the KS work array per block (256 KiB of float64)
_PROBES = 16  # candidates whose exact D sets the pruning threshold after a coarse pass


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`; alpha, xmin, xmax, D and sigma are NaN when it failed."""

    alpha: float  # power-law exponent of the tail
    xmin: float  # start of the tail (one of the eigenvalues)
    xmax: float  # largest eigenvalue used in the fit
    D: float  # KS distance at the chosen xmin
    sigma: float  # (alpha - 1) / sqrt(n_tail)
    n_tail: int  # eigenvalues used: xmin <= lambda (<= xmax)
    status: str  # "ok" or "failed"
    reason: str  # "" when ok, else why the fit failed

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, reason: str) -> PowerLawFit:
        nan = math.nan
        return cls(nan, nan, nan, nan, nan, 0, "failed", reason)


def fit_power_law(
    evals: np.ndarray,
    *,
    xmin_floor: float = XMIN_FLOOR,
    xmax: float | None = None,
    min_tail: int = 3,
    xmin_range: tuple[float, float] | None = None,
) -> PowerLawFit:
    """Fit ``p(lambda) ~ lambda^-alpha`` above the KS-optimal ``xmin`` (CSN 2009, eqs 3.1, 3.9).

    ``evals``: the ESD (any order).  Only eigenvalues ``> xmin_floor`` take part,
    and with ``xmax`` only those ``<= xmax`` (fitted to the power law truncated
    at ``xmax``).  ``min_tail``: a candidate xmin must leave at least this many
    eigenvalues in the tail; the default 3 never binds (powerlaw's candidates
    always leave 3 distinct values), so it matches powerlaw.  ``xmin_range=(lo, hi)``
    keeps candidates in ``[lo, hi]`` only (powerlaw's ``xmin=(lo, hi)``; docs/theory.md 6.1).

    Never raises on a 1-D float array: an empty or degenerate ESD, non-finite
    values, or no acceptable candidate give ``status="failed"`` with NaN alpha
    and a reason.  Raises ``ValueError`` for input that is not 1-D.
    """
    x = np.asarray(evals, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"evals must be a 1-D array, got shape {x.shape}")
    if x.size == 0:
        return PowerLawFit.failed("no eigenvalues")
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(x.size - finite.sum()) - n_nan
        return PowerLawFit.failed(f"non-finite eigenvalues ({n_nan} NaN, {n_inf} inf)")
    if xmax is not None and not (math.isfinite(xmax) and xmax > xmin_floor):
        return PowerLawFit.failed(f"xmax={xmax} is not a finite number above {xmin_floor:g}")

    keep = x > xmin_floor
    if xmax is not None:
        keep &= x <= xmax
    x = np.sort(x[keep])
    where = f"above {xmin_floor:g}" + ("" if xmax is None else f" and <= {xmax:g}")
    if x.size == 0:
        return PowerLawFit.failed(f"no eigenvalues {where}")

    # distinct values u_k, the index of their first occurrence, and G_k = #{x >= u_k}
    new = np.empty(x.size, dtype=bool)
    new[0] = True
    np.not_equal(x[1:], x[:-1], out=new[1:])
    first = np.flatnonzero(new)
    u = x[first]
    if u.size < 4:
        return PowerLawFit.failed(
            f"fewer than 4 distinct eigenvalues {where} ({u.size}); "
            "need 2 candidate xmins below the two largest"
        )
    count_ge = (x.size - first).astype(np.float64)

    n_cand = u.size - 2  # powerlaw never tries the two largest distinct values
    n = count_ge[:n_cand]
    lu = np.log(u)
    alpha = _candidate_alphas(x, first[:n_cand], lu[:n_cand], n, xmax)
    valid = (n >= min_tail) & np.isfinite(alpha) & (alpha - ALPHA_MARGIN >= 1.0)
    if xmin_range is not None:
        valid &= (u[:n_cand] >= xmin_range[0]) & (u[:n_cand] <= xmin_range[1])
    if not valid.any():
        if xmin_range is not None:
            return PowerLawFit.failed(f"no valid candidate xmin in [lo, hi] = {xmin_range}")
        if not (n >= min_tail).any():
            return PowerLawFit.failed(f"no candidate xmin leaves min_tail={min_tail} eigenvalues")
        return PowerLawFit.failed(f"no candidate xmin gives alpha >= {1 + ALPHA_MARGIN}")

    D = _ks_distances(lu, count_ge, alpha, valid, xmax)
    j = int(np.argmin(D))  # first index among equal minima: the smallest xmin, like powerlaw
    xmin = float(u[j])
    tail = x[first[j] :]
    a = float(alpha[j])
    if xmax is None:  # recompute with powerlaw's own expression (same value up to rounding)
        a = 1.0 + tail.size / float(np.sum(np.log(tail / xmin)))
    d = _ks_one(lu[j:], count_ge[j:], a, xmax)
    return PowerLawFit(
        alpha=a,
        xmin=xmin,
        xmax=float(x[-1]),
        D=d,
        sigma=(a - 1.0) / math.sqrt(tail.size),
        n_tail=int(tail.size),
        status="ok",
        reason="",
    )


def _candidate_alphas(
    x: np.ndarray, start: np.ndarray, lu: np.ndarray, n: np.ndarray, xmax: float | None
) -> np.ndarray:
    """Maximum-likelihood alpha for every candidate ``xmin = x[start]`` at once.

    ``L_j = sum_{i >= start_j} ln(x_i / xmin_j)`` from one suffix sum of the logs
    (shifted by the largest log so the tails near the top lose no digits).
    """
    shift = math.log(x[-1])
    suffix = np.cumsum((np.log(x) - shift)[::-1])[::-1]
    log_ratio_sum = suffix[start] - n * (lu - shift)
    with np.errstate(divide="ignore", invalid="ignore"):
        if xmax is None:
            alpha = 1.0 + n / log_ratio_sum  # CSN eq. 3.1
            alpha[log_ratio_sum <= 0] = np.nan
            return alpha
        span = math.log(xmax) - lu  # ln(xmax / xmin) > 0
        return 1.0 + _truncated_exponent(log_ratio_sum / n / span) / span


def _truncated_exponent(mu: np.ndarray) -> np.ndarray:
    """Solve ``1/z - 1/(e^z - 1) = mu`` for ``z > 0`` (NaN where ``mu >= 1/2``).

    The likelihood equation of the power law truncated to ``[xmin, xmax]``:
    with ``b = alpha - 1``, ``t = ln(xmax/xmin)`` and ``m`` the mean of
    ``ln(x/xmin)``, ``1/b - t/(e^(bt) - 1) = m``; ``z = b t``, ``mu = m / t``.
    The left side falls from 1/2 (z -> 0) to 0, so a root z > 0 exists iff
    ``mu < 1/2``; otherwise the MLE has alpha <= 1.  Safeguarded Newton.
    """
    z = np.full(mu.shape, np.nan)
    ok = (mu > 0) & (mu < 0.5)
    m = mu[ok]
    lo = np.zeros_like(m)
    hi = 1.0 / m  # h(z) < 1/z, so the root lies below the untruncated solution 1/mu
    zz = hi.copy()
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for _ in range(100):
            h, dh = _h_and_slope(zz)
            f = h - m  # decreasing in z
            lo = np.where(f > 0, zz, lo)
            hi = np.where(f <= 0, zz, hi)
            step = np.where(dh < 0, f / dh, np.nan)
            nxt = zz - step
            bad = ~((nxt > lo) & (nxt < hi))
            nxt[bad] = 0.5 * (lo[bad] + hi[bad])
            done = np.abs(nxt - zz) <= 1e-15 * nxt
            zz = nxt
            if done.all():
                break
    z[ok] = zz
    return z


def _h_and_slope(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(z) = 1/z - 1/(e^z - 1)`` and ``h'(z)``, with the series near 0."""
    small = z < 1e-4
    zs = np.where(small, 1.0, z)
    h = np.where(small, 0.5 - z / 12.0, 1.0 / zs - 1.0 / np.expm1(zs))
    dh = np.where(small, -1.0 / 12.0 + z * z / 240.0, 0.25 / np.sinh(zs / 2) ** 2 - 1.0 / zs**2)
    return h, dh


def _ks_distances(
    lu: np.ndarray, count_ge: np.ndarray, alpha: np.ndarray, valid: np.ndarray, xmax: float | None
) -> np.ndarray:
    """KS distance ``D_j`` of the valid candidates ``xmin_j = u_j``; inf for the others.

    With ``e_jk = (u_k / u_j)^(1 - alpha_j)`` and ``G_k = #{x >= u_k}``, the
    difference of the CDFs at a distinct tail value ``u_k >= u_j`` is
    ``P - F = (1 - F) - (1 - P) = G_k / n_j - e_jk`` (CSN eq. 3.9); with ``xmax``
    the model CCDF is ``s_j (e_jk - q_j)``, ``q_j = (xmax / u_j)^(1 - alpha_j)``,
    ``s_j = 1 / (1 - q_j)``.

    Coarse to fine: on every ``stride``-th distinct value both CCDFs are known,
    and since both decrease with ``k``, between two such points ``k1 < k2``
    ``P - F <= (1 - F)(k1) - (1 - P)(k2)`` and ``F - P <= (1 - P)(k1) - (1 - F)(k2)``.
    So each pass gives a lower bound (the points seen) and an upper bound (the
    intervals) of every ``D_j``; candidates whose lower bound exceeds the
    smallest upper bound cannot win and are dropped before the next, finer pass.
    The last pass (stride 1) is exact.  Pruned candidates keep ``inf``.
    """
    n_rows = alpha.size
    out = np.full(n_rows, np.inf)
    b = np.where(valid, alpha - 1.0, 1.0)
    inv_n = 1.0 / count_ge[:n_rows]
    if xmax is None:
        scale = offset = None
    else:
        q, scale = _truncation(b, math.log(xmax) - lu[:n_rows])
        offset = q * scale
    rows = np.flatnonzero(valid)
    args = (lu, count_ge, inv_n, b, scale, offset)
    every = np.arange(lu.size)
    best = np.inf
    for stride in _strides(lu.size):
        exact = stride == 1
        cols = every if exact else np.append(every[::stride], every[-1])
        lower, upper = _ks_bounds(*args, rows, cols, exact)
        best = min(best, float(upper.min()))
        if not exact:  # the exact D of the most promising few tightens the threshold
            few = np.sort(rows[np.argsort(upper, kind="stable")[:_PROBES]])
            best = min(best, float(_ks_bounds(*args, few, every, True)[0].min()))
        keep = lower <= best + 1e-12 * (1.0 + best)
        rows = rows[keep]
        if exact:
            out[rows] = lower[keep]
    return out


def _ks_one(lu: np.ndarray, count_ge: np.ndarray, alpha: float, xmax: float | None) -> float:
    """``D`` of the candidate ``xmin = u_0`` with exponent ``alpha`` (a single exact pass)."""
    b = np.array([alpha - 1.0])
    inv_n = 1.0 / count_ge[:1]
    scale = offset = None
    if xmax is not None:
        q, scale = _truncation(b, math.log(xmax) - lu[:1])
        offset = q * scale
    rows, cols = np.zeros(1, dtype=np.intp), np.arange(lu.size)
    return float(_ks_bounds(lu, count_ge, inv_n, b, scale, offset, rows, cols, True)[0][0])


def _truncation(b: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``q = (xmax/xmin)^(1-alpha)`` and ``s = 1 / (1 - q)`` for ``span = ln(xmax/xmin)``."""
    return np.exp(-b * span), -1.0 / np.expm1(-b * span)


def _strides(size: int) -> tuple[int, ...]:
    """Pass strides of :func:`_ks_distances` for ``size`` distinct values (measured, 2 cores)."""
    if size <= 256:
        return (1,)
    if size <= 1024:
        return (8, 1)
    if size <= 3072:
        return (32, 4, 1)
    if size <= 12288:
        return (64, 8, 1)
    return (256, 32, 4, 1)


def _ks_bounds(
    lu: np.ndarray,
    count_ge: np.ndarray,
    inv_n: np.ndarray,
    b: np.ndarray,
    scale: np.ndarray | None,
    offset: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
    exact: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of ``D_j`` for the candidates ``rows`` from the columns ``cols``.

    ``rows`` and ``cols`` (ending at the largest value) are ascending distinct-value indices.
    Columns below a row's own ``j`` are clamped to ``k = j`` (both CCDFs 1), so
    they add nothing and the first interval of a row starts at its ``xmin``.
    With ``exact`` (all columns) both bounds are ``D_j``.
    """
    lower = np.empty(rows.size)
    upper = np.empty(rows.size)
    r0 = 0
    with np.errstate(over="ignore", invalid="ignore"):
        while r0 < rows.size:
            c0 = int(np.searchsorted(cols, rows[r0], side="right")) - 1  # grid point <= first j
            ncols = cols.size - c0
            r1 = min(rows.size, r0 + max(8, _BLOCK_ELEMENTS // ncols))
            rb, cb = rows[r0:r1], cols[c0:]
            # model CCDF (1 - P): e_jk, times s_j with xmax; raw values leave out + q_j s_j
            model = np.subtract.outer(lu[rb], lu[cb])  # ln(u_j / u_k)
            np.minimum(model, 0.0, out=model)
            model *= b[rb, None]
            np.exp(model, out=model)
            if scale is not None:
                model *= scale[rb, None]
            data = np.multiply.outer(inv_n[rb], count_ge[cb])  # empirical CCDF (1 - F)
            np.minimum(data, 1.0, out=data)
            off = 0.0 if offset is None else offset[rb]
            if exact:
                data -= model
                hi = data.max(axis=1) + off
                lo = data.min(axis=1) + off
                lower[r0:r1] = upper[r0:r1] = np.maximum(hi, -lo)
            else:
                diff = data - model
                hi = diff.max(axis=1) + off
                lo = diff.min(axis=1) + off
                lower[r0:r1] = np.maximum(hi, -lo)
                np.subtract(data[:, :-1], model[:, 1:], out=diff[:, 1:])
                hi = diff[:, 1:].max(axis=1) + off
                np.subtract(model[:, :-1], data[:, 1:], out=diff[:, 1:])
                lo = diff[:, 1:].max(axis=1) - off
                upper[r0:r1] = np.maximum(np.maximum(hi, lo), lower[r0:r1])
            r0 = r1
    return lower, upper


MAX_FINGERS = 5  # most top eigenvalues --fix-fingers may clip
FINGER_P = 0.01  # a clipped eigenvalue must be this unlikely under the clipped fit


def fit_power_law_clipped(
    evals: np.ndarray,
    *,
    max_fingers: int = MAX_FINGERS,
    p: float = FINGER_P,
    xmin_floor: float = XMIN_FLOOR,
) -> tuple[PowerLawFit, int]:
    """The fit with the "fingers" clipped, and how many were clipped (docs/theory.md section 3.3).

    Fingers are a few outsized eigenvalues that the tail's power law does not
    predict and that drag alpha down.  For ``k = 1 .. max_fingers`` the tail is
    refitted without the ``k`` largest eigenvalues (``xmax`` just below them,
    truncated power law as in :func:`fit_power_law`); they are fingers when even
    the smallest of them is implausible under that fit: the chance that the
    largest of ``n_tail`` draws reaches it, about
    ``n_tail (lambda / xmin)^(1 - alpha)``, is below ``p``.  The largest such
    ``k`` is clipped; with none, this is the plain fit and ``k = 0``.
    """
    x = np.sort(np.asarray(evals, dtype=np.float64))
    best, best_k = fit_power_law(x, xmin_floor=xmin_floor), 0
    for k in range(1, min(max_fingers, x.size - 4) + 1):
        if not x[-k - 1] > xmin_floor:
            break
        fit = fit_power_law(x, xmin_floor=xmin_floor, xmax=float(x[-k - 1]))
        if fit.status != "ok":
            continue
        chance = fit.n_tail * (x[-k] / fit.xmin) ** (1.0 - fit.alpha)
        if chance < p:
            best, best_k = fit, k
    return best, best_k
