"""One layer's ESD (and randomised ESD) -> one row of metrics (docs/theory.md section 3).

All metrics are computed on the ESD as given (eigenvalues of ``W^T W``, not
divided by N, unless the caller normalised it).  ``log`` is base 10.

=====================  =====================================================
alpha, xmin, xmax, D,  continuous power-law fit of the tail (Clauset et al. 2009),
sigma, n_tail          sigma = (alpha - 1) / sqrt(n_tail)
num_fingers            top eigenvalues clipped from the fit (``fix_fingers``)
detx_num, erg_gap      SETOL's detX count and ``detx_num - n_tail`` (:mod:`~.fit.detx`),
                       on the ESD the estimator fitted
alpha_weighted         ``alpha * log10(lambda_max)`` (alpha-hat)
log_norm               ``log10(sum lambda_i)`` = log10 ||W||_F^2
log_spectral_norm      ``log10(lambda_max)`` = log10 ||W||_2^2
log_alpha_norm         ``log10(sum lambda_i^alpha)`` (Schatten alpha-norm)
stable_rank            ``sum lambda_i / lambda_max``
entropy                ``-sum p_i ln p_i / ln R``, ``p_i = lambda_i / sum lambda``
                       over the R non-zero eigenvalues (0 when R = 1)
rank_loss              eigenvalues at or below the numerical-zero tolerance
sigma_mp, lambda_plus, Marchenko-Pastur fit (:mod:`spectralyzer.fit.mp`)
num_spikes, mp_softrank
num_small_outliers     eigenvalues below the MP lower edge (:mod:`~.fit.small_end`)
num_traps              spikes of the randomised ESD's MP fit (correlation traps)
rand_distance          Kolmogorov-Smirnov distance between the ESD and the fitted
                       law of the randomised copy (scale-free, in [0, 1])
tail_law, R_*, p_*,    likelihood-ratio tests of the power-law tail against the
tpl_alpha, tpl_lambda  exponential, lognormal and truncated power law
                       (``tail_tests``; :mod:`spectralyzer.fit.tail_tests`)
=====================  =====================================================

The estimator (``clauset`` by default) fits alpha on the layer's ESD or, with
FARMS, on its windows' pooled ESD (docs/theory.md section 6.1).

Numerical zero: ``lambda <= 10 M eps64 lambda_max``, the float64 rounding floor
of the Gram matrix's eigenvalues (docs/theory.md section 1.6).  The storage
dtype plays no part: rounding weights to bfloat16, fp8 or int8 adds noise of
full rank, which is not rank loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import ESD, LayerSpectra
from .fit.detx import detx_num
from .fit.estimators import Estimator
from .fit.mp import MPFit, fit_mp
from .fit.phases import classify_phase
from .fit.powerlaw import XMIN_FLOOR, PowerLawFit, fit_power_law_clipped
from .fit.small_end import count_small_outliers
from .fit.tail_tests import TailTests, compare_tail
from .fit.traps import ShuffledTop, rand_distance, trap_fit
from .windows import FarmsSettings, window_grid

ALPHA_UNDER_TRAINED = 6.0  # alpha above: under-trained / random-like (docs/theory.md section 3.5)
ALPHA_OVER_TRAINED = 2.0  # alpha below: over-trained, very heavy-tailed
FEW_EVALS = 50  # below this many eigenvalues the alpha estimator is biased (Clauset et al. 3.3)
_EPS64 = float(np.finfo(np.float64).eps)

COUNTS = (
    "n_tail",
    "num_fingers",
    "detx_num",
    "rank_loss",
    "num_spikes",
    "num_small_outliers",
)  # integer columns, 0 when undefined
#: Columns that come from the power-law or Marchenko-Pastur fit (or the shuffled copy's),
#: so undefined where no fit applies (a LoRA update's rank-r spectrum, :mod:`.low_rank`);
#: a new fitted column belongs here.
FIT_FIELDS = (
    "alpha",
    "alpha_weighted",
    "xmin",
    "xmax",
    "D",
    "sigma",
    "log_alpha_norm",
    "erg_gap",
    "sigma_mp",
    "lambda_plus",
    "mp_softrank",
    "num_traps",
    "rand_distance",
    "R_exponential",
    "p_exponential",
    "R_lognormal",
    "p_lognormal",
    "R_truncated",
    "p_truncated",
    "tpl_alpha",
    "tpl_lambda",
)
FIT_COUNTS = ("n_tail", "num_fingers", "num_spikes", "num_small_outliers")  # of COUNTS
WARNINGS = (
    "nonfinite-weights",
    "eigenvalue-overflow",  # finite weights whose eigenvalues exceed the float64 range
    "fit-failed",
    "fit-not-applicable",  # a low-rank update's few eigenvalues are its whole spectrum
    "few-evals",
    "over-trained",
    "under-trained",
    "correlation-trap",
    "flow-jump",  # set across layers by spectralyzer.flow (alpha jumps along depth)
)


@dataclass(frozen=True)
class LayerMetrics:
    """Every number spectralyzer reports for one layer; NaN where undefined."""

    name: str
    layer_type: str
    shape: tuple[int, ...]
    N: int
    M: int
    Q: float
    num_slices: int
    num_evals: int
    lambda_max: float
    alpha: float
    alpha_weighted: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    n_tail: int
    num_fingers: int  # top eigenvalues clipped from the fit (--fix-fingers), else 0
    detx_num: int  # SETOL: top eigenvalues whose rescaled product reaches 1
    erg_gap: float  # detx_num - n_tail (NaN when the fit failed)
    log_norm: float
    log_spectral_norm: float
    log_alpha_norm: float
    stable_rank: float
    entropy: float
    rank_loss: int
    sigma_mp: float
    lambda_plus: float
    num_spikes: int
    mp_softrank: float
    num_small_outliers: int  # eigenvalues below the MP lower edge (fit.small_end)
    num_traps: float  # NaN when the randomised check was not run
    rand_distance: float
    # likelihood-ratio tests of the tail (NaN and "" when not run): R > 0 favours the power law
    tail_law: str  # the law the tests support (fit.tail_tests.verdict)
    R_exponential: float
    p_exponential: float
    R_lognormal: float
    p_lognormal: float
    R_truncated: float  # against the truncated power law x^-a exp(-lam x)
    p_truncated: float
    tpl_alpha: float  # its exponent a
    tpl_lambda: float  # its cut-off rate lam, in the units of the eigenvalues
    phase: str
    warning: str  # ";"-joined codes from WARNINGS, "" when none


def zero_tolerance(lambda_max: float, M: int) -> float:
    """Eigenvalues at or below this are numerical zeros (docs/theory.md section 1.6).

    The bound is the float64 eigensolver's: each eigenvalue of the ``M x M`` Gram
    matrix is within about ``M eps64 lambda_max`` of the exact one (factor 10 of
    margin), whatever dtype the weights were stored in.  A floor set by the
    storage epsilon (``eps_dtype^2 lambda_max``, lambda_max/64 for fp8 e4m3) made
    the full-rank rounding noise of a quantised matrix count as rank loss.  It stays
    the float64 one under ``--precision float32``, whose eigenvalues below about
    ``M eps32 lambda_max`` are rounding noise (docs/theory.md section 1.5).
    """
    return lambda_max * 10 * M * _EPS64


def norm_metrics(evals: np.ndarray, alpha: float, tol: float) -> dict[str, float]:
    """Norm-based metrics of an ascending, non-empty ESD (formulas in the module docstring)."""
    lam_max = float(evals[-1])
    total = float(evals.sum())
    positive = evals[evals > tol]
    rank = positive.size
    if rank > 1:
        p = positive / positive.sum()
        entropy = float(-(p * np.log(p)).sum() / math.log(rank))
    else:
        entropy = 0.0
    if math.isfinite(alpha) and rank:
        log_alpha_norm = float(np.logaddexp.reduce(alpha * np.log(positive)) / math.log(10))
    else:
        log_alpha_norm = math.nan
    log = _log10
    return {
        "lambda_max": lam_max,
        "log_norm": log(total),
        "log_spectral_norm": log(lam_max),
        "alpha_weighted": alpha * log(lam_max),
        "log_alpha_norm": log_alpha_norm,
        "stable_rank": total / lam_max if lam_max > 0 else math.nan,
        "entropy": entropy,
        "rank_loss": int(evals.size - rank),
    }


def trap_metrics(esd: ESD, randomized: ShuffledTop | None, N: int, M: int) -> tuple[float, float]:
    """(num_traps, rand_distance): the spikes of the shuffled copy's MP fit, and the KS
    distance between the ESD and that copy's fitted law (:mod:`spectralyzer.fit.traps`)."""
    if randomized is None or not randomized.finite:
        return math.nan, math.nan
    fit = trap_fit(randomized, N, M)
    evals = esd.evals
    evals = np.where(evals > zero_tolerance(float(evals[-1]), M), evals, 0.0)  # docs/theory.md 1.6
    return float(fit.num_spikes), rand_distance(evals, randomized, fit, N, M)


