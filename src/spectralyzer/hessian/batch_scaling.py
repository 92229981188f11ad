"""How the top Hessian eigenvalue and the stable learning rate change with batch size.

Granziol et al., "Learning rates as a function of batch size: a random matrix
theory approach" (JMLR 2022), Theorem 4 and Algorithm 1; THEORY.md section 4.
The batch Hessian is the Hessian of the probed batch plus noise whose variance
along a unit vector shrinks as ``1/B``:

1. the ``n`` samples are shuffled (seeded) and split into ``K = n // b``
   micro-batches; for a few random unit ``z``,
   ``V_H(b) = K/(K-1) [mean_i ||H_i z||^2 - ||mean_i H_i z||^2]``;
2. the per-sample variance is ``S^2 = V_H(b) / (1/b - 1/n)`` (micro-batches are
   drawn without replacement from the ``n`` samples);
3. a sub-batch of ``B`` of the probed samples has noise ``S^2 (1/B - 1/n)``; its
   top eigenvalue is predicted as ``l1_n + V/l1_n`` (outlier separated from the
   noise bulk) or ``2 sqrt(V)`` (swallowed), and measured by Lanczos on random
   sub-batches, so the theory is checked on the model itself;
4. for training on a data set of ``N`` samples (infinite by default), the
   noiseless top eigenvalue ``l1`` is deconvolved from ``l1_n = l1 + S^2/(n l1)``
   and a mini-batch of ``B`` has ``lambda_1(B) = l1 + S^2 (1/B - 1/N) / l1``;
   the largest stable SGD step is ``2 / lambda_1(B)``, growing linearly in B
   below ``B* = S^2 / l1^2`` and flat above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import step_sizes as ss
from .lanczos import MatVec, top_eigenvalues


class Operator:  # the protocol a factory returns (HessianOperator, GGNOperator)
    dim: int
    dtype: torch.dtype
    device: torch.device
    matvec: MatVec


#: Builds the curvature operator of the samples with the given indices.
OperatorFactory = Callable[[torch.Tensor], Operator]


@dataclass(frozen=True)
class HessianVariance:
    """``V_H(b)`` (mean over ``vectors`` random unit z, with its standard error) and ``S^2``."""

    micro_batch: int
    micro_batches: int
    vectors: int
    value: float
    stderr: float
    per_sample: float


@dataclass(frozen=True)
class BatchSizeRow:
    """One batch size: measured and predicted top eigenvalues, and the learning rates they allow."""

    batch_size: int
    measured_lambda_1: float  # mean over random sub-batches of the probed batch (NaN if B > n)
    measured_spread: float  # their standard deviation
    predicted_lambda_1: float  # l1_n + S^2 (1/B - 1/n) / l1_n, or 2 sqrt(V)
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
    variance: HessianVariance
    dataset_size: float
    critical_batch: float  # B* = S^2 / l1^2
    reference_batch: int
    rows: list[BatchSizeRow]


def unit_vectors(count: int, dim: int, generator: torch.Generator, dtype, device) -> torch.Tensor:
    z = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return (z / z.norm(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def hessian_variance(
    factory: OperatorFactory, n: int, micro_batch: int, vectors: int, generator: torch.Generator
) -> HessianVariance:
    """Algorithm 1 of Granziol et al. on ``K = n // b`` shuffled micro-batches (streaming sums)."""
    k = n // micro_batch
    if k < 2:
        raise ValueError(f"micro-batch {micro_batch} leaves fewer than two micro-batches of {n}")
    order = torch.randperm(n, generator=generator)
    sum_sq = [0.0] * vectors
    sum_vec: list[torch.Tensor] = []
    z = None
    for i in range(k):
        op = factory(order[i * micro_batch : (i + 1) * micro_batch])
        if z is None:
            z = unit_vectors(vectors, op.dim, generator, op.dtype, op.device)
            sum_vec = [torch.zeros(op.dim, dtype=torch.float64) for _ in range(vectors)]
        for j in range(vectors):
            hz = op.matvec(z[j]).to(device="cpu", dtype=torch.float64)
            sum_sq[j] += float(hz @ hz)
            sum_vec[j] += hz
        del op
    values = torch.tensor(
        [ss.hessian_variance_from_sums(sum_sq[j], sum_vec[j], k) for j in range(vectors)],
        dtype=torch.float64,
    )
    value = float(values.mean())
    stderr = float(values.std()) / math.sqrt(vectors) if vectors > 1 else math.nan
    return HessianVariance(
        micro_batch, k, vectors, value, stderr, ss.per_sample_variance(value, micro_batch, n)
    )


def sub_batch_top_eigenvalues(
    factory: OperatorFactory,
    n: int,
    batch: int,
    repeats: int,
    steps: int,
    generator: torch.Generator,
) -> list[float]:
    """Top eigenvalue (Lanczos, ``steps`` steps) of ``repeats`` random sub-batches of ``batch``."""
    values = []
    for _ in range(repeats):
        op = factory(torch.randperm(n, generator=generator)[:batch])
        top = top_eigenvalues(op.matvec, op.dim, 1, steps, generator, op.dtype, op.device)
        values.append(float(top[0]))
        del op
    return values


def batch_scaling(
    factory: OperatorFactory,
    n: int,
    lambda_1_batch: float,
    batch_sizes: Sequence[int],
    *,
    micro_batch: int,
    vectors: int,
    repeats: int,
    steps: int,
    generator: torch.Generator,
    reference_batch: int | None = None,
    dataset_size: float = math.inf,
) -> BatchScaling:
    """The batch-size table of the module docstring for the probed batch of ``n`` samples."""
    variance = hessian_variance(factory, n, micro_batch, vectors, generator)
    s2 = max(variance.per_sample, 0.0)
    l1 = ss.deconvolved_top_eigenvalue(lambda_1_batch, s2 / n - s2 / dataset_size)
    separated = not math.isnan(l1)
    if not separated:
        l1 = lambda_1_batch
    reference = reference_batch or min(batch_sizes)
    b_star = ss.critical_batch(l1, 1.0, s2)

    def training_lambda(batch: int) -> float:
        return ss.batch_top_eigenvalue(l1, ss.noise_variance(s2, batch, dataset_size))

    rows = []
    for batch in batch_sizes:
        if batch < n:
            measured = sub_batch_top_eigenvalues(factory, n, batch, repeats, steps, generator)
            mean = sum(measured) / len(measured)
            spread = (
                math.sqrt(sum((m - mean) ** 2 for m in measured) / (len(measured) - 1))
                if len(measured) > 1
                else math.nan
            )
        elif batch == n:
            mean, spread = lambda_1_batch, 0.0
        else:
            mean, spread = math.nan, math.nan
        predicted = ss.batch_top_eigenvalue(lambda_1_batch, ss.noise_variance(s2, batch, n))
        lam = training_lambda(batch)
        rows.append(
            BatchSizeRow(
                batch_size=batch,
                measured_lambda_1=mean,
                measured_spread=spread,
                predicted_lambda_1=predicted if batch <= n else math.nan,
                training_lambda_1=lam,
                sgd_lr_max=ss.gd_limit(lam),
                sgd_factor=training_lambda(reference) / lam,
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
        variance=variance,
        dataset_size=dataset_size,
        critical_batch=b_star,
        reference_batch=reference,
        rows=rows,
    )
