"""The 5+1 phases of training, read off one ESD (Martin & Mahoney, JMLR 22(165), 2021).

Rules, applied in order (the first that matches wins):

1. ``rank-collapse``: at least ``RANK_COLLAPSE_FRACTION`` (10%) of the eigenvalues
   are numerical zeros (``rank_loss``).
2. ``random-like``: no eigenvalue above the Marchenko-Pastur spike threshold
   (``lambda_+`` plus the Tracy-Widom margin, see :mod:`spectralyzer.fit.mp`).
3. ``bulk+spikes``: every outlier stands clear of the bulk, the smallest one
   exceeding ``lambda_+`` by more than ``SEPARATION`` (25%) of ``lambda_+``.
4. ``bleeding-out``: a few outliers (at most ``FEW_SPIKES_FRACTION`` = 2% of
   the eigenvalues) leak continuously past the edge.
5. Many outliers, no clean MP edge: ``heavy-tailed`` when the power-law
   exponent ``alpha <= 4`` (Martin & Mahoney's moderately and very
   heavy-tailed classes), else ``bulk-decay`` (weakly heavy-tailed: the bulk
   edge decays into a tail; alpha > 4 or no fit).

The thresholds were set on matrices built to show each phase
(``tests/test_analyze.py``): Gaussian (random-like), Gaussian plus spikes just
past / far past the BBP threshold (bleeding-out / bulk+spikes), Gaussian with
column scales ``j^-0.15`` (bulk-decay), Pareto entries of tail index 1.5
(heavy-tailed), a product of thin factors (rank-collapse).
"""

from __future__ import annotations

import math

import numpy as np

from .mp import MPFit

PHASES = (
    "random-like",
    "bleeding-out",
    "bulk+spikes",
    "bulk-decay",
    "heavy-tailed",
    "rank-collapse",
)
RANK_COLLAPSE_FRACTION = 0.10
FEW_SPIKES_FRACTION = 0.02
SEPARATION = 0.25
HEAVY_TAIL_MAX_ALPHA = 4.0


def classify_phase(evals: np.ndarray, mp: MPFit, alpha: float, rank_loss: int) -> str:
    """The phase of an ascending ESD given its MP fit, power-law alpha and rank loss."""
    total = len(evals)
    if total and rank_loss >= RANK_COLLAPSE_FRACTION * total:
        return "rank-collapse"
    if total == 0 or not math.isfinite(mp.lambda_plus):
        return "unknown"
    if mp.num_spikes == 0:
        return "random-like"
    smallest_spike = evals[total - mp.num_spikes]
    if smallest_spike > (1 + SEPARATION) * mp.lambda_plus:
        return "bulk+spikes"
    if mp.num_spikes <= FEW_SPIKES_FRACTION * total:
        return "bleeding-out"
    if math.isfinite(alpha) and alpha <= HEAVY_TAIL_MAX_ALPHA:
        return "heavy-tailed"
    return "bulk-decay"
