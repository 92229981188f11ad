"""Lanczos tridiagonalisation with full re-orthogonalisation (Golub & Van Loan, Alg. 10.1.1).

Full re-orthogonalisation (every new vector orthogonalised twice against all
previous ones) keeps the Krylov basis orthonormal to rounding, so the Ritz
values converge to the extreme eigenvalues without spurious copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .operator import CurvatureOperator


@dataclass(frozen=True)
class Tridiagonal:
    """``T = Q^T H Q`` with diagonal ``alpha`` and off-diagonal ``beta``; ``Q`` has orthonormal columns."""

    alpha: np.ndarray
    beta: np.ndarray
    basis: torch.Tensor  # (steps, dim)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of T."""
        from scipy.linalg import eigh_tridiagonal

        return eigh_tridiagonal(self.alpha, self.beta)


def lanczos(op: CurvatureOperator, start: torch.Tensor, steps: int) -> Tridiagonal:
    """``steps`` Lanczos steps from ``start`` (normalised here); stops early on an invariant subspace."""
    q = start / start.norm()
    basis = [q]
    alphas, betas = [], []
    for step in range(steps):
        w = op.matvec(q)
        alpha = float(w @ q)
        alphas.append(alpha)
        stack = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            w = w - stack.T @ (stack @ w)
        beta = float(w.norm())
        if step == steps - 1 or beta < 1e-12 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        q = w / beta
        basis.append(q)
    return Tridiagonal(np.array(alphas), np.array(betas), torch.stack(basis[: len(alphas)]))


def random_start(op: CurvatureOperator, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian start vector drawn on the CPU from ``generator`` (the same on any device)."""
    return torch.randn(op.dim, generator=generator, dtype=op.dtype).to(op.device)


def top_eigenpairs(
    op: CurvatureOperator, k: int, steps: int, generator: torch.Generator
) -> tuple[np.ndarray, torch.Tensor]:
    """The ``k`` largest Ritz values (descending) of ``steps`` Lanczos steps and their Ritz vectors.

    Vectors are the rows of the returned ``(k, dim)`` tensor (unit norm). The
    start vector is drawn on the CPU from ``generator`` (reproducible on any device).
    """
    tri = lanczos(op, random_start(op, generator), min(steps, op.dim))
    values, vectors = tri.ritz()
    top = vectors[:, ::-1][:, :k].copy()
    ritz = (tri.basis.T @ torch.from_numpy(top).to(tri.basis)).T
    return values[::-1][:k].copy(), ritz


def top_eigenvalues(
    op: CurvatureOperator, k: int, steps: int, generator: torch.Generator
) -> np.ndarray:
    """The ``k`` largest eigenvalues (descending): :func:`top_eigenpairs` without the vectors."""
    return top_eigenpairs(op, k, steps, generator)[0]
