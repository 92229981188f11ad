"""The Generalised Gauss-Newton matrix of a model's loss on one batch, as a matrix-free operator.

``G = J^T H_L J`` (Schraudolph 2002; Martens 2010): ``J`` is the Jacobian of
the model's outputs with respect to the parameter block and ``H_L`` the
Hessian of the loss with respect to those outputs.  It drops the term of the
Hessian that carries the model's own second derivatives, so ``G`` is positive
semi-definite whenever the loss is convex in the outputs (cross entropy, MSE),
and equals the Hessian for a model linear in its parameters.

``H_L`` is not written out for any particular loss: it comes from autograd of
``loss_fn`` with respect to the outputs, so it is right for any reduction and
any loss twice differentiable in the outputs.

Reverse mode only.  The model runs once, at construction; its output graph is
kept.  ``J^T u`` is built once for a dummy ``u`` that requires grad; being
linear in ``u``, ``d((J^T u) . v)/du = J v`` (the "vjp of a vjp" trick).  A
product ``G v`` is then three backward passes: ``J v`` through the graph of
``J^T u``, ``H_L (J v)`` through the gradient of the loss in the outputs (cheap:
only the loss, not the model), and ``J^T (.)`` through the model.  As for the
Hessian, the model is in eval mode and nothing is accumulated into ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import math_attention, no_double_backward, once_differentiable
from .operator import LossFn, ParameterBlock, differentiate


class GGNOperator(ParameterBlock):
    """``v -> G v`` with ``G = J^T H_L J`` for the loss of ``model`` on ``(inputs, targets)``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, params)
        with math_attention(model) as attention:  # the graphs are built here, once
            self._build(model, loss_fn, inputs, targets)
        self.math_attention = attention.called
        self._blocked = once_differentiable(self._outputs.grad_fn, self._jtu)
        self.gradient = self._vjp(self._loss_grad.detach())

    def _build(
        self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        self._outputs = model(inputs)
        # the loss as a function of the outputs alone: its gradient, kept with its graph, gives H_L
        self._leaf = self._outputs.detach().requires_grad_(True)
        loss = loss_fn(self._leaf, targets)
        (self._loss_grad,) = torch.autograd.grad(loss, self._leaf, create_graph=True)
        # J^T u, linear in the dummy u; its graph is kept for J v = d((J^T u) . v)/du
        self._dummy = torch.zeros_like(self._outputs, requires_grad=True)
        self._jtu = [
            t if t is not None else torch.zeros_like(p)
            for t, p in zip(
                differentiate([self._outputs], self.params, [self._dummy], create_graph=True),
                self.params,
                strict=True,
            )
        ]
        self.loss = float(loss.detach())

    def _vjp(self, cotangent: torch.Tensor) -> torch.Tensor:
        """``J^T u`` as a flat vector."""
        return self.flatten(differentiate([self._outputs], self.params, [cotangent]))

    def _jvp(self, vector: torch.Tensor) -> torch.Tensor:
        """``J v`` (shaped like the outputs), by differentiating ``(J^T u) . v`` in ``u``."""
        (jv,) = differentiate(self._jtu, [self._dummy], self.unflatten(vector))
        return jv if jv is not None else torch.zeros_like(self._outputs)

    def _loss_hvp(self, tangent: torch.Tensor) -> torch.Tensor:
        """``H_L t`` for a tangent shaped like the outputs."""
        (ht,) = differentiate([self._loss_grad], [self._leaf], [tangent])
        return ht if ht is not None else torch.zeros_like(self._outputs)  # loss linear in outputs

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``G v = J^T (H_L (J v))`` for a flat vector ``v`` of length ``dim``."""
        with no_double_backward(self._blocked):
            return self._vjp(self._loss_hvp(self._jvp(vector)))

    __call__ = matvec
