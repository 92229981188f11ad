"""SETOL's detX condition and the ERG gap (docs/theory.md section 6.3).

Martin & Hinrichs, "SETOL: A Semi-Empirical Theory of (Deep) Learning",
arXiv:2507.17912 (weightwatcher's ``detX_constraint``): rescale the ESD to mean
1, ``lambda~ = lambda / mean(lambda)``; the "effective correlation space" is the
top ``k`` eigenvalues whose product is 1 (``det X~ = 1``).  ``detX_num`` is
the smallest ``k`` at which the sum of ``ln lambda~`` over the ``k`` largest
turns negative (``N`` when it never does).  The ERG condition asks that this
space be the power-law tail: ``erg_gap = detX_num - n_tail`` (the tail's
eigenvalues ``lambda >= xmin``, weightwatcher's ``num_pl_spikes``); ideally 0.

Eigenvalues at or below the numerical-zero tolerance are left out (their
logarithm is ``-inf``); ``N`` and the mean are over the others.
"""

from __future__ import annotations

import numpy as np


def detx_num(evals: np.ndarray, zero_tol: float = 0.0) -> int:
    """``detX_num`` of an ESD (any order); 0 when no eigenvalue is above ``zero_tol``."""
    x = np.asarray(evals, dtype=np.float64)
    x = np.sort(x[x > zero_tol])[::-1]
    if x.size == 0:
        return 0
    sums = np.cumsum(np.log(x / x.mean()))
    negative = np.flatnonzero(sums < 0)
    return int(negative[0]) + 1 if negative.size else int(x.size)
