"""The largest eigenvalues of ``X^T X`` from products with ``X`` alone: block Krylov
(docs/theory.md section 3.8).

A block Krylov space ``span{Q0, G Q0, G^2 Q0, ...}`` of ``G = X^T X`` with a
random start ``Q0`` (``M x b``) holds good approximations of ``G``'s largest
eigenvalues after a few blocks (Golub & Van Loan, Matrix Computations, 4th ed.,
section 10.3); the Rayleigh-Ritz values ``theta_i`` on it are lower bounds,
``theta_i <= lambda_i`` (Cauchy interlacing), and each is within its residual
``||G y_i - theta_i y_i||`` of an eigenvalue.  Each block costs two products
with ``X`` (``4 N M b`` flops) instead of the ``2 N M^2`` of forming ``G``:
at ``M = 4096`` a space of 256 vectors is 1/8 of the Gram product alone, and
there is no ``M^3`` eigensolver.  The basis is kept orthonormal in float64 with
two passes of classical Gram-Schmidt (Giraud et al. 2005, "twice is enough");
the products with ``X`` run in ``X``'s dtype.
"""

from __future__ import annotations

import torch


class GramKrylov:
    """A growing block Krylov space of ``X^T X`` for one ``N x M`` matrix ``X``."""

    def __init__(self, x: torch.Tensor, block: int, seed: int) -> None:
        self.x = x
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(x.shape[1], block, generator=generator, dtype=torch.float64)
        self.basis = [torch.linalg.qr(start.to(x.device)).Q]
        self.images: list[torch.Tensor] = []  # G @ basis[j], float64

    @property
    def dimension(self) -> int:
        return sum(q.shape[1] for q in self.images)

    def extend(self, blocks: int) -> None:
        """Add ``blocks`` blocks: multiply the newest one by ``G`` and orthogonalise
        (the caller keeps the dimension well below ``M``)."""
        for _ in range(blocks):
            newest = self.basis[-1]
            image = self._gram_times(newest)
            self.images.append(image)
            q = torch.cat(self.basis, dim=1)
            block = image - q @ (q.T @ image)
            block -= q @ (q.T @ block)  # twice is enough
            self.basis.append(torch.linalg.qr(block).Q)

    def _gram_times(self, q: torch.Tensor) -> torch.Tensor:
        """``X^T (X q)``: two products in ``X``'s dtype, the result in float64."""
        small = q.to(self.x.dtype)
        return (self.x.T @ (self.x @ small)).to(torch.float64)

    def ritz(self, wanted: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``wanted`` largest Ritz values (descending) and their residual norms
        ``||G y - theta y||``."""
        k = self.dimension
        q = torch.cat(self.basis, dim=1)[:, :k]
        gq = torch.cat(self.images, dim=1)
        small = q.T @ gq
        theta, vectors = torch.linalg.eigh((small + small.T) / 2)
        theta, vectors = theta.flip(0)[:wanted], vectors.flip(1)[:, :wanted]
        residuals = torch.linalg.vector_norm(gq @ vectors - (q @ vectors) * theta, dim=0)
        return theta.cpu(), residuals.cpu()
