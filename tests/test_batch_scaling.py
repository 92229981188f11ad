"""Batch-size effects on a constructed case with a known answer (Granziol et al., Theorem 4).

Each sample's loss is the quadratic ``w^T A_i w / 2`` with ``A_i = H + G_i``:
``H = theta e_1 e_1^T`` (one outlier, the rest of the spectrum at zero) and
``G_i`` a GOE matrix (off-diagonal variance s^2, diagonal 2 s^2).  A batch of B
has Hessian ``H + mean_i G_i``: Wigner noise of variance ``(P + 1) s^2 / B``
along a unit vector, so the top eigenvalue is ``theta + V/theta`` while
``theta > sqrt(V)`` (BBP) and the semicircle edge ``2 sqrt(V)`` below.
"""

import math

import pytest
import torch
from torch import nn

from spectralyzer.hessian import step_sizes as ss
from spectralyzer.hessian.batch_scaling import ProbedBatch, ScalingPlan, batch_scaling
from spectralyzer.hessian.lanczos import top_eigenpairs
from spectralyzer.hessian.operator import HessianOperator

P, N, THETA, S = 100, 512, 20.0, 4.0


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(P, dtype=torch.float64))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((a @ self.w) * self.w).sum(dim=1)


def mean_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.mean()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, P, P, generator=g, dtype=torch.float64) * S
    a = (x + x.transpose(1, 2)) / math.sqrt(2)
    a[:, 0, 0] += THETA
    torch.manual_seed(0)
    return Quadratic(), a, torch.zeros(N)


SIZES = (4, 16, 32, 64, 128, 256, N)


@pytest.fixture(scope="module")
def result(problem):
    """One batch-size table for all the tests (each row costs Lanczos runs)."""
    model, a, y = problem
    seed = 1

    def factory(idx):
        return HessianOperator(model, mean_loss, a[idx], y[idx])

    full = factory(torch.arange(N))
    values, vectors = top_eigenpairs(full, 1, P, torch.Generator().manual_seed(seed))
    return batch_scaling(
        factory,
        ProbedBatch(N, float(values[0]), vectors[0]),
        ScalingPlan(SIZES, micro_batch=16, vectors=8, repeats=8, steps=40),
        torch.Generator().manual_seed(seed),
    )


def test_noise_variances_match_the_goe_construction(result):
    noise = result.noise
    assert noise.micro_batches == N // 16
    assert noise.per_sample_bulk == pytest.approx((P + 1) * S**2, rel=0.1)
    # along the top eigenvector (e_1): ||G e_1||^2 - (e_1' G e_1)^2 has mean (P - 1) s^2
    assert noise.per_sample_perp == pytest.approx((P - 1) * S**2, rel=0.15)
    assert noise.per_sample_par == pytest.approx(2 * S**2, rel=0.6)


def test_top_eigenvalue_falls_with_batch_size_as_predicted(result):
    sizes = SIZES
    rows = {r.batch_size: r for r in result.rows}
    measured = [rows[b].measured_lambda_1 for b in sizes]
    assert measured == sorted(measured, reverse=True)  # decreases with batch size
    for b in sizes[1:-1]:  # the outlier regime: theta + V(B)/theta, V(B) = S^2 (1/B - 1/n)
        r = rows[b]
        assert r.predicted_lambda_1 == pytest.approx(r.measured_lambda_1, rel=0.05), b
        v = (P + 1) * S**2 * (1 / b - 1 / N)
        assert r.predicted_lambda_1 == pytest.approx(result.lambda_1_batch + v / THETA, rel=0.05)
    # B = 4: sqrt(V) > theta, the outlier is swallowed by the semicircle of radius 2 sqrt(V)
    r = rows[4]
    v4 = (P + 1) * S**2 * (1 / 4 - 1 / N)
    assert math.sqrt(v4) > THETA
    assert r.predicted_lambda_1 == pytest.approx(2 * math.sqrt(v4), rel=0.1)
    assert r.measured_lambda_1 == pytest.approx(r.predicted_lambda_1, rel=0.1)
    assert rows[N].measured_lambda_1 == result.lambda_1_batch


def test_learning_rate_table_follows_the_noise(result):
    """Against the construction, not the table's own formulas: the noiseless top eigenvalue
    is THETA; per-sample noise along e_1 is (P - 1) S^2 and in bulk (P + 1) S^2, so a batch of
    B has top eigenvalue THETA + (P - 1) S^2 / (B THETA) while that exceeds the bulk's
    sqrt((P + 1) S^2 / B), else the semicircle edge 2 sqrt((P + 1) S^2 / B); SGD is stable
    below 2 / lambda_1 (Wu et al. 2018), and B* = (P - 1) S^2 / THETA^2 = 3.96."""
    # the noiseless top eigenvalue is deconvolved from the 512-sample batch
    assert result.separated
    assert result.lambda_1 == pytest.approx(THETA, rel=0.03)
    b_star = (P - 1) * S**2 / THETA**2
    assert result.critical_batch == pytest.approx(b_star, rel=0.1)
    for r in result.rows:
        bulk = (P + 1) * S**2 / r.batch_size
        top = THETA + (P - 1) * S**2 / (r.batch_size * THETA)
        expected = top if THETA > math.sqrt(bulk) else 2 * math.sqrt(bulk)  # B = 4: swallowed
        assert r.training_lambda_1 == pytest.approx(expected, rel=0.05), r.batch_size
        assert r.sgd_lr_max == pytest.approx(2 / expected, rel=0.05), r.batch_size
        assert r.adam_factor == pytest.approx(math.sqrt(r.batch_size / 4))
        assert r.linear_factor == r.batch_size / 4
        if r.batch_size >= 16:  # far above B* ~ 4
            assert r.regime == "saturated"
    lrs = [r.sgd_lr_max for r in result.rows if r.batch_size >= 16]
    assert lrs == sorted(lrs)  # larger batches allow larger steps, less than linearly
    assert result.rows[-1].sgd_factor < result.rows[-1].linear_factor


def test_deconvolution_inverts_the_outlier_shift():
    # l1 = 3, V = 2: the batch's top eigenvalue is 3 + 2/3 = 11/3, and l1 solves
    # l1^2 - (11/3) l1 + 2 = 0, whose larger root is 3 (the smaller, 2/3, is below sqrt(V))
    assert ss.batch_top_eigenvalue(3.0, 2.0) == pytest.approx(11 / 3)
    assert ss.deconvolved_top_eigenvalue(11 / 3, 2.0) == pytest.approx(3.0)
    assert ss.batch_top_eigenvalue(1.0, 4.0) == pytest.approx(4.0)  # swallowed: 2 sqrt(V)
    assert math.isnan(ss.deconvolved_top_eigenvalue(1.0, 4.0))  # below the bulk edge
