"""Learning-rate rules checked by running the optimisers on quadratics."""

import math

import numpy as np
import pytest
import torch

from spectralyzer.hessian import step_sizes as ss


def run_sgd(l1, lr, steps=400, **kwargs):
    """|x| after SGD on f(x) = l1 x^2 / 2 from x = 1 (torch.optim.SGD itself)."""
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * l1 * x**2).sum().backward()
        opt.step()
    return abs(float(x.detach()))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_stability_limits_of_heavy_ball_and_nesterov(beta):
    l1 = 3.0
    limit = ss.heavy_ball_limit(l1, beta) if beta else ss.gd_limit(l1)
    assert run_sgd(l1, 0.98 * limit, momentum=beta) < 1e-2
    assert run_sgd(l1, 1.02 * limit, momentum=beta) > 1.0
    if beta:
        limit = ss.nesterov_limit(l1, beta)
        assert run_sgd(l1, 0.98 * limit, momentum=beta, nesterov=True) < 1e-2
        assert run_sgd(l1, 1.02 * limit, momentum=beta, nesterov=True) > 1.0


def test_adam_limit_is_38_over_l1_at_beta_09():
    assert ss.adam_limit(2.0) == pytest.approx(38 / 2.0)


def test_heavy_ball_optimum_converges_at_its_rate():
    l1, lp = 100.0, 1.0
    lr, beta = ss.heavy_ball_optimum(l1, lp)
    rate = (math.sqrt(l1) - math.sqrt(lp)) / (math.sqrt(l1) + math.sqrt(lp))
    assert beta == pytest.approx(rate**2)
    # on curvatures l1 and lp the error shrinks by about `rate` per step
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=beta)
    curv = torch.tensor([l1, lp], dtype=torch.float64)
    norms = []
    for _ in range(200):
        opt.zero_grad()
        (0.5 * curv * x**2).sum().backward()
        opt.step()
        norms.append(float(x.detach().norm()))
    observed = (norms[-1] / norms[99]) ** (1 / 100)
    assert observed == pytest.approx(rate, rel=0.05)
    # and it beats the best plain gradient descent rate (l1 - lp) / (l1 + lp)
    assert observed < (l1 - lp) / (l1 + lp)


def test_nesterov_optimum():
    lr, mu = ss.nesterov_optimum(16.0, 1.0)
    assert lr == pytest.approx(1 / 16) and mu == pytest.approx(3 / 5)


def test_hessian_variance_of_known_micro_batches():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20, generator=gen, dtype=torch.float64)
    z = z / z.norm()
    h = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    noise = [torch.randn(20, 20, generator=gen, dtype=torch.float64) * 0.3 for _ in range(6)]
    products = [(h + e) @ z for e in noise]
    stack = torch.stack(products)
    unbiased = float(((stack - stack.mean(0)) ** 2).sum(1).sum() / (len(products) - 1))
    assert ss.hessian_variance(products) == pytest.approx(unbiased, rel=1e-12)
    with pytest.raises(ValueError):
        ss.hessian_variance(products[:1])


def test_lr_max_is_linear_then_flat_with_the_threshold_at_b_star():
    l1, b, v = 4.0, 32, 50.0
    b_star = ss.critical_batch(l1, b, v)
    assert b_star == pytest.approx(32 * 50 / 16)  # b V / l1^2 = 100
    # lr_max(B) = 2 B l1 / (B l1^2 + b V): at B* = 100, 800 / (1600 + 1600) = 0.25, half of
    # the noiseless 2 / l1 = 0.5
    assert ss.lr_max(b_star, l1, b, v) == pytest.approx(0.25)
    small = [ss.lr_max(B, l1, b, v) for B in (1, 2, 4)]
    assert small[1] / small[0] == pytest.approx(2, rel=0.02) and small[2] / small[
        1
    ] == pytest.approx(2, rel=0.05)
    assert ss.lr_max(1e9, l1, b, v) == pytest.approx(0.5, rel=1e-6)


def test_batch_top_eigenvalue_branches():
    assert ss.batch_top_eigenvalue(10.0, 4.0) == pytest.approx(10.4)
    assert ss.batch_top_eigenvalue(1.0, 16.0) == pytest.approx(8.0)


def epoch_sgd_correlation_time(lam, lr, beta, n, batch, epochs=300, seed=0):
    """tau = 2 Var(theta) / Var(v) of heavy-ball SGD on f = lam theta^2 / 2 whose gradient
    noise is the mean of a batch of per-sample noises drawn without replacement, each
    sample once per epoch (noise of an epoch sums to zero: anti-correlated)."""
    rng = np.random.default_rng(seed)
    xi = rng.standard_normal(n)
    xi -= xi.mean()
    steps = n // batch
    theta = v = 0.0
    thetas, vs = np.empty(epochs * steps), np.empty(epochs * steps)
    i = 0
    for _ in range(epochs):
        for noise in xi[rng.permutation(n)].reshape(steps, batch).mean(axis=1):
            v = beta * v - lr * (lam * theta + noise)
            theta += v
            thetas[i], vs[i] = theta, v
            i += 1
    burn = 20 * steps
    return 2 * thetas[burn:].var() / vs[burn:].var()


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("factor", [0.01, 10.0])
def test_anticorrelated_noise_caps_the_correlation_time_below_the_crossover(beta, factor):
    """Kuehn & Rosenow: tau = (1+beta)/(lr lam) above lambda_cross = 3(1-beta)S/(lr N),
    tau_SGD = (N/S)/3 (1+beta)/(1-beta) below; simulated epoch-based SGD agrees within 10%."""
    n, batch, lr = 1000, 10, 0.1
    cross = 3 * (1 - beta) * batch / (lr * n)
    assert ss.crossover_eigenvalue(lr, beta, batch, n) == pytest.approx(cross)
    lam = factor * cross
    expected = ss.correlation_time(lam, lr, beta, batch, n)  # checked against the simulation
    measured = np.mean(
        [epoch_sgd_correlation_time(lam, lr, beta, n, batch, seed=s) for s in range(4)]
    )
    assert measured == pytest.approx(expected, rel=0.1)
    if factor < 1:  # the noise-independent formula would be 100x off here
        assert (1 + beta) / (lr * lam) > 50 * measured
