"""How the top Hessian eigenvalue and the stable learning rate change with batch size.

Granziol et al., "Learning rates as a function of batch size: a random matrix
theory approach" (JMLR 2022), Theorem 4 and Algorithm 1; docs/theory.md section 4.9.
The Hessian of a batch of ``B`` samples is ``H_B = H + eps_B``, ``H`` the
Hessian of the ``n`` probed samples, with top eigenpair ``(l1, phi)``:

1. the samples are shuffled (seeded) and split into ``K = n // b``
   micro-batches ``H_i``; along a unit vector ``z`` the noise variance is
   ``V(b) = K/(K-1) [mean_i ||H_i z||^2 - ||mean_i H_i z||^2]`` (Algorithm 1);
   per sample ``S^2 = V(b) / (1/b - 1/n)`` (micro-batches are drawn without
   replacement), and a batch of ``B`` from ``N`` samples has ``S^2 (1/B - 1/N)``;
2. along random unit ``z`` this is the paper's ``V_H``: the noise bulk reaches
   ``2 sqrt(V_H(B))`` (Wigner semicircle), and swallows the outlier when
   ``l1 < sqrt(V_H(B))``;
3. along ``phi`` it splits into the first-order part
   ``V_par = Var(phi^T eps phi)`` (the batch-to-batch spread of the top
   eigenvalue) and ``V_perp = E||eps phi||^2 - V_par``; second-order
   perturbation theory (the other eigenvalues small against ``l1``) gives
   ``E lambda_1(H_B) = l1 + V_perp(B) / l1``.  For isotropic (Wigner) noise
   ``V_perp = V_H`` and this is Theorem 4's ``l1 + P sigma^2 / (b l1)``; real
   networks' noise is far from isotropic (a few samples dominate the top
   direction), which is why ``phi`` is used and not only a random ``z``;
4. predictions are checked against Lanczos on random sub-batches of the probed
   samples (``N = n``), then applied to training on a data set of ``N``
   samples (infinite by default): the noiseless ``l1`` is deconvolved from
   ``l1_n = l1 + S_perp^2 / (n l1)``, a mini-batch of ``B`` has
   ``lambda_1(B) = l1 + S_perp^2 (1/B - 1/N) / l1``, the largest stable SGD
   step ``2 / lambda_1(B)`` grows linearly in ``B`` below
   ``B* = S_perp^2 / l1^2`` and is flat above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import step_sizes as ss
from .lanczos import top_eigenvalues
from .operator import CurvatureOperator

#: Builds the curvature operator of the samples with the given indices.
OperatorFactory = Callable[[torch.Tensor], CurvatureOperator]


@dataclass(frozen=True)
class ProbedBatch:
    """The batch of ``n`` samples whose Hessian was probed: its top eigenpair."""

    n: int
    lambda_1: float  # l1_n, top eigenvalue of the batch's Hessian
    top_vector: torch.Tensor  # phi, its eigenvector


@dataclass(frozen=True)
class ScalingPlan:
    """What the batch-size table measures, and for which data set."""

    batch_sizes: tuple[int, ...]
    micro_batch: int  # b, size of the micro-batches of the noise estimate
    vectors: int  # random unit vectors for the bulk variance
    repeats: int  # random sub-batches measured per batch size
    steps: int  # Lanczos steps of each sub-batch
    reference_batch: int | None = None  # default: the smallest of batch_sizes
    dataset_size: float = math.inf
    basis_dtype: torch.dtype | str | None = None  # of the sub-batches' Lanczos bases


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise variances at micro-batch ``b`` (per sample: divided by ``1/b - 1/n``)."""

    micro_batch: int
    micro_batches: int
    vectors: int  # random unit vectors averaged for the bulk variance
    bulk: float  # V_H(b) along random unit z (Algorithm 1)
    bulk_stderr: float
    perp: float  # V_perp(b) = E||eps phi||^2 - V_par(b)
    par: float  # V_par(b) = Var(phi^T eps phi)
    per_sample_bulk: float
    per_sample_perp: float
    per_sample_par: float


@dataclass(frozen=True)
class BatchSizeRow:
    """One batch size: measured and predicted top eigenvalues, and the learning rates they allow."""

    batch_size: int
    measured_lambda_1: float  # mean over random sub-batches of the probed batch (NaN if B > n)
    measured_spread: float  # their standard deviation
    predicted_lambda_1: float  # for sub-batches of the probed batch (N = n)
    predicted_spread: float  # sqrt(V_par(B))
    training_lambda_1: float  # expected for a mini-batch of B from the data set
    sgd_lr_max: float  # 2 / training_lambda_1
    sgd_factor: float  # sgd_lr_max(B) / sgd_lr_max(B_ref)
    linear_factor: float  # B / B_ref (the linear scaling rule)
    adam_factor: float  # sqrt(B / B_ref) (the square-root rule)
    regime: str  # "linear" (B < B*) or "saturated"


@dataclass(frozen=True)
class BatchScaling:
    batch: int  # n, samples probed
    lambda_1_batch: float  # l1_n, top eigenvalue of the probed batch's Hessian
    lambda_1: float  # deconvolved noiseless l1 (l1_n when not separable)
    separated: bool  # whether l1_n stands clear of its own noise (deconvolution valid)
    noise: NoiseEstimate
    dataset_size: float
    critical_batch: float  # B* = S_perp^2 / l1^2
    reference_batch: int
    rows: list[BatchSizeRow]


