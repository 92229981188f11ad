"""Curvature operators: the one interface every estimator takes, and the Hessian of a loss.

A :class:`CurvatureOperator` is a symmetric matrix known only through its
products ``v -> M v`` on flat vectors of length ``dim`` (in ``dtype``, on
``device``).  Lanczos, Hutch++, SLQ and the batch-size probe take one; the
Hessian, the GGN and Adam's preconditioned Hessian are ones.

``H v`` is Pearlmutter's trick done by double backward: the gradient is built
once with ``create_graph=True`` and kept, and each product is one more
backward pass through it, ``H v = d(g . v)/dw`` (about the cost of two
backward passes; the forward pass is not repeated).  Attention runs on the math
backend while the graph is built (:mod:`.attention`: the fused kernels have no
double backward); ``math_attention`` says whether the model called it.  Double backward works on
plain modules and on TorchScript ones alike (``torch.func.functional_call``
refuses scripted modules).

The model is put in eval mode for the probe: dropout is off and BatchNorm uses
its running statistics, so ``H`` is the Hessian of one fixed, deterministic
function of the parameters (train-mode BatchNorm would couple the samples of
the batch and make the curvature depend on how the batch is split).
Parameters outside the block get ``requires_grad=False``; nothing is
accumulated into ``.grad`` (only ``torch.autograd.grad`` is used).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .attention import math_attention, no_double_backward, once_differentiable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MatVec = Callable[[torch.Tensor], torch.Tensor]


class CurvatureOperator(Protocol):
    """A symmetric ``dim x dim`` matrix known through ``matvec`` (what every estimator takes)."""

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matvec(self, vector: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LinearMap:
    """Any ``v -> A v`` as a :class:`CurvatureOperator` (a deflated operator, an explicit matrix)."""

    dim: int
    matvec: MatVec
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")

    @classmethod
    def of_matrix(cls, matrix: torch.Tensor) -> LinearMap:
        """The operator of an explicit square matrix."""
        return cls(matrix.shape[0], lambda v: matrix @ v, matrix.dtype, matrix.device)


class ParameterBlock:
    """A block of a model's parameters, flattened into one vector space of dimension ``dim``.

    ``params`` names the parameters (all of them by default); they get
    ``requires_grad=True`` and every other parameter ``requires_grad=False``.
    """

    def __init__(self, model: nn.Module, params: Sequence[str] | None = None) -> None:
        model.eval()
        named = dict(model.named_parameters())
        self.names = list(params) if params else list(named)
        unknown = [n for n in self.names if n not in named]
        if unknown:
            raise ValueError(f"no parameter named {', '.join(unknown)}")
        if not self.names:
            raise ValueError("the model has no parameters")
        for name, param in named.items():
            param.requires_grad_(name in self.names)
        self.params = [named[n] for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        parts = vector.to(self.dtype).split(self.sizes)
        return [p.view(s) for p, s in zip(parts, self.shapes, strict=True)]

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """One vector from per-parameter tensors; ``None`` (no dependence) is zero."""
        return torch.cat(
            [
                (t if t is not None else torch.zeros_like(p)).reshape(-1)
                for t, p in zip(tensors, self.params, strict=True)
            ]
        )


def differentiate(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    *,
    create_graph: bool = False,
) -> list[torch.Tensor | None]:
    """``torch.autograd.grad`` over the outputs that depend on anything; ``None`` where nothing does.

    Outputs that do not require grad (a constant gradient, e.g. of a bias
    under a quadratic loss) contribute zero instead of raising, and unused
    inputs give ``None`` instead of raising (a pitfall of PyHessian).
    """
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
    if not pairs:
        return [None] * len(inputs)
    return list(
        torch.autograd.grad(
            [o for o, _ in pairs],
            list(inputs),
            grad_outputs=[g for _, g in pairs],
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
    )


class HessianOperator(ParameterBlock):
    """``v -> H v`` for the loss of ``model`` on ``(inputs, targets)``, over the parameter block."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, params)
        with math_attention(model) as attention:  # the graph is built here, once
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.math_attention = attention.called
        self._grads = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads, self.params, strict=True)
        ]
        self._blocked = once_differentiable(loss.grad_fn, self._grads)
        self.loss = float(loss.detach())
        self.gradient = self.flatten([g.detach() for g in self._grads])

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length ``dim``."""
        with no_double_backward(self._blocked):
            return self.flatten(differentiate(self._grads, self.params, self.unflatten(vector)))

    __call__ = matvec
