"""Issue 17: curvature products accumulated over micro-batches (``--hvp-batch``).

The products of the whole batch must equal the weighted sum of the
micro-batches' products (the loss is a mean), with an uneven last micro-batch,
for the Hessian and the GGN; and the probe's numbers must not move.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spectralyzer
from spectralyzer.hessian.ggn import GGNOperator
from spectralyzer.hessian.microbatch import MicroBatched, graph_size, parts, saved_bytes
from spectralyzer.hessian.operator import HessianOperator

LOSS = nn.functional.cross_entropy


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.GELU(), nn.Linear(10, 4)
    ).double()


def data(n: int = 11, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=gen
    )


def test_parts_cover_the_batch_once_with_an_uneven_last_part():
    split = parts(11, 4)
    assert [len(p) for p in split] == [4, 4, 3]
    assert torch.equal(torch.cat(split), torch.arange(11))


@pytest.mark.parametrize("kind", [HessianOperator, GGNOperator])
@pytest.mark.parametrize("size", [1, 3, 4, 10])
def test_micro_batched_products_equal_the_whole_batch(kind, size):
    model, (x, y) = net(), data(11)
    whole = kind(model, LOSS, x, y)
    vectors = torch.randn(3, whole.dim, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    expected = [whole.matvec(v) for v in vectors]
    loss, gradient = whole.loss, whole.gradient
    del whole
    batched = MicroBatched(lambda idx: kind(model, LOSS, x[idx], y[idx]), len(x), size)
    assert len(batched.parts) == -(-11 // size)
    assert batched.loss == pytest.approx(loss, rel=1e-12)
    assert torch.allclose(batched.gradient, gradient, rtol=0, atol=1e-12 * float(gradient.norm()))
    for v, want in zip(vectors, expected, strict=True):
        got = batched.matvec(v)
        assert float((got - want).norm()) <= 1e-10 * float(want.norm())


@pytest.mark.parametrize("ggn", [False, True])
def test_probe_top_eigenvalues_do_not_move_with_hvp_batch(ggn):
    model, (x, y) = net(3), data(13, seed=4)
    kwargs = dict(top_k=3, steps=30, ggn=ggn, trace=True, trace_matvecs=12)
    whole = spectralyzer.probe(model, x, y, **kwargs)
    batched = spectralyzer.probe(model, x, y, hvp_batch=5, **kwargs)
    assert whole.memory.micro_batches == 1 and batched.memory.micro_batches == 3
    for a, b in zip(whole.curvatures, batched.curvatures, strict=True):
        assert a.top_eigenvalues == pytest.approx(b.top_eigenvalues, rel=1e-10)
        assert a.trace.value == pytest.approx(b.trace.value, rel=1e-10)
        assert a.gradient_curvature == pytest.approx(b.gradient_curvature, rel=1e-10)
    assert whole.loss == pytest.approx(batched.loss, rel=1e-12)


def test_graph_grows_linearly_in_the_samples():
    """The rule behind the default hvp_batch: graph bytes = fixed + per_sample * m, exactly."""
    model, (x, y) = net(), data(11)
    size = graph_size(model, LOSS, x, y)
    params = list(model.parameters())
    for m in (3, 7, 11):
        assert saved_bytes(model, LOSS, x[:m], y[:m], params, True) == size.of(m)
    assert size.per_sample > 0
    # the gradient kept with its graph is part of the fixed share
    assert size.fixed >= sum(p.numel() * 8 for p in params)


def test_default_hvp_batch_is_the_largest_that_fits_the_budget():
    model, (x, y) = net(), data(40)
    free = spectralyzer.probe(model, x, y, top_k=2, steps=10).memory
    assert free.hvp_batch == 40 and free.micro_batches == 1  # a tiny graph fits the default
    per_sample = free.graph_per_sample
    budget = free.total - free.terms["graph"] + free.graph_fixed + 17 * per_sample + 5
    plan = spectralyzer.probe(model, x, y, top_k=2, steps=10, memory_budget=budget).memory
    assert plan.hvp_batch == 17 and plan.micro_batches == 3
    assert plan.total <= budget < plan.total + per_sample


def test_model_without_parameters_is_refused_in_one_line():
    x, y = data(4)
    with pytest.raises(spectralyzer.InputError, match="no parameters"):
        spectralyzer.probe(nn.ReLU(), x, y)
