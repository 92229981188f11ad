"""What an ESD panel shows, as numbers: the histogram and the fitted curves of one layer.

One computation for both drawings of a panel, the matplotlib figure of ``plot``
(:mod:`.plots`) and the SVG of the report (:mod:`.svg`). The curves are the fitted
models of docs/theory.md sections 2 and 3: the power law
``p(x) = (alpha - 1) / xmin (x / xmin)^-alpha`` on ``[xmin, xmax]``, scaled by the
tail's share of the eigenvalues, the Marchenko-Pastur density with the fitted
sigma (:func:`spectralyzer.fit.mp.mp_density`) and, with ``--randomize``, the fitted
law of the shuffled copy (:func:`spectralyzer.fit.traps.rand_cdf`) with its traps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..fit.mp import mp_density
from ..fit.traps import ShuffledTop, rand_cdf, trap_fit

BINS = 60  # log-spaced histogram bins of a panel


@dataclass(frozen=True)
class EsdCurves:
    """Everything one ESD panel draws, in the units of the eigenvalues (log-log axes)."""

    bins: np.ndarray  # BINS + 1 edges, log-spaced over the positive eigenvalues
    density: np.ndarray  # histogram density of the ESD per bin (0 for an empty bin)
    randomized: np.ndarray | None  # the randomised copy's fitted law, mass per bin / width
    floor: float  # baseline of empty bins: a tenth of the smallest non-zero density
    power_law: tuple[np.ndarray, np.ndarray] | None  # fitted tail (x, p(x))
    xmin: float | None
    mp: tuple[np.ndarray, np.ndarray] | None  # Marchenko-Pastur density where it is > 0
    lambda_plus: float | None
    spikes: np.ndarray  # the num_spikes largest eigenvalues
    traps: np.ndarray  # the shuffled copy's num_traps largest eigenvalues
    alpha: float


def density(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Histogram density: counts / (n * bin width), as ``hist(density=True)`` draws it
    (values outside ``bins`` are not counted but stay in ``n``)."""
    counts, _ = np.histogram(values, bins)
    return counts / (values.size * np.diff(bins))


def esd_curves(
    row: pd.Series, evals: np.ndarray, randomized: ShuffledTop | None = None
) -> EsdCurves | None:
    """The panel of one layer (its metrics ``row``), or None when no eigenvalue is positive."""
    positive = evals[evals > 0]
    if not positive.size:
        return None
    bins = np.logspace(math.log10(positive.min()), math.log10(positive.max()) + 1e-9, BINS + 1)
    bins[0] = positive.min()  # 10 ** log10(x) can round above x and drop the smallest value
    dens = density(positive, bins)
    rand, trapped = None, np.empty(0)
    if randomized is not None:
        N, M = int(row["N"]), int(row["M"])
        fit = trap_fit(randomized, N, M)
        mass = np.diff(rand_cdf(bins, randomized, fit, N, M)) * randomized.size
        rand = mass / (max(randomized.count, 1) * np.diff(bins))
        trapped = np.sort(randomized.top[: fit.num_spikes])
    alpha, xmin, xmax = float(row["alpha"]), float(row["xmin"]), float(row["xmax"])
    power_law = None
    if math.isfinite(alpha) and xmin > 0 and xmax > xmin:
        x = np.logspace(math.log10(xmin), math.log10(xmax), 50)
        share = row["n_tail"] / positive.size
        power_law = (x, share * (alpha - 1) / xmin * (x / xmin) ** -alpha)
    sigma, lam_plus = float(row["sigma_mp"]), float(row["lambda_plus"])
    mp = None
    if math.isfinite(sigma) and math.isfinite(lam_plus):
        x = np.logspace(math.log10(bins[0]), math.log10(bins[-1]), 400)
        curve = mp_density(x, sigma**2, int(row["N"]), int(row["M"]))
        mp = (x[curve > 0], curve[curve > 0])
    spikes = int(row["num_spikes"])
    return EsdCurves(
        bins=bins,
        density=dens,
        randomized=rand,
        floor=float(dens[dens > 0].min() / 10),
        power_law=power_law,
        xmin=xmin if power_law is not None else None,
        mp=mp,
        lambda_plus=lam_plus if mp is not None else None,
        spikes=np.sort(positive)[-spikes:] if spikes else np.empty(0),
        traps=trapped,
        alpha=alpha,
    )
