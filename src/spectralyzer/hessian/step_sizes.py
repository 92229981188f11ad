"""Learning rates and momenta from curvature (docs/theory.md section 4.7; Granziol et al.).

Pure functions of eigenvalue estimates:

* stability limits on a quadratic with top curvature ``l1``: gradient descent
  ``lr < 2 / l1``; heavy-ball momentum ``beta``: ``lr < 2 (1 + beta) / l1``;
  PyTorch's Nesterov SGD: ``lr < (2 + 2 beta) / ((1 + 2 beta) l1)``; Adam with
  preconditioned top curvature ``l1``: ``lr < (2 + 2 beta1) / ((1 - beta1) l1)``
  (Cohen et al. 2022; 38 / l1 at beta1 = 0.9);
* textbook optima for curvature in ``[lP, l1]`` (Polyak 1964; Nesterov):
  heavy ball ``lr = 4 / (sqrt(l1) + sqrt(lP))^2``,
  ``momentum = ((sqrt(l1) - sqrt(lP)) / (sqrt(l1) + sqrt(lP)))^2``; Nesterov
  ``lr = 1 / l1``, ``momentum = (sqrt(l1) - sqrt(lP)) / (sqrt(l1) + sqrt(lP))``
  (Granziol et al., eqs. 24-25, print these in another normalisation);
* batch size: the Hessian variance along a unit ``z`` from ``K`` micro-batches,
  ``V_H(b) = K/(K-1) [mean_i ||H_i z||^2 - ||H_bar z||^2]`` (their Algorithm 1),
  scales as ``V_H(B) = V_H(b) b / B``; the batch outlier is
  ``l1 + V/l1`` when ``l1 > sqrt(V)``, else ``2 sqrt(V)``; hence
  ``lr_max(B) = 2 B l1 / (B l1^2 + b V_H(b))``, linear in ``B`` below
  ``B* = b V_H(b) / l1^2`` and flat above it;
* finite populations: a batch of ``B`` drawn without replacement from ``N``
  samples has the noise of ``b = B / (1 - B/N)`` independent ones (docs/theory.md section 4.9;
  Granziol et al. after Theorem 4), i.e. variance ``S^2 (1/B - 1/N)`` with
  ``S^2`` the per-sample Hessian variance along ``z``;
* Adam with small epsilon: learning rate proportional to ``sqrt(B)``
  (Granziol et al., section 11); SGD: proportional to ``B`` below ``B*``;
* epoch-based SGD (each sample once per epoch, ``M = N / S`` steps) has
  anti-correlated noise (Kuehn & Rosenow 2025): along a Hessian eigenvector of
  eigenvalue ``lambda`` the velocity correlation time is
  ``tau = (1 + beta) / (lr lambda)`` above ``lambda_cross = 3 (1 - beta) S / (lr N)``
  (the anti-correlations do not matter there) and
  ``tau_SGD = (M / 3) (1 + beta) / (1 - beta)`` below it (they cap it); the two
  agree at ``lambda_cross``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def gd_limit(l1: float) -> float:
    return 2.0 / l1


def heavy_ball_limit(l1: float, beta: float) -> float:
    return 2.0 * (1.0 + beta) / l1


def nesterov_limit(l1: float, beta: float) -> float:
    """Stability limit of ``torch.optim.SGD(nesterov=True, momentum=beta)``."""
    return (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * l1)


def adam_threshold(beta1: float) -> float:
    """``(2 + 2 beta1) / (1 - beta1)``: Adam's bound on ``lr lambda_1(P^-1/2 H P^-1/2)``."""
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


def adam_limit(l1_preconditioned: float, beta1: float = 0.9) -> float:
    """Adam's stability limit on the learning rate (Cohen et al. 2022; 38 / l1 at beta1 0.9)."""
    return adam_threshold(beta1) / l1_preconditioned


def heavy_ball_optimum(l1: float, lp: float) -> tuple[float, float]:
    """(lr, momentum) minimising the heavy-ball convergence factor on curvatures in [lp, l1]."""
    s1, sp = math.sqrt(l1), math.sqrt(lp)
    return 4.0 / (s1 + sp) ** 2, ((s1 - sp) / (s1 + sp)) ** 2


def nesterov_optimum(l1: float, lp: float) -> tuple[float, float]:
    s1, sp = math.sqrt(l1), math.sqrt(lp)
    return 1.0 / l1, (s1 - sp) / (s1 + sp)


