"""The Hessian of a model's loss on one batch, as a matrix-free linear operator.

``H v`` is the vector-Jacobian product of the gradient with ``v``
(reverse-over-reverse, ``torch.func.vjp`` of ``torch.func.grad``; ``H`` is
symmetric), about the cost of two backward passes.  (Forward-over-reverse,
``jvp`` of ``grad``, fails in torch 2.13 for ``nn.functional.mse_loss``:
"ZeroTensors are immutable".)  The model
is put in eval mode for the probe (dropout off, BatchNorm uses its running
statistics), so ``H`` is the Hessian of a fixed, deterministic function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vjp


class HessianOperator:
    """``v -> H v`` for the loss of ``model`` on ``(inputs, targets)``, flattened over parameters.

    ``params`` selects the block: names of the parameters to differentiate (all
    trainable ones by default); the others are held fixed.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: list[str] | None = None,
    ) -> None:
        model.eval()
        named = dict(model.named_parameters())
        self.names = params or [n for n, p in named.items() if p.requires_grad]
        self.shapes = [named[n].shape for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.dim = sum(self.sizes)
        self.point = {n: named[n].detach() for n in self.names}
        fixed = {n: p.detach() for n, p in named.items() if n not in self.names}
        buffers = dict(model.named_buffers())

        def loss(point: dict[str, torch.Tensor]) -> torch.Tensor:
            state = {**fixed, **buffers, **point}
            return loss_fn(functional_call(model, state, (inputs,)), targets)

        self._loss = loss
        self._grad = grad(loss)
        self.dtype = next(iter(self.point.values())).dtype
        self.device = next(iter(self.point.values())).device

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = vector.split(self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def loss(self) -> torch.Tensor:
        return self._loss(self.point)

    def gradient(self) -> torch.Tensor:
        return self.flatten(self._grad(self.point))

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length ``dim``."""
        tangent = self.unflatten(vector.to(self.dtype))
        _, pullback = vjp(self._grad, self.point)
        return self.flatten(pullback(tangent)[0])

    __call__ = matvec
