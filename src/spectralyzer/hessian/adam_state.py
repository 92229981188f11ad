"""Adam's preconditioner from a saved optimizer state, and its stability limit.

docs/theory.md section 4.8; Cohen et al. (2022), "Adaptive gradient methods at the edge
of stability".  Adam and AdamW step by ``lr m_hat / P`` with the diagonal
preconditioner ``P = sqrt(v_hat) + eps``, ``v_hat = v / (1 - beta2^t)`` the
bias-corrected second moment (its running maximum with AMSGrad).  On the
quadratic model with ``P`` frozen, Adam is heavy-ball momentum on the
preconditioned Hessian, stable while

    lambda_1(P^-1/2 H P^-1/2) < (2 + 2 beta1) / ((1 - beta1) lr)      (38 / lr at beta1 = 0.9).

With one learning rate per parameter group the product that matters is
``lambda_1(D H D)``, ``D = diag(sqrt(lr_g / P))``, against
``(2 + 2 beta1) / (1 - beta1)``: its ratio says by how much every learning rate
can be scaled before Adam leaves the stable region.

The frozen-P model fails where Adam's second moment is near zero (``P ~ eps``:
a parameter that got no gradient in training, such as a bias just before
BatchNorm, whose train-mode gradient vanishes while the eval-mode Hessian the
probe takes does not; or a dead unit): there ``D H D`` can be huge while Adam,
whose step is bounded by about ``lr (1 - beta1) / sqrt(1 - beta2)`` as ``v``
adapts, stays stable.  The parameter holding most of the top eigenvector is
reported so that this case shows.

The saved state is read and matched to the model's parameters by
:mod:`spectralyzer.io.optimizer_state`; this module is the math on its
tensors.  A parameter with no state (never stepped) has ``P = eps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import step_sizes as ss
from .lanczos import top_eigenpairs
from .operator import CurvatureOperator


@dataclass(frozen=True)
class SavedMoment:
    """One parameter's entry of a saved Adam state, with its group's settings (from io)."""

    numel: int
    lr: float
    beta2: float
    eps: float
    step: int  # 0: never stepped
    second_moment: torch.Tensor | None  # exp_avg_sq (max_exp_avg_sq with AMSGrad); None: no state


@dataclass(frozen=True)
class AdamState:
    """Per-parameter scaling ``lr_g / P`` (flat, ``model.parameters()`` order) and the settings."""

    scaling: torch.Tensor  # lr_g / (sqrt(v_hat) + eps), one entry per scalar parameter
    lrs: tuple[float, ...]  # learning rate of each parameter group
    beta1: float
    steps: int  # largest step count in the state


@dataclass(frozen=True)
class AdamStability:
    """The preconditioned top curvature and the learning-rate headroom it leaves."""

    lr: float  # the optimizer's learning rate (NaN when the groups differ)
    beta1: float
    steps: int
    lambda_1_preconditioned: float  # lambda_1(P^-1/2 H P^-1/2) (NaN when the groups' lrs differ)
    scaled_sharpness: float  # lambda_1(D H D), D = sqrt(lr / P): lr times the above
    threshold: float  # (2 + 2 beta1) / (1 - beta1)
    lr_limit: float  # threshold / lambda_1_preconditioned: the largest stable lr
    headroom: float  # threshold / scaled_sharpness: the learning rates' largest stable factor
    top_parameter: str  # the parameter holding the largest share of the top eigenvector
    top_share: float  # that share of |u|^2


def scaling(moment: SavedMoment) -> torch.Tensor:
    """``lr / P`` for one parameter (flat): ``P = sqrt(v / (1 - beta2^t)) + eps``, or ``eps``
    when it was never stepped."""
    if moment.second_moment is None or moment.step == 0:
        p = torch.full((moment.numel,), moment.eps, dtype=torch.float64)
    else:
        bias = 1.0 - moment.beta2**moment.step
        v_hat = moment.second_moment.detach().to(torch.float64).reshape(-1) / bias
        p = v_hat.sqrt() + moment.eps
    return moment.lr / p


def adam_state(moments: Sequence[SavedMoment], lrs: Sequence[float], beta1: float) -> AdamState:
    """Adam's diagonal scaling ``lr_g / P`` over all parameters, in the order given."""
    return AdamState(
        scaling=torch.cat([scaling(m) for m in moments]),
        lrs=tuple(float(lr) for lr in lrs),
        beta1=beta1,
        steps=max((m.step for m in moments), default=0),
    )


class PreconditionedOperator:
    """``v -> D M (D v)``, ``D = diag(sqrt(lr / P))``: Adam's view of the curvature ``M``."""

    def __init__(self, op: CurvatureOperator, adam: AdamState) -> None:
        if adam.scaling.numel() != op.dim:
            raise ValueError(f"the Adam state covers {adam.scaling.numel()} of {op.dim} parameters")
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self.d = adam.scaling.to(device=op.device, dtype=op.dtype).sqrt()

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.d * self.op.matvec(self.d * vector)


def preconditioned_top(
    op: CurvatureOperator,
    adam: AdamState,
    names: Sequence[str],
    sizes: Sequence[int],
    steps: int,
    generator: torch.Generator,
    basis_dtype: torch.dtype | str | None = None,
) -> tuple[float, str, float]:
    """``lambda_1(D H D)`` by Lanczos on :class:`PreconditionedOperator`; and the parameter
    (of ``names``, flat ``sizes``) holding the largest share of its eigenvector (name, share
    of ``|u|^2``)."""
    values, vectors = top_eigenpairs(
        PreconditionedOperator(op, adam), 1, steps, generator, basis_dtype
    )
    shares = [float(part.square().sum()) for part in vectors[0].split(list(sizes))]
    top = int(np.argmax(shares))
    return float(values[0]), names[top], shares[top] / sum(shares)


def adam_stability(
    scaled_sharpness: float, top_parameter: str, top_share: float, adam: AdamState
) -> AdamStability:
    """The record of :class:`AdamStability` from ``lambda_1(D H D)`` and its eigenvector's
    largest parameter share."""
    threshold = ss.adam_threshold(adam.beta1)
    one_lr = len(set(adam.lrs)) == 1
    lr = adam.lrs[0] if one_lr else math.nan
    pre = scaled_sharpness / lr if one_lr and lr > 0 else math.nan
    return AdamStability(
        lr=lr,
        beta1=adam.beta1,
        steps=adam.steps,
        lambda_1_preconditioned=pre,
        scaled_sharpness=scaled_sharpness,
        threshold=threshold,
        lr_limit=ss.adam_limit(pre, adam.beta1)
        if pre > 0
        else (math.inf if pre <= 0 else math.nan),
        headroom=threshold / scaled_sharpness if scaled_sharpness > 0 else math.inf,
        top_parameter=top_parameter,
        top_share=top_share,
    )
