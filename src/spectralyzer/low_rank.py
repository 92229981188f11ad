"""Rows of low-rank updates (LoRA ``lora-delta``): no power-law or Marchenko-Pastur fit.

A LoRA update ``dW = s * B @ A`` has at most ``r`` non-zero eigenvalues of
``dW^T dW``, and the engine computes exactly those (docs/theory.md section 6.10).
They are the whole spectrum of a learned rank-``r`` matrix, not the tail of a
bulk of ``M`` eigenvalues: the heavy-tailed fit and the Marchenko-Pastur bulk
behind alpha, the spikes and the phases do not describe it (a rank-16 update
gave alpha 14.9, meaningless, and rank 4 was skipped for too few eigenvalues).
So these rows keep what describes any spectrum (norms, stable rank, entropy,
rank loss) and mark the fit ``fit-not-applicable``: left out of the alpha
means like a failed fit, but counted apart (``num_fit_not_applicable``),
phase ``low-rank``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .metrics import FIT_COUNTS, FIT_FIELDS, LayerMetrics

#: Phase of a low-rank update's row.
LOW_RANK_PHASE = "low-rank"
NOT_APPLICABLE = "fit-not-applicable"

#: Warnings about the fit; the others (non-finite weights, overflow) stay.
_FIT_WARNINGS = {
    "fit-failed",
    "few-evals",
    "over-trained",
    "under-trained",
    "correlation-trap",
}


def low_rank_row(row: LayerMetrics) -> LayerMetrics:
    """``row`` without its fits: ``fit-not-applicable``, phase ``low-rank``.

    A row whose spectrum could not be computed (non-finite weights) is left as it
    is: that is a failure, not a low-rank spectrum.
    """
    if not math.isfinite(row.lambda_max):
        return row
    kept = [c for c in row.warning.split(";") if c and c not in _FIT_WARNINGS]
    return replace(
        row,
        **dict.fromkeys(FIT_FIELDS, math.nan),
        **dict.fromkeys(FIT_COUNTS, 0),
        tail_law="",
        phase=LOW_RANK_PHASE,
        warning=";".join([NOT_APPLICABLE, *kept]),
    )