def unit_vectors(count: int, dim: int, generator: torch.Generator, dtype, device) -> torch.Tensor:
    z = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return (z / z.norm(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def _unbiased(values: torch.Tensor) -> float:
    return float(values.var()) if len(values) > 1 else math.nan


def estimate_noise(
    factory: OperatorFactory, batch: ProbedBatch, plan: ScalingPlan, generator: torch.Generator
) -> NoiseEstimate:
    """Steps 1-3 of the module docstring on ``K = n // b`` shuffled micro-batches (streaming sums)."""
    n, micro_batch, vectors = batch.n, plan.micro_batch, plan.vectors
    k = n // micro_batch
    if k < 2:
        raise ValueError(f"micro-batch {micro_batch} leaves fewer than two micro-batches of {n}")
    order = torch.randperm(n, generator=generator)
    phi = batch.top_vector / batch.top_vector.norm()
    z = unit_vectors(vectors, phi.numel(), generator, phi.dtype, phi.device)
    probes = torch.cat([z, phi[None]])  # random vectors, then phi
    sum_sq = [0.0] * len(probes)
    sum_vec = [torch.zeros(phi.numel(), dtype=torch.float64, device=phi.device) for _ in probes]
    phi64 = phi.to(torch.float64)
    rayleigh = []  # phi^T H_i phi
    for i in range(k):
        op = factory(order[i * micro_batch : (i + 1) * micro_batch])
        for j, v in enumerate(probes):
            hv = op.matvec(v).to(torch.float64)  # stays on the device
            sum_sq[j] += float(hv @ hv)
            sum_vec[j] += hv
        rayleigh.append(float(hv @ phi64))
        del op
    variances = [
        ss.hessian_variance_from_sums(sum_sq[j], sum_vec[j], k) for j in range(len(probes))
    ]
    bulk = torch.tensor(variances[:-1], dtype=torch.float64)
    par = _unbiased(torch.tensor(rayleigh, dtype=torch.float64))
    perp = variances[-1] - par

    def per_sample(variance: float) -> float:
        return ss.per_sample_variance(max(variance, 0.0), micro_batch, n)

    return NoiseEstimate(
        micro_batch=micro_batch,
        micro_batches=k,
        vectors=vectors,
        bulk=float(bulk.mean()),
        bulk_stderr=float(bulk.std()) / math.sqrt(vectors) if vectors > 1 else math.nan,
        perp=perp,
        par=par,
        per_sample_bulk=per_sample(float(bulk.mean())),
        per_sample_perp=per_sample(perp),
        per_sample_par=per_sample(par),
    )


def sub_batch_top_eigenvalues(
    factory: OperatorFactory,
    n: int,
    batch: int,
    repeats: int,
    steps: int,
    generator: torch.Generator,
    basis_dtype: torch.dtype | str | None = None,
) -> list[float]:
    """Top eigenvalue (Lanczos, ``steps`` steps) of ``repeats`` random sub-batches of ``batch``."""
    values = []
    for _ in range(repeats):
        op = factory(torch.randperm(n, generator=generator)[:batch])
        values.append(float(top_eigenvalues(op, 1, steps, generator, basis_dtype)[0]))
        del op
    return values


def predicted_top(l1: float, noise: NoiseEstimate, batch: float, population: float) -> float:
    """``l1 + V_perp(B)/l1`` while ``l1 > sqrt(V_H(B))``, else the bulk edge ``2 sqrt(V_H(B))``."""
    bulk = ss.noise_variance(noise.per_sample_bulk, batch, population)
    perp = ss.noise_variance(noise.per_sample_perp, batch, population)
    return ss.batch_top_eigenvalue(l1, bulk, shift_variance=perp)


def batch_scaling(
    factory: OperatorFactory, probed: ProbedBatch, plan: ScalingPlan, generator: torch.Generator
) -> BatchScaling:
    """The batch-size table of the module docstring for the probed batch of ``n`` samples."""
    n, lambda_1_batch, dataset_size = probed.n, probed.lambda_1, plan.dataset_size
    noise = estimate_noise(factory, probed, plan, generator)
    s2 = noise.per_sample_perp
    l1 = ss.deconvolved_top_eigenvalue(lambda_1_batch, ss.noise_variance(s2, n, dataset_size))
    separated = not math.isnan(l1)
    if not separated:
        l1 = lambda_1_batch
    reference = plan.reference_batch or min(plan.batch_sizes)
    b_star = ss.critical_batch(l1, 1.0, s2)
    rows = []
    for batch in plan.batch_sizes:
        if batch < n:
            measured = sub_batch_top_eigenvalues(
                factory, n, batch, plan.repeats, plan.steps, generator, plan.basis_dtype
            )
            values = torch.tensor(measured, dtype=torch.float64)
            mean, spread = float(values.mean()), math.sqrt(_unbiased(values))
        elif batch == n:
            mean, spread = lambda_1_batch, 0.0
        else:
            mean, spread = math.nan, math.nan
        within = batch <= n
        lam = predicted_top(l1, noise, batch, dataset_size)
        rows.append(
            BatchSizeRow(
                batch_size=batch,
                measured_lambda_1=mean,
                measured_spread=spread,
                predicted_lambda_1=predicted_top(lambda_1_batch, noise, batch, n)
                if within
                else math.nan,
                predicted_spread=math.sqrt(ss.noise_variance(noise.per_sample_par, batch, n))
                if within
                else math.nan,
                training_lambda_1=lam,
                sgd_lr_max=ss.gd_limit(lam),
                sgd_factor=predicted_top(l1, noise, reference, dataset_size) / lam,
                linear_factor=batch / reference,
                adam_factor=ss.adam_factor(batch, reference),
                regime="linear" if batch < b_star else "saturated",
            )
        )
    return BatchScaling(
        batch=n,
        lambda_1_batch=lambda_1_batch,
        lambda_1=l1,
        separated=separated,
        noise=noise,
        dataset_size=dataset_size,
        critical_batch=b_star,
        reference_batch=reference,
        rows=rows,
    )
