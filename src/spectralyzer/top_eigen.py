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
there is no ``M^3`` eigensolver.  The basis is kept orthonormal in ``X``'s dtype
with two passes of classical Gram-Schmidt (Giraud et al. 2005, "twice is
enough"), and the products with ``X`` run in it too; the projection is float64.
For a float32 ``X`` a float64 basis gave the same Ritz values to ``2e-8 lambda_max``
(within the products' rounding) at 15-25% more time (docs/theory.md section 3.8).

The projection ``T = Q^T G Q`` is not formed again for the Ritz values: its
columns are the Gram-Schmidt coefficients of each image ``G q_j`` against the
basis, and the QR factor ``B`` of the orthogonalised image (the next block) is
its subdiagonal block, so ``G Q_k = Q_k T_k + q_{k+1} B_k E_k^T`` (block Lanczos
with full reorthogonalisation, Golub & Van Loan section 10.3.6) and the
residual of a Ritz pair ``(theta, y)`` is ``||B_k y_last||``, ``y_last`` its
last block of coefficients.
"""

from __future__ import annotations

import torch

#: N / M from which the products go through X once per block, by chunks of rows: every
#: CPU copy (``_gram_times``)
ONE_PASS_FROM = 1
CHUNK_BYTES = 2**21  # rows of X taken at once there: about a core's L2 cache


class GramKrylov:
    """A growing block Krylov space of ``X^T X`` for one ``N x M`` matrix ``X``, of at
    most ``capacity`` vectors (default ``M``)."""

    def __init__(self, x: torch.Tensor, block: int, seed: int, capacity: int | None = None) -> None:
        self.x, self.block = x, block
        M = x.shape[1]
        capacity = min(M, capacity or M) + block  # the newest block sits past the space
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(M, block, generator=generator, dtype=torch.float64)
        self.basis = torch.empty(M, capacity, dtype=x.dtype, device=x.device)
        self.basis[:, :block] = torch.linalg.qr(start.to(x.device)).Q
        self.projection = torch.zeros(capacity, capacity, dtype=torch.float64, device=x.device)
        self.dimension = 0  # vectors whose images are known: the space the Ritz values live in

    def extend(self, blocks: int) -> None:
        """Add ``blocks`` blocks: multiply the newest one by ``G`` and orthogonalise (at most
        ``capacity`` vectors in all)."""
        b = self.block
        for _ in range(blocks):
            k = self.dimension
            if k + 2 * b > self.basis.shape[1]:
                raise ValueError(f"a Krylov space of {k + b} vectors exceeds its capacity")
            q = self.basis[:, : k + b]
            image = self._gram_times(q[:, k:])
            first = q.T @ image
            rest = image - q @ first
            second = q.T @ rest  # twice is enough
            rest -= q @ second
            newest, factor = torch.linalg.qr(rest)
            self.basis[:, k + b : k + 2 * b] = newest
            self.projection[: k + b, k : k + b] = first + second
            self.projection[k + b : k + 2 * b, k : k + b] = factor
            self.dimension = k + b

    def _gram_times(self, q: torch.Tensor) -> torch.Tensor:
        """``X^T (X q)``: two products in ``X``'s dtype (``q``'s).

        The second product is taken as ``((X q)^T X)^T``: ``X^T`` times a skinny matrix
        ran 25-35% slower at 1024 x 1024 and 2816 x 1024 (equal at 4096 columns).  On the
        CPU ``X`` is taken a cache-sized chunk of rows at a time, both products on each
        chunk while it is in cache: one pass over ``X`` instead of two (32000 x 1024
        float32: 35 -> 26 ms a block of 16, 32000 x 4096: 147 -> 108 ms; with two spaces
        at once, one thread each, 4 of 4096 x 4096 0.83 -> 0.66 s and 8 of 2816 x 1024
        0.20 -> 0.16 s, 8 of 1024 x 1024 equal).  Measured on 2 cores.
        """
        x = self.x
        N, M = x.shape
        if N < ONE_PASS_FROM * M or x.device.type != "cpu":
            return ((x @ q).T @ x).T
        out = torch.zeros(q.shape[1], M, dtype=x.dtype)
        rows = max(64, CHUNK_BYTES // (M * x.element_size()))
        for start in range(0, N, rows):
            chunk = x[start : start + rows]
            out.addmm_((chunk @ q).T, chunk)
        return out.T

    def ritz(self, wanted: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``wanted`` largest Ritz values (descending) and their residual norms
        ``||G y - theta y||`` (module docstring)."""
        k, b = self.dimension, self.block
        projection = self.projection[:k, :k]  # symmetric but for rounding
        theta, vectors = torch.linalg.eigh((projection + projection.T) / 2)
        theta, vectors = theta.flip(0)[:wanted], vectors.flip(1)[:, :wanted]
        factor = self.projection[k : k + b, k - b : k]
        residuals = torch.linalg.vector_norm(factor @ vectors[k - b :], dim=0)
        return theta.cpu(), residuals.cpu()
