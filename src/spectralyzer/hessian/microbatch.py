"""Curvature products accumulated over micro-batches, and the size of one micro-batch's graph.

The loss of a batch of ``n`` samples is a mean, so it is the weighted sum of
the means over disjoint micro-batches ``B_i`` of ``n_i`` samples with weights
``n_i / n``; every derivative of it (gradient, ``H v``, and ``G v``, since
``H_L`` of a mean is the same weighted sum) is that same weighted sum of the
micro-batches' ones (docs/theory.md section 4.13).  :class:`MicroBatched`
builds one micro-batch's operator, takes its product and drops it before the
next, so the largest graph alive is one micro-batch's, not the batch's; the
price is that each product repeats each micro-batch's forward and gradient
passes (the whole-batch operator builds its graph once and keeps it).

:func:`graph_bytes` measures what a graph holds: the bytes of the tensors
autograd saves while it is built (activations, and with ``create_graph`` the
second-order graph's own), seen by ``saved_tensors_hooks``; parameters are
not counted (they are there anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import math_attention
from .operator import LossFn

#: Builds the curvature operator of the samples with the given indices.
Builder = Callable[[torch.Tensor], Any]


def parts(n: int, size: int) -> list[torch.Tensor]:
    """The indices ``0..n-1`` in consecutive micro-batches of ``size`` (the last one shorter)."""
    return [torch.arange(start, min(start + size, n)) for start in range(0, n, size)]


class MicroBatched:
    """``v -> sum_i (n_i / n) M_i v``: one operator per micro-batch, each built, used and dropped.

    ``build(idx)`` returns the operator (Hessian, GGN, ...) of the samples
    ``idx``; it must offer ``matvec``, ``loss``, ``gradient``, ``dim``,
    ``dtype``, ``device``, ``names``, ``sizes`` (a :class:`.operator.ParameterBlock`).
    The loss and gradient of the batch are accumulated the same way, once, here.
    """

    def __init__(self, build: Builder, n: int, size: int) -> None:
        self._build = build
        self.parts = parts(n, size)
        self.weights = [len(p) / n for p in self.parts]
        self.math_attention = False
        loss, gradient = 0.0, None
        for part, weight in zip(self.parts, self.weights, strict=True):
            op = build(part)
            loss += weight * op.loss
            gradient = weight * op.gradient if gradient is None else gradient + weight * op.gradient
            self.math_attention |= bool(getattr(op, "math_attention", False))
            self.names, self.sizes = op.names, op.sizes
            self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
            del op
        self.loss, self.gradient = loss, gradient

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``M v`` of the whole batch, one micro-batch graph at a time."""
        total = None
        for part, weight in zip(self.parts, self.weights, strict=True):
            product = weight * self._build(part).matvec(vector)
            total = product if total is None else total + product
        return total

    __call__ = matvec


@dataclass(frozen=True)
class GraphSize:
    """Bytes of one micro-batch's graph: ``fixed + per_sample * samples``."""

    fixed: int
    per_sample: int

    def of(self, samples: int) -> int:
        return self.fixed + self.per_sample * samples

    def samples_within(self, budget: float) -> int:
        """The most samples whose graph fits ``budget`` bytes (0 if not even one)."""
        if self.per_sample <= 0:
            return 2**62 if self.fixed <= budget else 0
        return max(0, int((budget - self.fixed) // self.per_sample))


def saved_bytes(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    params: Sequence[torch.Tensor],
    second_order: bool,
) -> int:
    """Bytes autograd saves to build the gradient graph (with its own graph if ``second_order``)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), math_attention(model):
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(
            loss, list(params), create_graph=second_order, allow_unused=True
        )
    kept = sum(g.numel() * g.element_size() for g in grads if g is not None)
    return sum(seen.values()) + (kept if second_order else 0)


def graph_size(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    second_order: bool = True,
) -> GraphSize:
    """The graph of a micro-batch as ``fixed + per_sample * samples``, from 1 and 2 samples.

    Activations grow linearly with the samples; what does not (the gradient
    tensors, buffers saved once) is the fixed part.  Needs ``len(inputs) >= 2``.
    """
    model.eval()
    params = [p.requires_grad_(True) for p in model.parameters()]  # operators set their block
    one, two = (
        saved_bytes(model, loss_fn, inputs[:m], targets[:m], params, second_order) for m in (1, 2)
    )
    per_sample = max(two - one, 0)
    return GraphSize(fixed=max(one - per_sample, 0), per_sample=per_sample)
