"""Hessian-vector products by central differences of gradients (no double backward).

``H v ~ (g(w + h u) - g(w - h u)) / (2h) * ||v||`` with ``u = v / ||v||``
(docs/theory.md section 4.15; the route HessFormer and Granziol & Juarev 2026
take at 100B-parameter scale).  It needs first derivatives only: models whose
operations have no double backward (fused attention kernels, custom
functions) work as they are, and nothing but one gradient graph is ever kept,
built and freed per micro-batch.  Each product costs two gradients (two
forward and two backward passes per micro-batch); the parameters are moved to
``w +- h u`` in place and put back bit for bit from a saved copy.

The step balances three errors (docs/theory.md section 4.15): truncation,
``(h/s)^2`` relative for a loss that varies on the length ``s``; rounding of
the moved parameters, whose shift ``h u`` is stored to ``eps |w_i|`` per
entry, about ``eps ||w|| / h`` relative; and rounding in the gradients
(smaller).  Their sum is smallest at ``h = (eps ||w|| s^2)^(1/3)``, with an
error about ``(eps ||w|| / s)^(2/3)``.  ``s`` is the smaller of the
parameters' norm ``||w||`` and ``|L| / ||g||`` (how far the loss would move by
its own size along the gradient): :func:`central_step`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .microbatch import parts
from .operator import LossFn, ParameterBlock


def central_step(eps: float, weight_norm: float, gradient_norm: float, loss: float) -> float:
    """``h = (eps ||w|| s^2)^(1/3)``, ``s = min(||w||, |L| / ||g||)`` (module docstring).

    ``||w||`` below 1 counts as 1 (the rounding of tiny weights is not what limits the step);
    ``s`` is ``||w||`` when the gradient or the loss is zero.
    """
    weight = max(weight_norm, 1.0) if math.isfinite(weight_norm) else 1.0
    scale = weight
    if gradient_norm > 0 and loss != 0 and math.isfinite(loss / gradient_norm):
        scale = min(scale, abs(loss) / gradient_norm)
    return (eps * weight * scale**2) ** (1 / 3)


class FiniteDifferenceHessian(ParameterBlock):
    """``v -> H v`` by central differences of the gradient, over micro-batches of ``micro_batch``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Sequence[str] | None = None,
        micro_batch: int | None = None,
    ) -> None:
        super().__init__(model, params)
        self._run = (model, loss_fn, inputs, targets)
        n = len(inputs)
        self._parts = parts(n, micro_batch or n)
        self._weights = [len(p) / n for p in self._parts]
        self.math_attention = False  # first derivatives only: any attention kernel does
        self.loss, self.gradient = self._loss_and_gradient()
        weight_norm = math.sqrt(sum(float(p.detach().double().square().sum()) for p in self.params))
        self.eps = torch.finfo(self.dtype).eps
        self.step = central_step(self.eps, weight_norm, float(self.gradient.norm()), self.loss)

    def _loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The mean loss and its gradient at the current parameters, micro-batch by micro-batch."""
        model, loss_fn, inputs, targets = self._run
        loss, gradient = 0.0, torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for part, weight in zip(self._parts, self._weights, strict=True):
            value = loss_fn(model(inputs[part]), targets[part])
            grads = torch.autograd.grad(value, self.params, allow_unused=True)
            gradient += weight * self.flatten(grads)
            loss += weight * float(value.detach())
        return loss, gradient

    def _gradient_at(self, saved: list[torch.Tensor], shift: list[torch.Tensor], sign: int):
        with torch.no_grad():
            for p, w, d in zip(self.params, saved, shift, strict=True):
                p.copy_(w).add_(d, alpha=sign * self.step)
        return self._loss_and_gradient()[1]

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length ``dim`` (two gradients)."""
        norm = float(vector.norm())
        if norm == 0:
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        shift = self.unflatten(vector / norm)
        saved = [p.detach().clone() for p in self.params]
        try:
            plus = self._gradient_at(saved, shift, 1)
            minus = self._gradient_at(saved, shift, -1)
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, saved, strict=True):
                    p.copy_(w)
        return (plus - minus) * (norm / (2 * self.step))

    __call__ = matvec
