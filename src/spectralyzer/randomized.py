"""The top of a shuffled copy's spectrum, for the correlation-trap check
(docs/theory.md section 3.8).

A layer's shuffled copy is its entries in a uniformly random order
(:class:`~.shuffle.Shuffler`), scaled by the layer's common power of two (exact)
and held in float32 for the Krylov products (in ``FULL_DTYPE``, float64, for a whole
spectrum).  What the trap metrics need of it
(:class:`~.fit.traps.ShuffledTop`):

* its squared Frobenius norm: the trace of the layer's own float64 Gram matrix, which
  the plain analysis has just formed (a shuffle keeps every entry);
* its structural rank: ``min(M - zero columns, N - zero rows)`` per slice;
* its largest eigenvalues.  A single matrix with ``M >= KRYLOV_MIN_M`` gets them from
  a block Krylov space of ``X^T X`` (:class:`~.top_eigen.GramKrylov`), grown until
  the Ritz values settle the MP fit (:func:`~.fit.traps.settles`), at most
  ``M / 3`` vectors; anything else (small or several slices, or a space that did not
  settle) gets the whole spectrum from the float64 Gram matrix and ``eigvalsh``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .fit.mp import fit_mp_top
from .fit.traps import Check, ShuffledTop, settles
from .shuffle import Shuffler
from .top_eigen import GramKrylov

KRYLOV_MIN_M = 384  # below, the whole spectrum costs as little (measured: docs/theory.md 3.8)
KRYLOV_MAX_FRACTION = 3  # a space of M / 3 vectors that did not settle: the whole spectrum
KRYLOV_BLOCK = 16  # block size: 8 ran the skinny products 3x slower per vector on 2 cores
KRYLOV_WANTED = 32  # Ritz pairs checked: a copy with more traps gets the whole spectrum
_EPS32 = float(torch.finfo(torch.float32).eps)
#: dtype of a whole shuffled spectrum: float64, as a heavy-tailed copy's bulk can sit
#: below a float32 spectrum's resolution (Pareto entries, tail index 0.8: a bulk sum of
#: 28 under lambda_max 1.1e6); Krylov products stay float32, their Ritz values are relative
FULL_DTYPE = torch.float64


def krylov_pays(num_slices: int, M: int) -> bool:
    """Whether the top of a shuffled ``(num_slices, N, M)`` copy comes from a Krylov space."""
    return num_slices == 1 and M >= KRYLOV_MIN_M


def structural_rank(copy: torch.Tensor) -> int:
    """``min(M - zero columns, N - zero rows)`` of a shuffled ``copy``, summed over slices."""
    slices, N, M = copy.shape
    if copy.numel() - int(torch.count_nonzero(copy)) < min(N, M):
        return slices * M  # too few zeros to empty a row or a column
    nonzero = copy != 0
    rows = nonzero.any(dim=2).sum(dim=1)
    cols = nonzero.any(dim=1).sum(dim=1)
    return int(torch.minimum(rows, cols).clamp_max(M).sum())


def krylov_top(copy: torch.Tensor, total: float, count: int, seed: int) -> ShuffledTop | None:
    """The settled top of one shuffled ``(1, N, M)`` copy, or ``None`` after ``M / 3``
    vectors (the caller computes the whole spectrum)."""
    _, N, M = copy.shape
    space = GramKrylov(copy[0], KRYLOV_BLOCK, seed, capacity=M // KRYLOV_MAX_FRACTION)
    # settling takes about M^(1/3) blocks (docs/theory.md 3.8); the looks start two blocks
    # before, so that the rise of the Ritz values is known by then
    first = KRYLOV_BLOCK * max(2, int(0.75 * M ** (1 / 3)) - 2)
    looks: list[Check] = []
    while space.dimension + KRYLOV_BLOCK <= M // KRYLOV_MAX_FRACTION:
        space.extend(1)
        if space.dimension < first:
            continue
        theta, residuals = (t.numpy() for t in space.ritz(KRYLOV_WANTED))
        error = 10 * math.sqrt(N) * _EPS32 * float(theta[0])  # float32 products' rounding
        fit = fit_mp_top(theta, total, count, N, M, error=error)
        if fit is None:
            return None  # KRYLOV_WANTED traps or more: the whole spectrum, at once
        before = (looks[-2], looks[-1]) if len(looks) >= 2 else None
        if settles(fit, theta, residuals, count, N, before):
            return ShuffledTop(theta.copy(), total, count, M, error)
        looks.append(Check(theta.copy(), fit.num_spikes))
    return None


def full_top(evals: np.ndarray, total: float, count: int, M: int) -> ShuffledTop:
    """The whole spectrum of a shuffled copy (a ``FULL_DTYPE`` ``eigvalsh``), as its top."""
    top = np.sort(np.asarray(evals, dtype=np.float64))[::-1].copy()
    lam_max = float(top[0]) if top.size else 0.0
    eps = float(torch.finfo(FULL_DTYPE).eps)
    return ShuffledTop(top, total, count, top.size, 10 * M * eps * lam_max)


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
    total: float,
    shuffle: Shuffler,
    gram: torch.Tensor | None,
    later: bool = False,
) -> ShuffledTop | tuple[float, int] | Callable[[], ShuffledTop]:
    """The top of a finite layer's shuffled copy, whose squared Frobenius norm divided by
    ``4^exponent`` is ``total``; with ``gram`` (the batch's ``FULL_DTYPE`` Gram matrices of this
    layer) the copy's Gram matrices are added there instead and ``(total, count)`` comes
    back for :func:`full_top` after the batch's ``eigvalsh``; with ``later``, the shuffled
    copy is made now and a function that finds its top comes back."""
    dtype = gram.dtype if gram is not None else torch.float32
    copy = shuffle(stack, dtype, 2.0**-exponent)
    count = structural_rank(copy)
    if gram is not None:
        gram.baddbmm_(copy.mT, copy)
        return total, count

    def settle() -> ShuffledTop:
        top = krylov_top(copy, total, count, shuffle.seed)
        if top is None:  # not settled within M / 3 vectors: the whole spectrum
            wide = copy.to(FULL_DTYPE)
            evals = torch.linalg.eigvalsh(wide.mT @ wide).clamp_min_(0).reshape(-1)
            top = full_top(evals.double().cpu().numpy(), total, count, copy.shape[2])
        return unscaled(top, exponent)

    return settle if later else settle()