def warnings_for(pl: PowerLawFit, num_evals: int, num_traps: float) -> list[str]:
    """The warning codes of a layer (see WARNINGS)."""
    codes = []
    if pl.status != "ok":
        codes.append("fit-failed")
    if num_evals < FEW_EVALS:
        codes.append("few-evals")
    if pl.alpha < ALPHA_OVER_TRAINED:
        codes.append("over-trained")
    if pl.alpha > ALPHA_UNDER_TRAINED:
        codes.append("under-trained")
    if num_traps > 0:
        codes.append("correlation-trap")
    return codes


def layer_metrics(
    spectra: LayerSpectra,
    *,
    scale: float = 1.0,
    fix_fingers: bool = False,
    tail_tests: bool = False,
    estimator: Estimator = Estimator(),  # noqa: B008 - frozen, safe default
    farms: FarmsSettings | None = None,
) -> LayerMetrics:
    """All metrics of one layer.

    ``scale`` multiplies the eigenvalues (1/N to normalise); ``fix_fingers``
    clips outsized top eigenvalues from the power-law fit
    (:func:`spectralyzer.fit.powerlaw.fit_power_law_clipped`; clauset only); ``tail_tests``
    tests that fit against the alternatives (:mod:`spectralyzer.fit.tail_tests`).
    ``estimator`` fits alpha; with ``farms`` (and ``spectra.farms``) it fits the
    windows' pooled ESD, scaled by ``scale * N / r`` (window rows ``r``).
    """
    spec = spectra.spec
    base = {
        "name": spec.name,
        "layer_type": spec.layer_type,
        "shape": spec.shape,
        "N": spec.N,
        "M": spec.M,
        "Q": spec.N / spec.M,
        "num_slices": spec.num_slices,
        "num_evals": spec.num_evals,
    }
    if not spectra.esd.finite:
        return _undefined(
            base, "eigenvalue-overflow" if spectra.esd.overflow else "nonfinite-weights"
        )
    evals = spectra.esd.evals * scale
    tol = zero_tolerance(float(evals[-1]), spec.M)
    # numerical zeros are not part of the tail: the fit's floor is the zero
    # tolerance (relative to lambda_max), never below powerlaw's absolute 1e-10
    fitted, fitted_tol = fit_esd(spectra, scale, farms, evals, tol)
    floor = max(XMIN_FLOOR, fitted_tol)
    if fix_fingers:
        pl, fingers = fit_power_law_clipped(fitted, xmin_floor=floor)
    else:
        pl, fingers = estimator.fit(fitted, floor), 0
    detx = detx_num(fitted, fitted_tol)
    mp = fit_mp(evals, spec.N, spec.M, zero_tol=tol)
    norms = norm_metrics(evals, pl.alpha, tol)
    # trap count and KS distance are invariant to a common scale: use the raw ESDs
    num_traps, rand_distance = trap_metrics(spectra.esd, spectra.randomized, spec.N, spec.M)
    tails = TailTests.undefined()
    if tail_tests and pl.ok:  # on the fit's own range: truncated at xmax when fingers were clipped
        tails = compare_tail(fitted, pl.xmin, pl.alpha, xmax=pl.xmax if fingers else None)
    return LayerMetrics(
        **base,
        **norms,
        alpha=pl.alpha,
        xmin=pl.xmin,
        xmax=pl.xmax,
        D=pl.D,
        sigma=pl.sigma,
        n_tail=pl.n_tail,
        num_fingers=fingers,
        detx_num=detx,
        erg_gap=detx - pl.n_tail if pl.ok else math.nan,
        **_mp_fields(mp),
        num_small_outliers=count_small_outliers(evals, mp, spec.N, spec.M, tol),
        num_traps=num_traps,
        rand_distance=rand_distance,
        **tail_fields(tails),
        phase=classify_phase(evals, mp, pl.alpha, norms["rank_loss"]),
        warning=";".join(warnings_for(pl, spec.num_evals, num_traps)),
    )


