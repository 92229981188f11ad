"""Is the tail a power law?  Likelihood-ratio tests against the alternatives.

docs/theory.md section 3.4; Clauset, Shalizi & Newman (2009),
"Power-law distributions in empirical data", SIAM Review 51(4), section 5 and
appendix C (CSN below).

On the tail that the power-law fit used (the eigenvalues in ``[xmin, xmax]``;
``xmax`` is a truncation point only when "fingers" were clipped) each
alternative is fitted by maximum likelihood, normalised on the same range:

=====================  ======================================
exponential            ``p(x) ~ exp(-lam x)``
lognormal              ``p(x) ~ exp(-(ln x - mu)^2 / (2 s^2)) / x``
truncated power law    ``p(x) ~ x^-a exp(-lam x)`` (an exponential cut-off)
=====================  ======================================

and compared with the fitted power law ``p(x) ~ x^-alpha`` (alpha as fitted,
not refitted) by the log-likelihood ratio

    R = sum_i [ln p_pl(x_i) - ln p_alt(x_i)]      (R > 0: the power law is likelier)

with Vuong's significance ``p = erfc(|R| / sqrt(2 n s^2))``, ``s^2`` the
variance of the pointwise differences (CSN eq. C.6), and, for the nested
truncated power law (``lam = 0`` is the power law), Wilks'
``p = P(chi2_1 > 2 |R|)`` (CSN appendix C).  A small ``p`` says the sign of R is
significant; a large one that the data cannot tell the two apart.  These are the
conventions of the ``powerlaw`` package's ``distribution_compare`` (tested
against it).

Every family is closed under scaling and R does not change with the unit, so the
fits work in ``t = x / xmin >= 1``; ``lam`` is reported in the units of ``x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALTERNATIVES = ("exponential", "lognormal", "truncated_power_law")
SIGNIFICANCE = 0.1  # p below which the sign of R decides (CSN section 5 uses 0.1)


@dataclass(frozen=True)
class Comparison:
    """Power law against one alternative on the same tail."""

    alternative: str
    R: float  # log-likelihood ratio, power law minus alternative
    p: float  # significance of the sign of R
    params: tuple[float, ...]  # the alternative's MLE, in the units of x


@dataclass(frozen=True)
class TailTests:
    """The three comparisons and the verdict they support."""

    comparisons: dict[str, Comparison]
    verdict: str  # see :func:`verdict`

    @classmethod
    def undefined(cls) -> TailTests:
        nan = math.nan
        sizes = {"exponential": 1, "lognormal": 2, "truncated_power_law": 2}
        return cls({a: Comparison(a, nan, nan, (nan,) * sizes[a]) for a in ALTERNATIVES}, "")


def compare_tail(
    evals: np.ndarray, xmin: float, alpha: float, xmax: float | None = None
) -> TailTests:
    """Test the power law ``alpha`` on the eigenvalues in ``[xmin, xmax]`` against the alternatives.

    ``xmax=None``: the power law and the alternatives run to infinity; a number:
    all are truncated there (the fit with fingers clipped).
    """
    x = np.asarray(evals, dtype=np.float64)
    keep = x >= xmin if xmax is None else (x >= xmin) & (x <= xmax)
    t = np.sort(x[keep]) / xmin
    if t.size < 3 or not (math.isfinite(alpha) and alpha > 1.0):
        return TailTests.undefined()
    tmax = math.inf if xmax is None else xmax / xmin
    pl = power_law_loglik(t, alpha, tmax)
    fits = {
        "exponential": fit_exponential(t, tmax),
        "lognormal": fit_lognormal(t, tmax),
        "truncated_power_law": fit_truncated_power_law(t, tmax, start_alpha=alpha),
    }
    comparisons = {}
    for name, (params, loglik) in fits.items():
        R, p = likelihood_ratio(pl, loglik, nested=name == "truncated_power_law")
        comparisons[name] = Comparison(name, R, p, _to_x_units(name, params, xmin))
    return TailTests(comparisons, verdict(comparisons))


def verdict(comparisons: dict[str, Comparison], significance: float = SIGNIFICANCE) -> str:
    """Which law the tests support.

    An alternative that beats the power law significantly (R < 0, p < significance)
    wins, the likeliest of them if several do; except that the truncated power law
    gives way to the exponential it contains (``a = 0``) when both win and it is not
    significantly likelier (Wilks, as in :func:`likelihood_ratio`).  With no such
    alternative: ``"power_law"`` if it beats the exponential significantly (a heavy
    tail at all), else ``"undecided"``.  A power law that merely ties with the
    lognormal is still ``"power_law"``: CSN find the two indistinguishable on most
    real data.
    """
    better = {c.alternative: c for c in comparisons.values() if c.R < 0 and c.p < significance}
    if better:
        best = min(better.values(), key=lambda c: c.R)
        if best.alternative == "truncated_power_law" and "exponential" in better:
            gain = better["exponential"].R - best.R  # log-likelihood the extra parameter buys
            if wilks_p(gain) >= significance:
                return "exponential"
        return best.alternative
    exp = comparisons["exponential"]
    return "power_law" if exp.R > 0 and exp.p < significance else "undecided"


def likelihood_ratio(
    loglik1: np.ndarray, loglik2: np.ndarray, nested: bool = False
) -> tuple[float, float]:
    """``(R, p)``: ``R = sum(l1 - l2)``; Vuong's ``p`` or, nested, Wilks' (CSN appendix C)."""
    d = loglik1 - loglik2
    R = float(d.sum())
    if nested:
        return R, wilks_p(R)
    s = float(d.std())
    if s == 0.0:
        return R, 1.0 if R == 0.0 else 0.0
    from scipy import special  # scipy loads when a test runs: 0.15 s of every start-up

    return R, float(special.erfc(abs(R) / (s * math.sqrt(2.0 * d.size))))


def wilks_p(R: float) -> float:
    """``P(chi2_1 > 2|R|)``: significance of a log-likelihood gain of one nested parameter."""
    from scipy import stats

    return float(stats.chi2.sf(abs(2.0 * R), 1))


def power_law_loglik(t: np.ndarray, alpha: float, tmax: float = math.inf) -> np.ndarray:
    """``ln p(t)``, ``p(t) = (alpha - 1) t^-alpha / (1 - tmax^(1 - alpha))`` on ``[1, tmax]``."""
    return -alpha * np.log(t) - _log_power_law_mass(alpha, tmax)


def _log_power_law_mass(a: float, tmax: float) -> float:
    """``ln int_1^tmax t^-a dt`` (infinite when it diverges)."""
    if a <= 1.0 and math.isinf(tmax):
        return math.inf
    if a == 1.0:
        return math.log(math.log(tmax))
    if a > 1.0:  # (1 - tmax^(1-a)) / (a - 1), accurately for tmax near 1 or infinite
        return math.log1p(-(tmax ** (1.0 - a))) - math.log(a - 1.0)
    return math.log((tmax ** (1.0 - a) - 1.0) / (1.0 - a))


def exponential_loglik(t: np.ndarray, lam: float, tmax: float = math.inf) -> np.ndarray:
    """``ln p(t)``, ``p(t) = lam exp(-lam (t - 1)) / (1 - exp(-lam (tmax - 1)))`` on ``[1, tmax]``."""
    log_mass = 0.0 if math.isinf(tmax) else math.log(-math.expm1(-lam * (tmax - 1.0)))
    return math.log(lam) - lam * (t - 1.0) - log_mass


def fit_exponential(t: np.ndarray, tmax: float = math.inf) -> tuple[tuple[float], np.ndarray]:
    """MLE of the exponential: ``lam = 1 / (mean(t) - 1)`` untruncated, numerical when truncated."""
    from scipy import optimize

    lam = 1.0 / (float(t.mean()) - 1.0) if t.mean() > 1.0 else 1e6
    if not math.isinf(tmax):
        res = optimize.minimize_scalar(
            lambda ln_lam: -exponential_loglik(t, math.exp(ln_lam), tmax).sum(),
            bracket=(math.log(lam) - 1.0, math.log(lam)),
        )
        lam = math.exp(float(res.x))
    return (lam,), exponential_loglik(t, lam, tmax)


def lognormal_loglik(t: np.ndarray, mu: float, s: float, tmax: float = math.inf) -> np.ndarray:
    """``ln p(t)`` of the lognormal ``(mu, s)`` conditioned on ``[1, tmax]``."""
    a = -mu / s  # standardised ln 1
    log_mass = _log_normal_mass(a, (math.log(tmax) - mu) / s if math.isfinite(tmax) else math.inf)
    if math.isinf(log_mass):  # no mass on [1, tmax] in double precision
        return np.full(t.shape, -math.inf)
    z = (np.log(t) - mu) / s
    return -0.5 * z**2 - math.log(s * math.sqrt(2.0 * math.pi)) - np.log(t) - log_mass


def _log_normal_mass(a: float, b: float) -> float:
    """``log P(a < Z <= b)`` for a standard normal Z, from the nearer tail (no cancellation)."""
    from scipy import special

    if math.isinf(b):
        return float(special.log_ndtr(-a))
    if a > 0.0:  # both in the upper tail: Q(a) - Q(b) = Q(a) (1 - Q(b) / Q(a))
        big, ratio = special.log_ndtr(-a), special.log_ndtr(-b) - special.log_ndtr(-a)
    else:  # Phi(b) - Phi(a) = Phi(b) (1 - Phi(a) / Phi(b))
        big, ratio = special.log_ndtr(b), special.log_ndtr(a) - special.log_ndtr(b)
    return float(big + math.log1p(-math.exp(ratio))) if ratio < 0.0 else -math.inf


def fit_lognormal(t: np.ndarray, tmax: float = math.inf) -> tuple[tuple[float, float], np.ndarray]:
    """MLE of the lognormal on the tail, by Nelder-Mead from several starts.

    The likelihood often keeps rising as ``mu -> -inf`` with ``s`` growing (the
    lognormal then mimics a power law), so starts far below the data are tried
    and the best optimum kept; ``mu`` is held above ``-MU_FLOOR`` standard units.
    """
    from scipy import optimize

    lt = np.log(t)
    n, m, sd = t.size, float(lt.mean()), max(float(lt.std()), 1e-3)
    log_b = math.log(tmax) if math.isfinite(tmax) else math.inf
    # sum_i (ln t_i - mu)^2 = n (var + (mean - mu)^2): the data enter only through these
    var, const = float(lt.var()), n * math.log(math.sqrt(2.0 * math.pi)) + float(lt.sum())

    def nll(p: np.ndarray) -> float:
        mu, s = float(p[0]), math.exp(float(p[1]))
        if mu < -MU_FLOOR * s:
            return math.inf
        log_mass = _log_normal_mass(-mu / s, (log_b - mu) / s)
        value = 0.5 * n * (var + (m - mu) ** 2) / s**2 + n * (math.log(s) + log_mass) + const
        return value if math.isfinite(value) else math.inf

    best = None
    for mu0, s0 in ((m, sd), (0.0, sd), (-5.0 * sd, 2.0 * sd), (-20.0 * sd, 5.0 * sd)):
        res = optimize.minimize(
            nll,
            np.array([mu0, math.log(s0)]),
            method="Nelder-Mead",
            options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
        )
        if best is None or res.fun < best.fun:
            best = res
    mu, s = float(best.x[0]), math.exp(float(best.x[1]))
    return (mu, s), lognormal_loglik(t, mu, s, tmax)


MU_FLOOR = 50.0  # lognormal mu >= -50 s: beyond, ln t is in the far upper tail of N(mu, s^2)


def truncated_power_law_loglik(
    t: np.ndarray, a: float, lam: float, tmax: float = math.inf
) -> np.ndarray:
    """``ln p(t)``, ``p(t) = t^-a exp(-lam (t - 1)) / Z`` on ``[1, tmax]``.

    ``Z = int_1^tmax t^-a exp(-lam (t - 1)) dt``: closed form at ``lam = 0``, else by
    quadrature in ``u = ln t``, where the integrand ``exp((1 - a) u - lam (e^u - 1))``
    decays at least exponentially.
    """
    return -a * np.log(t) - lam * (t - 1.0) - _log_tpl_mass(a, lam, tmax)


def _log_tpl_mass(a: float, lam: float, tmax: float) -> float:
    from scipy import integrate, optimize

    if lam == 0.0:  # the power law itself
        return _log_power_law_mass(a, tmax)
    # the integrand exp(f(u)), f(u) = (1 - a) u - lam (e^u - 1), is log-concave: integrate
    # from 0 to where f has fallen TAIL_DROP below its peak (or to ln tmax), scaled by the peak
    peak = max(0.0, math.log((1.0 - a) / lam)) if a < 1.0 else 0.0
    f_peak = _tpl_exponent(peak, a, lam)
    hi = peak + 1.0
    while _tpl_exponent(hi, a, lam) > f_peak - TAIL_DROP:
        hi = 2.0 * hi
    cut = optimize.brentq(lambda u: _tpl_exponent(u, a, lam) - f_peak + TAIL_DROP, peak, hi)
    umax = cut if math.isinf(tmax) else min(cut, math.log(tmax))
    value, _ = integrate.quad(
        lambda u: math.exp(_tpl_exponent(u, a, lam) - f_peak),
        0.0,
        umax,
        points=[peak] if 0.0 < peak < umax else None,
        epsabs=0.0,
        epsrel=1e-11,
        limit=200,
    )
    return f_peak + math.log(value) if value > 0 else math.inf


TAIL_DROP = 60.0  # e^-60: the truncated power law's mass beyond is below double precision


def _tpl_exponent(u: float, a: float, lam: float) -> float:
    return (1.0 - a) * u - (lam * math.expm1(u) if u < 700.0 else math.inf)


def fit_truncated_power_law(
    t: np.ndarray, tmax: float = math.inf, start_alpha: float = 2.0
) -> tuple[tuple[float, float], np.ndarray]:
    """MLE of ``(a, lam)`` with ``lam >= 0``, started at the power law (``lam = 0``).

    The power law is the ``lam = 0`` member, so the optimum is never below it:
    the nested test's ``R <= 0`` holds by construction.
    """
    from scipy import optimize

    lt_sum = float(np.log(t).sum())
    shift_sum = float((t - 1.0).sum())
    n = t.size

    def nll(p: np.ndarray) -> float:
        a, lam = float(p[0]), float(p[1])
        if lam < 0.0:
            return math.inf
        value = a * lt_sum + lam * shift_sum + n * _log_tpl_mass(a, lam, tmax)
        return value if math.isfinite(value) else math.inf

    start = np.array([start_alpha, 0.0])
    candidates = [(nll(start), start)]
    scale = 1.0 / max(float(t.mean()) - 1.0, 1e-12)  # the exponential's lam
    for x0 in ([start_alpha, 0.1 * scale], [1.0, scale], [0.5 * start_alpha, 0.01 * scale]):
        res = optimize.minimize(
            nll,
            np.array(x0),
            method="Nelder-Mead",
            options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 4000},
        )
        candidates.append((float(res.fun), res.x))
    _, (a, lam) = min(candidates, key=lambda c: c[0])
    a, lam = float(a), max(float(lam), 0.0)
    return (a, lam), truncated_power_law_loglik(t, a, lam, tmax)


def _to_x_units(name: str, params: tuple[float, ...], xmin: float) -> tuple[float, ...]:
    """Parameters fitted on ``t = x / xmin`` in the units of ``x``."""
    if name == "exponential":
        return (params[0] / xmin,)
    if name == "lognormal":
        return (params[0] + math.log(xmin), params[1])
    return (params[0], params[1] / xmin)
