"""Adam's preconditioner from a saved optimizer state, and its stability limit.

THEORY.md section 4; Cohen et al. (2022), "Adaptive gradient methods at the edge
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

Parameters are matched to the optimizer's entries in ``model.parameters()``
order (the order ``torch.optim.Adam(model.parameters())`` saw them in), and
their shapes are checked.  A parameter with no state (never stepped) has
``P = eps``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from . import step_sizes as ss

#: Keys under which training scripts commonly save the optimizer state in a checkpoint.
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt")


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


def load_adam_state(path: str | os.PathLike[str], model: nn.Module) -> AdamState:
    """Read an optimizer state dict (or a checkpoint holding one) saved with ``torch.save``.

    Loaded with ``weights_only=True``: an optimizer state is tensors and numbers.
    Raises :class:`InputError` naming the file for anything that is not the Adam
    state of this model.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except Exception as err:  # torch raises many types for a file it cannot read
        raise InputError(path, f"not a readable torch file ({type(err).__name__})") from err
    return read_adam_state(obj, model, path)


def read_adam_state(obj: Any, model: nn.Module, label: str | os.PathLike[str]) -> AdamState:
    """:func:`load_adam_state` on an already loaded object."""
    state = _find_state_dict(obj)
    if state is None:
        raise InputError(label, "not an optimizer state dict (no 'state' and 'param_groups')")
    params = list(model.parameters())
    groups = state["param_groups"]
    ids = [i for g in groups for i in g.get("params", [])]
    if len(ids) != len(params):
        raise InputError(
            label,
            f"the optimizer holds {len(ids)} parameters, the model {len(params)} "
            "(matched in model.parameters() order)",
        )
    beta1s = {float(g["betas"][0]) for g in groups if "betas" in g}
    if len(beta1s) != 1 or any("betas" not in g or "eps" not in g for g in groups):
        raise InputError(label, "not an Adam/AdamW state with one beta1 (betas and eps per group)")
    parts, steps = [], 0
    amsgrad = any(bool(g.get("amsgrad", False)) for g in groups)
    position = 0
    for group in groups:
        lr, beta2, eps = float(group["lr"]), float(group["betas"][1]), float(group["eps"])
        for pid in group["params"]:
            param = params[position]
            position += 1
            entry = state["state"].get(pid, state["state"].get(str(pid)))
            second = None
            if entry:
                second = entry.get("max_exp_avg_sq") if amsgrad else None
                second = second if second is not None else entry.get("exp_avg_sq")
                if second is None:
                    raise InputError(label, "not an Adam/AdamW state (no exp_avg_sq)")
                if tuple(second.shape) != tuple(param.shape):
                    raise InputError(
                        label,
                        f"parameter {position - 1} has shape {tuple(param.shape)} in the model "
                        f"and {tuple(second.shape)} in the optimizer state",
                    )
            step = int(float(entry.get("step", 0))) if entry else 0
            steps = max(steps, step)
            if second is None or step == 0:
                p = torch.full((param.numel(),), eps, dtype=torch.float64)
            else:
                v_hat = second.detach().to(torch.float64).reshape(-1) / (1.0 - beta2**step)
                p = v_hat.sqrt() + eps
            parts.append(lr / p)
    return AdamState(
        scaling=torch.cat(parts),
        lrs=tuple(float(g["lr"]) for g in groups),
        beta1=beta1s.pop(),
        steps=steps,
    )


def _find_state_dict(obj: Any) -> Mapping | None:
    if isinstance(obj, Mapping):
        if "state" in obj and "param_groups" in obj:
            return obj
        for key in OPTIMIZER_KEYS:
            if key in obj:
                return _find_state_dict(obj[key])
    return None


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