def fit_esd(
    spectra: LayerSpectra,
    scale: float,
    farms: FarmsSettings | None,
    evals: np.ndarray,
    tol: float,
) -> tuple[np.ndarray, float]:
    """The ESD the estimator fits and its zero tolerance: the layer's (``evals``, ``tol``)
    or, with FARMS, the windows' pooled ESD (docs/theory.md section 6.1)."""
    if farms is None or spectra.farms is None:
        return evals, tol
    spec = spectra.spec
    grid = window_grid(spec.N, spec.M, farms)
    pooled = spectra.farms.evals * (scale * spec.N / grid.rows)
    if pooled.size == 0:  # eigenvalues of the windows beyond the float64 range
        return pooled, 0.0
    return pooled, zero_tolerance(float(pooled[-1]), grid.cols)


def tail_fields(tails: TailTests) -> dict[str, float | str]:
    """The LayerMetrics fields of the tail tests."""
    c = tails.comparisons
    tpl = c["truncated_power_law"].params
    return {
        "tail_law": tails.verdict,
        "R_exponential": c["exponential"].R,
        "p_exponential": c["exponential"].p,
        "R_lognormal": c["lognormal"].R,
        "p_lognormal": c["lognormal"].p,
        "R_truncated": c["truncated_power_law"].R,
        "p_truncated": c["truncated_power_law"].p,
        "tpl_alpha": tpl[0],
        "tpl_lambda": tpl[1],
    }


def _mp_fields(mp: MPFit) -> dict[str, float]:
    return {
        "sigma_mp": mp.sigma_mp,
        "lambda_plus": mp.lambda_plus,
        "num_spikes": mp.num_spikes,
        "mp_softrank": mp.mp_softrank,
    }


def _undefined(base: dict, warning: str) -> LayerMetrics:
    """A row whose metrics are all NaN, carrying the reason in ``warning``."""
    nan = math.nan
    numbers = {
        f: nan
        for f in LayerMetrics.__dataclass_fields__
        if f not in base and f not in COUNTS + ("phase", "warning", "tail_law")
    }
    return LayerMetrics(
        **base,
        **numbers,
        **dict.fromkeys(COUNTS, 0),
        tail_law="",
        phase="unknown",
        warning=warning,
    )


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else math.nan
