"""Hutchinson's trace estimator (Hutchinson 1990): ``tr H = E[v^T H v]`` for Rademacher ``v``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .lanczos import MatVec


@dataclass(frozen=True)
class TraceEstimate:
    value: float
    stderr: float  # standard error of the mean over the samples
    samples: int


def hutchinson(
    matvec: MatVec, dim: int, samples: int, generator: torch.Generator, dtype=torch.float64
) -> TraceEstimate:
    """Mean of ``v^T H v`` over ``samples`` Rademacher vectors, with its standard error."""
    values = []
    for _ in range(samples):
        v = torch.randint(0, 2, (dim,), generator=generator).to(dtype) * 2 - 1
        values.append(float(v @ matvec(v)))
    t = torch.tensor(values, dtype=torch.float64)
    stderr = float(t.std(unbiased=True)) / math.sqrt(samples) if samples > 1 else math.nan
    return TraceEstimate(float(t.mean()), stderr, samples)
