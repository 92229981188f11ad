"""Stochastic Lanczos quadrature (Golub & Meurant; Ubaru, Chen & Saad 2017; Granziol et al.).

From a random unit vector ``v``, ``m`` Lanczos steps give ``T_m = U diag(theta) U^T``;
the Gauss quadrature nodes ``theta_i`` with weights ``tau_i = U[0, i]^2`` satisfy
``v^T f(H) v ~ sum_i tau_i f(theta_i)``, exactly for polynomials of degree
``<= 2m - 1``.  Averaging over vectors estimates the spectral density
``(1/P) sum_j delta(lambda - lambda_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .lanczos import lanczos, random_start
from .operator import CurvatureOperator


@dataclass(frozen=True)
class SpectralDensity:
    """Quadrature nodes and weights (weights of each vector sum to 1/vectors)."""

    nodes: np.ndarray
    weights: np.ndarray

    def moment(self, j: int) -> float:
        """Estimate of ``tr(H^j) / P``."""
        return float((self.weights * self.nodes**j).sum())

    def smoothed(self, grid: np.ndarray, width: float) -> np.ndarray:
        """The density convolved with a Gaussian of standard deviation ``width``."""
        z = (grid[:, None] - self.nodes[None, :]) / width
        return (np.exp(-0.5 * z**2) / (width * np.sqrt(2 * np.pi))) @ self.weights

    def mass_below(self, threshold: float) -> float:
        """Fraction of the spectrum below ``threshold`` (e.g. 0 for negative mass)."""
        return float(self.weights[self.nodes < threshold].sum())


def slq(
    op: CurvatureOperator,
    steps: int,
    vectors: int,
    generator: torch.Generator,
    basis_dtype: torch.dtype | str | None = None,
) -> SpectralDensity:
    """Average of the Gauss quadrature rules of ``vectors`` random starts, ``steps`` each
    (the Lanczos basis stored in ``basis_dtype``, default the operator's)."""
    nodes, weights = [], []
    for _ in range(vectors):
        theta, u = lanczos(op, random_start(op, generator), min(steps, op.dim), basis_dtype).ritz()
        nodes.append(theta)
        weights.append(u[0] ** 2 / vectors)
    return SpectralDensity(np.concatenate(nodes), np.concatenate(weights))
