"""Lanczos tridiagonalisation with full re-orthogonalisation (Golub & Van Loan, Alg. 10.1.1).

Full re-orthogonalisation (every new vector orthogonalised twice against all
previous ones) keeps the Krylov basis orthonormal to rounding, so the Ritz
values converge to the extreme eigenvalues without spurious copies.

The basis is the probe's largest memory term, ``steps x dim`` numbers
(docs/theory.md section 4.14).  It is allocated once (no copies as it grows)
and may be stored in a lower precision than the products (``basis_dtype``,
e.g. float32 under a float64 probe: half the bytes): the current vector and
every product stay in the operator's precision; only the stored history is
rounded, which leaves the Ritz values accurate to about the storage
precision's epsilon times the spectrum's scale.  Products with the basis run
in column blocks, so no temporary is larger than :data:`BLOCK_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .basis import Basis, Storage, allocate, block, first_rows
from .operator import CurvatureOperator

#: The largest temporary of a product with the basis (a block of its columns, converted).
BLOCK_BYTES = 2**26


@dataclass(frozen=True)
class Tridiagonal:
    """``T = Q^T H Q`` with diagonal ``alpha`` and off-diagonal ``beta``; ``Q`` has orthonormal columns."""

    alpha: np.ndarray
    beta: np.ndarray
    basis: Basis  # (steps, dim), maybe in a lower precision than the operator, or on disk

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of T."""
        from scipy.linalg import eigh_tridiagonal

        return eigh_tridiagonal(self.alpha, self.beta)


def _blocks(basis: Basis, rows: int) -> list[slice]:
    """Column blocks of ``basis[:rows]`` whose float64 copy stays within :data:`BLOCK_BYTES`."""
    width = max(1024, BLOCK_BYTES // (8 * max(rows, 1)))
    return [slice(c, c + width) for c in range(0, basis.shape[1], width)]


def combine(
    basis: Basis, coefficients: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``basis^T c`` (a ``(dim,)`` or ``(dim, k)`` result in ``dtype`` on ``device``, the
    operator's: the coefficients come from the CPU, a disk basis is read to the CPU)."""
    rows = coefficients.shape[0]
    out = torch.empty((basis.shape[1], *coefficients.shape[1:]), dtype=dtype, device=device)
    c = coefficients.to(device=device, dtype=dtype)
    for cols in _blocks(basis, rows):
        out[cols] = block(basis, rows, cols).to(device=device, dtype=dtype).T @ c
    return out


def orthogonalise(w: torch.Tensor, basis: Basis, rows: int) -> torch.Tensor:
    """``w - Q^T (Q w)`` against the first ``rows`` stored vectors, twice (Kahan-Parlett).

    ``w`` is updated in place, block by block (no second vector of ``dim``).
    """
    for _ in range(2):
        coefficients = torch.zeros(rows, dtype=w.dtype, device=w.device)
        for cols in _blocks(basis, rows):
            coefficients += block(basis, rows, cols).to(w.device, w.dtype) @ w[cols]
        for cols in _blocks(basis, rows):
            w[cols] -= block(basis, rows, cols).to(w.device, w.dtype).T @ coefficients
    return w


def lanczos(
    op: CurvatureOperator,
    start: torch.Tensor,
    steps: int,
    basis_dtype: Storage = None,
) -> Tridiagonal:
    """``steps`` Lanczos steps from ``start`` (normalised here); stops early on an invariant subspace.

    The basis is stored in ``basis_dtype`` (default: the operator's; "disk": a
    temporary file, :mod:`.basis`).
    """
    q = start / start.norm()
    basis = allocate(steps, op.dim, basis_dtype, q)
    basis[0] = q
    alphas, betas = [], []
    for step in range(steps):
        w = op.matvec(q)
        alpha = float(w @ q)
        alphas.append(alpha)
        w = orthogonalise(w, basis, step + 1)
        beta = float(w.norm())
        if step == steps - 1 or beta < 1e-12 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        q = w / beta
        basis[step + 1] = q
    return Tridiagonal(np.array(alphas), np.array(betas), first_rows(basis, len(alphas)))


def random_start(op: CurvatureOperator, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian start vector drawn on the CPU from ``generator`` (the same on any device)."""
    return torch.randn(op.dim, generator=generator, dtype=op.dtype).to(op.device)


def top_eigenpairs(
    op: CurvatureOperator,
    k: int,
    steps: int,
    generator: torch.Generator,
    basis_dtype: Storage = None,
    vectors: int | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """The ``k`` largest Ritz values (descending) of ``steps`` Lanczos steps and their Ritz vectors.

    Vectors are the rows of the returned ``(vectors, dim)`` tensor (unit norm;
    ``vectors`` defaults to ``k``: each costs ``dim`` numbers). The start vector
    is drawn on the CPU from ``generator`` (reproducible on any device).
    """
    tri = lanczos(op, random_start(op, generator), min(steps, op.dim), basis_dtype)
    values, eigenvectors = tri.ritz()
    count = k if vectors is None else vectors
    top = torch.from_numpy(eigenvectors[:, ::-1][:, :count].copy())
    ritz = combine(tri.basis, top, op.dtype, op.device).T
    return values[::-1][:k].copy(), ritz


def top_eigenvalues(
    op: CurvatureOperator,
    k: int,
    steps: int,
    generator: torch.Generator,
    basis_dtype: Storage = None,
) -> np.ndarray:
    """The ``k`` largest eigenvalues (descending): :func:`top_eigenpairs` without the vectors."""
    return top_eigenpairs(op, k, steps, generator, basis_dtype, vectors=0)[0]
