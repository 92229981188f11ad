"""The GGN operator and Hutch++ against explicit matrices on small problems."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from spectralyzer.hessian.ggn import GGNOperator
from spectralyzer.hessian.lanczos import top_eigenvalues
from spectralyzer.hessian.operator import HessianOperator, LinearMap
from spectralyzer.hessian.trace import hutch_plus_plus, hutchinson
from test_hessian import exact_hessian, flat_forward, tiny_problem


def exact_ggn(model, fn, x, y, names=None) -> torch.Tensor:
    """``J^T H_L J`` written out: J of the outputs in the flat parameters, H_L of the loss in the outputs."""
    flat, outputs = flat_forward(model, x, names)
    out = outputs(flat).detach()
    jac = torch.autograd.functional.jacobian(outputs, flat).reshape(out.numel(), flat.numel())
    h_l = torch.autograd.functional.hessian(lambda o: fn(o, y), out)
    h_l = h_l.reshape(out.numel(), out.numel())
    return jac.T @ h_l @ jac


def random_vectors(dim, count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(count)]


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_ggn_vector_products_equal_the_explicit_ggn(loss):
    problem = tiny_problem(loss)
    op = GGNOperator(*problem)
    g = exact_ggn(*problem)
    assert op.dim == g.shape[0] == 5 * 6 + 6 + 6 * 3 + 3
    for v in random_vectors(op.dim, 3):
        torch.testing.assert_close(op.matvec(v), g @ v, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(op(v), g @ v, rtol=1e-10, atol=1e-10)
    # the loss and its gradient, computed here by plain autograd
    model, fn, x, y = problem
    loss = fn(model(x), y)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
    assert op.loss == pytest.approx(loss.item(), rel=1e-14)
    torch.testing.assert_close(op.gradient, gradient, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_ggn_is_psd_and_differs_from_the_hessian_of_a_nonlinear_net(loss):
    problem = tiny_problem(loss)
    g = exact_ggn(*problem)
    h = exact_hessian(*problem)
    torch.testing.assert_close(g, g.T, rtol=0, atol=1e-12)
    assert float(torch.linalg.eigvalsh(g).min()) > -1e-10
    assert float(torch.linalg.eigvalsh(h).min()) < -1e-4  # the Hessian itself is indefinite
    assert float((g - h).norm()) > 1e-2 * float(h.norm())
    op = GGNOperator(*problem)
    for v in random_vectors(op.dim, 5, seed=2):
        assert float(v @ op.matvec(v)) >= -1e-12


def test_ggn_equals_the_hessian_for_a_model_linear_in_its_parameters():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randn(30, 3, dtype=torch.float64)
    problem = (model, nn.functional.mse_loss, x, y)
    ggn, hess = GGNOperator(*problem), HessianOperator(*problem)
    torch.testing.assert_close(exact_ggn(*problem), exact_hessian(*problem), rtol=1e-10, atol=1e-12)
    for v in random_vectors(ggn.dim, 3):
        torch.testing.assert_close(ggn.matvec(v), hess.matvec(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["0.weight", "2.bias"])
def test_ggn_block_of_one_parameter(name):
    problem = tiny_problem("ce")
    full = exact_ggn(*problem)
    named = dict(problem[0].named_parameters())
    start = 0
    for n, p in named.items():
        if n == name:
            break
        start += p.numel()
    size = named[name].numel()
    block = full[start : start + size, start : start + size]
    op = GGNOperator(*problem, params=[name])
    assert op.dim == size
    torch.testing.assert_close(exact_ggn(*problem, names=[name]), block, rtol=1e-10, atol=1e-12)
    for v in random_vectors(size, 2):
        torch.testing.assert_close(op.matvec(v), block @ v, rtol=1e-10, atol=1e-12)


def test_ggn_with_an_unused_parameter_and_a_loss_linear_in_the_outputs():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x):
            return torch.tanh(self.used(x))

    torch.manual_seed(1)
    model = Partial().double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    op = GGNOperator(model, nn.functional.cross_entropy, x, y)
    v = torch.randn(op.dim, dtype=torch.float64)
    gv = op.matvec(v)
    assert torch.all(gv[8:] == 0)  # no curvature along the unused layer
    assert float(gv[:8].norm()) > 0
    # H_L = 0 for a loss linear in the outputs, so G = 0 (no error on the constant gradient)
    linear = GGNOperator(model, lambda out, _: out.sum(), x, y)
    assert torch.all(linear.matvec(v) == 0)
    assert float(linear.gradient[:8].norm()) > 0


def test_lanczos_top_eigenvalue_of_the_ggn():
    problem = tiny_problem("ce")
    op = GGNOperator(*problem)
    exact = np.sort(torch.linalg.eigvalsh(exact_ggn(*problem)).numpy())[::-1]
    top = top_eigenvalues(op, k=2, steps=op.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(top, exact[:2], rtol=1e-6)


def decaying_psd(dim=200, seed=0, rate=1.5):
    """A random PSD matrix with eigenvalues ``i^-rate``."""
    rotation, _ = torch.linalg.qr(
        torch.randn(dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    eigenvalues = torch.arange(1, dim + 1, dtype=torch.float64) ** -rate
    return rotation @ torch.diag(eigenvalues) @ rotation.T


def test_hutch_plus_plus_beats_hutchinson_on_a_decaying_spectrum():
    a = decaying_psd()
    exact = float(torch.trace(a))
    op = LinearMap.of_matrix(a)
    budget = 60
    estimate = hutch_plus_plus(op, budget, torch.Generator().manual_seed(0))
    assert estimate.samples == budget
    assert 0 < estimate.stderr
    assert abs(estimate.value - exact) < 4 * estimate.stderr
    errors_pp, errors_h, covered = [], [], 0
    for seed in range(30):
        pp = hutch_plus_plus(op, budget, torch.Generator().manual_seed(seed))
        h = hutchinson(op, budget, torch.Generator().manual_seed(seed))
        errors_pp.append(abs(pp.value - exact))
        errors_h.append(abs(h.value - exact))
        covered += abs(pp.value - exact) < 3 * pp.stderr
    rms_pp, rms_h = np.sqrt(np.mean(np.square(errors_pp))), np.sqrt(np.mean(np.square(errors_h)))
    assert rms_pp < 0.2 * rms_h
    assert covered >= 25  # the stated error is honest, not just small


def test_hutch_plus_plus_is_exact_below_the_sketch_rank():
    g = torch.Generator().manual_seed(7)
    factor = torch.randn(100, 5, dtype=torch.float64, generator=g)
    a = factor @ factor.T  # rank 5 < 30 / 3
    estimate = hutch_plus_plus(LinearMap.of_matrix(a), 30, torch.Generator().manual_seed(1))
    assert estimate.value == pytest.approx(float(torch.trace(a)), rel=1e-8)
    assert estimate.stderr < 1e-8 * float(torch.trace(a))
    assert estimate.samples == 30


def test_hutch_plus_plus_small_budgets_and_small_dimensions():
    a = decaying_psd(dim=12, seed=3)
    op = LinearMap.of_matrix(a)
    # a third of the budget covers the whole space: the trace exactly, from dim products
    whole = hutch_plus_plus(op, 36, torch.Generator().manual_seed(0))
    assert whole.value == pytest.approx(float(torch.trace(a)), rel=1e-12)
    assert (whole.stderr, whole.samples) == (0.0, 12)
    # below three products there is no sketch: plain Hutchinson on the same draws
    for budget in (1, 2):
        small = hutch_plus_plus(op, budget, torch.Generator().manual_seed(5))
        plain = hutchinson(op, budget, torch.Generator().manual_seed(5))
        assert small.value == plain.value and small.samples == budget
    assert math.isnan(hutch_plus_plus(op, 1, torch.Generator().manual_seed(5)).stderr)
    with pytest.raises(ValueError):
        hutch_plus_plus(op, 0, torch.Generator().manual_seed(5))


def test_trace_estimators_on_the_hessian_of_the_tiny_net():
    problem = tiny_problem("ce")
    op = HessianOperator(*problem)
    exact = float(torch.trace(exact_hessian(*problem)))
    budget = 120  # a sketch of 40 columns in dimension 57
    pp = hutch_plus_plus(op, budget, torch.Generator().manual_seed(3))
    h = hutchinson(op, budget, torch.Generator().manual_seed(3))
    assert pp.samples == h.samples == budget
    assert abs(pp.value - exact) < 4 * pp.stderr
    assert abs(h.value - exact) < 4 * h.stderr
    assert pp.stderr < h.stderr
