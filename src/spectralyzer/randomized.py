"""The top of a shuffled copy's spectrum, for the correlation-trap check
(docs/theory.md section 3.8).

A layer's shuffled copy is its entries in a uniformly random order
(:class:`~.shuffle.Shuffler`), scaled by the layer's common power of two (exact)
and held in float32 for the Krylov products (in float64 for a whole spectrum).  What the trap metrics need of it (:class:`~.fit.traps.ShuffledTop`):

* its squared Frobenius norm, summed in float64 (a shuffle keeps every entry);
* its structural rank: ``min(M - zero columns, N - zero rows)`` per slice;
* its largest eigenvalues.  A single matrix with ``M >= KRYLOV_MIN_M`` gets them from
  a block Krylov space of ``X^T X`` (:class:`~.top_eigen.GramKrylov`), grown until
  the Ritz values settle the MP fit (:func:`~.fit.traps.settled_fit`), at most
  ``M / 3`` vectors; anything else (small or several slices, or a space that did not
  settle) gets the whole spectrum from the float64 Gram matrix and ``eigvalsh``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .fit.traps import ShuffledTop, settled_fit

KRYLOV_MIN_M = 768  # below, the whole float64 spectrum costs as little (measured, section 3.8)
KRYLOV_MAX_FRACTION = 3  # a space of M / 3 vectors that did not settle: the whole spectrum
KRYLOV_BLOCK = 16  # block size: 8 ran the skinny products 3x slower per vector on 2 cores
_EPS32 = float(torch.finfo(torch.float32).eps)
_EPS64 = float(torch.finfo(torch.float64).eps)


def krylov_pays(num_slices: int, M: int) -> bool:
    """Whether the top of a shuffled ``(num_slices, N, M)`` copy comes from a Krylov space."""
    return num_slices == 1 and M >= KRYLOV_MIN_M


def scaled_copy(shuffled: torch.Tensor, exponent: int, dtype: torch.dtype) -> torch.Tensor:
    """The shuffled stack in ``dtype``, divided by ``2^exponent`` (exact)."""
    copy = shuffled.to(dtype)
    return copy.mul_(2.0**-exponent) if copy is not shuffled else copy * 2.0**-exponent


def frobenius_and_rank(copy: torch.Tensor) -> tuple[float, int]:
    """``(sum of squares in float64, structural rank summed over slices)`` of a stack."""
    total = 0.0
    for chunk in copy.split(max(1, 2**22 // max(1, copy.shape[-1])), dim=1):
        total += float(torch.linalg.vector_norm(chunk, dtype=torch.float64) ** 2)
    slices, N, M = copy.shape
    if int((copy == 0).sum()) < min(N, M):  # too few zeros to empty a row or a column
        return total, slices * M
    nonzero = copy != 0
    rows = nonzero.any(dim=2).sum(dim=1)
    cols = nonzero.any(dim=1).sum(dim=1)
    return total, int(torch.minimum(rows, cols).clamp_max(M).sum())


def krylov_top(copy: torch.Tensor, total: float, count: int, seed: int) -> ShuffledTop | None:
    """The settled top of one shuffled ``(1, N, M)`` copy, or ``None`` after ``M / 3``
    vectors (the caller computes the whole spectrum)."""
    from .top_eigen import GramKrylov

    _, N, M = copy.shape
    space = GramKrylov(copy[0], KRYLOV_BLOCK, seed)
    while space.dimension + KRYLOV_BLOCK <= M // KRYLOV_MAX_FRACTION:
        space.extend(1)
        if space.dimension < 4 * KRYLOV_BLOCK:
            continue
        theta, residuals = (t.numpy() for t in space.ritz())
        error = max(float(residuals.max()), 10 * M * _EPS32 * float(theta[0]))
        if settled_fit(theta, residuals, total, count, N, M, error) is not None:
            return ShuffledTop(theta.copy(), total, count, M, error)
    return None


def full_top(evals: np.ndarray, total: float, count: int, M: int) -> ShuffledTop:
    """The whole spectrum of a shuffled copy (float64 ``eigvalsh``), as its top."""
    top = np.sort(np.asarray(evals, dtype=np.float64))[::-1].copy()
    lam_max = float(top[0]) if top.size else 0.0
    return ShuffledTop(top, total, count, top.size, 10 * M * _EPS64 * lam_max)


def unscaled(top: ShuffledTop, exponent: int) -> ShuffledTop:
    """``top`` of a copy divided by ``2^exponent``, back in the layer's units (times ``4^e``)."""
    with np.errstate(over="ignore"):
        values = np.ldexp(top.top, 2 * exponent)
        total, error = (float(np.ldexp(v, 2 * exponent)) for v in (top.total, top.error))
    if not (np.isfinite(values).all() and math.isfinite(total)):
        return ShuffledTop.undefined(top.size)
    return ShuffledTop(values, total, top.count, top.size, error)


def shuffled_layer(
    stack: torch.Tensor,
    exponent: int,
    shuffle: Callable[[torch.Tensor], torch.Tensor],
    gram: torch.Tensor | None,
) -> ShuffledTop | tuple[float, int]:
    """The top of a finite layer's shuffled copy; with ``gram`` (the batch's float32
    Gram matrices of this layer) the copy's Gram matrices are added there instead and
    ``(total, count)`` comes back for :func:`full_top` after the batch's ``eigvalsh``."""
    dtype = gram.dtype if gram is not None else torch.float32
    copy = scaled_copy(shuffle(stack), exponent, dtype)
    total, count = frobenius_and_rank(copy)
    if gram is not None:
        gram.baddbmm_(copy.mT, copy)
        return total, count
    seed = getattr(shuffle, "seed", 0)
    top = krylov_top(copy, total, count, seed)
    if top is None:  # not settled within M / 3 vectors: the whole spectrum, in float64
        copy = copy.double()
        evals = torch.linalg.eigvalsh(copy.mT @ copy).clamp_min_(0).reshape(-1)
        top = full_top(evals.cpu().numpy(), total, count, copy.shape[2])
    return unscaled(top, exponent)