def hessian_variance(micro_hvps: Sequence[torch.Tensor]) -> float:
    """``V_H(b)`` from the products ``H_i z`` of K micro-batches with one unit vector z."""
    stack = torch.stack(list(micro_hvps))
    return hessian_variance_from_sums(float((stack**2).sum()), stack.sum(dim=0), len(stack))


def hessian_variance_from_sums(sum_sq: float, sum_vec: torch.Tensor, k: int) -> float:
    """``K/(K-1) [mean_i ||H_i z||^2 - ||mean_i H_i z||^2]`` from running sums (streaming)."""
    if k < 2:
        raise ValueError("need at least two micro-batches")
    mean_vec = sum_vec / k
    return k / (k - 1) * (sum_sq / k - float(mean_vec @ mean_vec))


def per_sample_variance(variance_micro: float, micro_batch: int, population: float) -> float:
    """``S^2 = V_H(b) / (1/b - 1/N)``: micro-batches of ``b`` drawn from ``N`` samples."""
    return variance_micro / (1.0 / micro_batch - 1.0 / population)


def noise_variance(per_sample: float, batch: float, population: float = math.inf) -> float:
    """``S^2 (1/B - 1/N)``: Hessian noise of a batch of ``B`` drawn from ``N`` samples."""
    return per_sample * (1.0 / batch - 1.0 / population)


def deconvolved_top_eigenvalue(l1_batch: float, variance: float) -> float:
    """``l1`` of the noiseless Hessian from a batch's ``l1_batch = l1 + V/l1`` (NaN if not separated).

    The larger root of ``l1^2 - l1_batch l1 + V = 0``; it exists when
    ``l1_batch >= 2 sqrt(V)``, the edge of the noise bulk.
    """
    disc = l1_batch**2 - 4.0 * variance
    return 0.5 * (l1_batch + math.sqrt(disc)) if disc >= 0 else math.nan


def adam_factor(batch: float, reference: float) -> float:
    """Square-root rule for Adam (small epsilon): ``lr(B) / lr(B_ref) = sqrt(B / B_ref)``."""
    return math.sqrt(batch / reference)


def batch_top_eigenvalue(l1: float, variance: float, shift_variance: float | None = None) -> float:
    """Top eigenvalue of a batch Hessian whose noise has variance ``variance`` per direction.

    ``l1 + V/l1`` while the outlier is separated (``l1 > sqrt(V)``), else the
    semicircle edge ``2 sqrt(V)`` (Granziol et al., Theorem 4).  With
    ``shift_variance`` the outlier moves by that instead (the noise along the
    top eigenvector, for anisotropic noise; see :mod:`.batch_scaling`).
    """
    root = math.sqrt(variance)
    shift = variance if shift_variance is None else shift_variance
    return l1 + shift / l1 if l1 > root else 2.0 * root


def lr_max(batch: float, l1: float, micro_batch: float, variance_micro: float) -> float:
    """``2 B l1 / (B l1^2 + b V_H(b))``: the largest stable SGD learning rate at batch size B."""
    return 2.0 * batch * l1 / (batch * l1**2 + micro_batch * variance_micro)


def critical_batch(l1: float, micro_batch: float, variance_micro: float) -> float:
    """``B* = b V_H(b) / l1^2``: above it, raising the learning rate with the batch stops paying."""
    return micro_batch * variance_micro / l1**2


def crossover_eigenvalue(lr: float, beta: float, batch: float, population: float) -> float:
    """``lambda_cross = 3 (1 - beta) S / (lr N)`` of epoch-based SGD (Kuehn & Rosenow 2025)."""
    return 3.0 * (1.0 - beta) * batch / (lr * population)


def correlation_time(lam: float, lr: float, beta: float, batch: float, population: float) -> float:
    """Velocity correlation time along an eigenvalue ``lam``: ``(1 + beta) / (lr lam)`` above
    ``lambda_cross``, ``(N / S) / 3 (1 + beta) / (1 - beta)`` below (Kuehn & Rosenow 2025)."""
    if lam > crossover_eigenvalue(lr, beta, batch, population):
        return (1.0 + beta) / (lr * lam)
    return tau_sgd(beta, batch, population)


def tau_sgd(beta: float, batch: float, population: float) -> float:
    """``(M / 3) (1 + beta) / (1 - beta)``, ``M = N / S``: the capped correlation time."""
    return population / batch / 3.0 * (1.0 + beta) / (1.0 - beta)
