"""Hessian probes against the exact Hessian of small problems (torch.autograd.functional.hessian)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from spectralyzer.hessian.lanczos import lanczos, top_eigenvalues
from spectralyzer.hessian.operator import HessianOperator, LinearMap
from spectralyzer.hessian.slq import slq
from spectralyzer.hessian.trace import hutchinson


def tiny_problem(loss="ce", seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    if loss == "ce":
        y, fn = torch.randint(0, 3, (40,)), nn.functional.cross_entropy
    else:
        y, fn = torch.randn(40, 3, dtype=torch.float64), nn.functional.mse_loss
    return model, fn, x, y


def flat_forward(model, x, names=None):
    """``(flat, outputs)``: the named parameters (all by default) as one vector, and the
    model's outputs on ``x`` as a function of that vector (the other parameters fixed)."""
    named = {n: p.detach() for n, p in model.named_parameters()}
    names = names or list(named)
    sizes = [named[n].numel() for n in names]
    shapes = [named[n].shape for n in names]

    def outputs(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return torch.func.functional_call(model, {**named, **parts}, (x,))

    return torch.cat([named[n].reshape(-1) for n in names]), outputs


def exact_hessian(model, fn, x, y, names=None) -> torch.Tensor:
    """The explicit Hessian over the named parameters (all by default), by torch.autograd."""
    flat, outputs = flat_forward(model, x, names)
    return torch.autograd.functional.hessian(lambda w: fn(outputs(w), y), flat)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_hessian_vector_products_equal_the_exact_hessian(loss):
    problem = tiny_problem(loss)
    op = HessianOperator(*problem)
    h = exact_hessian(*problem)
    assert op.dim == 5 * 6 + 6 + 6 * 3 + 3
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)


def test_block_of_one_layer():
    model, fn, x, y = tiny_problem()
    op = HessianOperator(model, fn, x, y, params=["2.weight"])
    block = exact_hessian(model, fn, x, y, names=["2.weight"])
    assert op.dim == 18
    v = torch.randn(18, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), block @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_top_eigenvalues_match_eigvalsh():
    problem = tiny_problem()
    op = HessianOperator(*problem)
    exact = np.sort(torch.linalg.eigvalsh(exact_hessian(*problem)).numpy())[::-1]
    top = top_eigenvalues(op, k=3, steps=op.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(top, exact[:3], rtol=1e-6)
    # the basis stays orthonormal: full re-orthogonalisation
    tri = lanczos(op, torch.randn(op.dim, dtype=torch.float64), op.dim)
    q = tri.basis
    torch.testing.assert_close(
        q @ q.T, torch.eye(q.shape[0], dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_hutchinson_trace_within_its_stated_error():
    problem = tiny_problem("mse")
    op = HessianOperator(*problem)
    exact = float(torch.trace(exact_hessian(*problem)))
    estimate = hutchinson(op, samples=400, generator=torch.Generator().manual_seed(3))
    assert abs(estimate.value - exact) < 4 * estimate.stderr
    assert estimate.stderr < 0.2 * abs(exact)


def test_slq_on_a_quadratic_with_known_spectrum():
    eigenvalues = torch.cat(
        [torch.linspace(0.1, 1.0, 90), torch.tensor([5.0, 10.0, 20.0])]
    ).double()
    rotation, _ = torch.linalg.qr(
        torch.randn(93, 93, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    )
    h = rotation @ torch.diag(eigenvalues) @ rotation.T
    op = LinearMap.of_matrix(h)
    steps = 8
    gen = torch.Generator().manual_seed(5)
    density = slq(op, steps=steps, vectors=1, generator=gen)
    # Gauss quadrature with m steps is exact for v^T H^j v, j <= 2m - 1
    v = torch.randn(93, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v = v / v.norm()
    for j in range(2 * steps):
        exact = float(v @ torch.linalg.matrix_power(h, j) @ v)
        assert density.moment(j) == pytest.approx(exact, rel=1e-8), j
    # averaged over vectors: the first moments estimate tr(H^j) / P
    many = slq(op, steps=steps, vectors=200, generator=torch.Generator().manual_seed(6))
    assert many.moment(0) == pytest.approx(1.0)
    assert many.moment(1) == pytest.approx(float(eigenvalues.mean()), rel=0.05)
    assert many.moment(2) == pytest.approx(float((eigenvalues**2).mean()), rel=0.15)
    assert many.mass_below(0.0) == 0.0
    assert max(many.nodes) == pytest.approx(20.0, rel=1e-6)  # the top outlier is found
    grid = np.linspace(-1, 25, 2000)
    assert np.trapezoid(many.smoothed(grid, 0.2), grid) == pytest.approx(1.0, abs=1e-3)
    assert math.isclose(many.weights.sum(), 1.0)
