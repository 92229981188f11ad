"""Read a saved Adam/AdamW optimizer state and match it to a model's parameters.

The file is ``optimizer.state_dict()`` saved with ``torch.save`` (or a
checkpoint holding it under a common key), read with ``weights_only=True``:
an optimizer state is tensors and numbers, nothing that runs code.
Parameters are matched to the optimizer's entries in ``model.parameters()``
order (the order ``torch.optim.Adam(model.parameters())`` saw them in), and
their shapes are checked.  Every problem is an
:class:`~spectralyzer.errors.InputError` of one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..hessian.adam_state import SavedMoment  # the record the math reads
from ._common import reading
from .torch_file import torch_load

#: Keys under which training scripts commonly save the optimizer state in a checkpoint.
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt")


@dataclass(frozen=True)
class SavedAdam:
    """A saved Adam/AdamW state, one entry per model parameter (``model.parameters()`` order)."""

    moments: tuple[SavedMoment, ...]
    lrs: tuple[float, ...]  # learning rate of each parameter group
    beta1: float


def load_optimizer_state(path: str | os.PathLike[str], shapes: Sequence[torch.Size]) -> SavedAdam:
    """The Adam state in the file at ``path`` for parameters of these ``shapes``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    with reading(path, "not a readable torch file"):
        obj = torch_load(path, weights_only=True, mmap=False)
    return read_optimizer_state(obj, shapes, path)


def read_optimizer_state(
    obj: Any, shapes: Sequence[torch.Size], label: str | os.PathLike[str]
) -> SavedAdam:
    """:func:`load_optimizer_state` on an already loaded object (``optimizer.state_dict()``)."""
    state = _find_state_dict(obj)
    if state is None:
        raise InputError(label, "not an optimizer state dict (no 'state' and 'param_groups')")
    groups = state["param_groups"]
    ids = [i for g in groups for i in g.get("params", [])]
    if len(ids) != len(shapes):
        raise InputError(
            label,
            f"the optimizer holds {len(ids)} parameters, the model {len(shapes)} "
            "(matched in model.parameters() order)",
        )
    beta1s = {float(g["betas"][0]) for g in groups if "betas" in g}
    if len(beta1s) != 1 or any("betas" not in g or "eps" not in g for g in groups):
        raise InputError(label, "not an Adam/AdamW state with one beta1 (betas and eps per group)")
    amsgrad = any(bool(g.get("amsgrad", False)) for g in groups)
    moments = []
    for group in groups:
        lr, beta2, eps = float(group["lr"]), float(group["betas"][1]), float(group["eps"])
        for pid in group["params"]:
            position = len(moments)
            entry = state["state"].get(pid, state["state"].get(str(pid)))
            second = _second_moment(entry, amsgrad, label)
            if second is not None and tuple(second.shape) != tuple(shapes[position]):
                raise InputError(
                    label,
                    f"parameter {position} has shape {tuple(shapes[position])} in the model "
                    f"and {tuple(second.shape)} in the optimizer state",
                )
            step = int(float(entry.get("step", 0))) if entry else 0
            numel = int(torch.Size(shapes[position]).numel())
            moments.append(SavedMoment(numel, lr, beta2, eps, step, second))
    return SavedAdam(tuple(moments), tuple(float(g["lr"]) for g in groups), beta1s.pop())


def _second_moment(entry: Any, amsgrad: bool, label: str | os.PathLike[str]) -> Any:
    """``exp_avg_sq`` (its running maximum with AMSGrad) of a parameter's entry; None if empty."""
    if not entry:
        return None
    second = entry.get("max_exp_avg_sq") if amsgrad else None
    second = second if second is not None else entry.get("exp_avg_sq")
    if second is None:
        raise InputError(label, "not an Adam/AdamW state (no exp_avg_sq)")
    return second


def _find_state_dict(obj: Any) -> Mapping | None:
    if isinstance(obj, Mapping):
        if "state" in obj and "param_groups" in obj:
            return obj
        for key in OPTIMIZER_KEYS:
            if key in obj:
                return _find_state_dict(obj[key])
    return None
