"""Trace estimators from matrix-vector products alone.

- Hutchinson (1990): ``tr H = E[v^T H v]`` for Rademacher ``v``.
- Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a low-rank part taken exactly
  plus Hutchinson on the deflated rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .operator import CurvatureOperator, LinearMap


@dataclass(frozen=True)
class TraceEstimate:
    value: float
    stderr: float  # standard error of the mean over the samples
    samples: int


def hutchinson(op: CurvatureOperator, samples: int, generator: torch.Generator) -> TraceEstimate:
    """Mean of ``v^T H v`` over ``samples`` Rademacher vectors, with its standard error.

    The vectors are drawn on the CPU from ``generator`` (reproducible on any device)
    and the products run on the operator's device.
    """
    values = []
    for _ in range(samples):
        v = _signs((op.dim,), generator, op.dtype).to(op.device)
        values.append(float(v @ op.matvec(v)))
    t = torch.tensor(values, dtype=torch.float64)
    stderr = float(t.std(unbiased=True)) / math.sqrt(samples) if samples > 1 else math.nan
    return TraceEstimate(float(t.mean()), stderr, samples)


def _signs(shape: tuple[int, ...], generator: torch.Generator, dtype) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def hutch_plus_plus(
    op: CurvatureOperator, matvecs: int, generator: torch.Generator
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): ``tr(Q^T H Q)`` plus Hutchinson on the rest.

    The budget of ``matvecs`` products is split in thirds: ``H S`` for a
    Rademacher sketch ``S`` of ``k = matvecs // 3`` columns, whose orthonormal
    basis ``Q`` captures the top of the spectrum; ``H Q`` gives the exact
    ``tr(Q^T H Q)``; the remaining products go to Hutchinson on the deflated
    ``(I - QQ^T) H (I - QQ^T)``.  For a decaying spectrum the error falls as
    ``1/m`` instead of Hutchinson's ``1/sqrt(m)``.  ``stderr`` is that of the
    Hutchinson part (the low-rank part is exact given ``Q``); ``samples`` is the
    number of products used.  Below 3 products this is plain Hutchinson; when
    ``k >= dim`` the trace is computed exactly from ``dim`` unit vectors
    (``stderr`` 0).
    """
    if matvecs < 1:
        raise ValueError(f"Hutch++ needs at least one matrix-vector product, got {matvecs}")
    k = matvecs // 3
    dim, dtype, device = op.dim, op.dtype, op.device
    if k >= dim:
        eye = torch.eye(dim, dtype=dtype, device=device)
        exact = sum(float(op.matvec(e).to(dtype)[i]) for i, e in enumerate(eye))
        return TraceEstimate(exact, 0.0, dim)
    if k == 0:
        return hutchinson(op, matvecs, generator)
    sketch = _signs((dim, k), generator, dtype).to(device)
    q, _ = torch.linalg.qr(torch.stack([op.matvec(s).to(dtype) for s in sketch.T], dim=1))
    low_rank = sum(float(c @ op.matvec(c).to(dtype)) for c in q.T)

    def deflate(v: torch.Tensor) -> torch.Tensor:
        return v - q @ (q.T @ v)

    rest_op = LinearMap(dim, lambda v: deflate(op.matvec(deflate(v)).to(dtype)), dtype, device)
    rest = hutchinson(rest_op, matvecs - 2 * k, generator)
    return TraceEstimate(low_rank + rest.value, rest.stderr, 2 * k + rest.samples)
