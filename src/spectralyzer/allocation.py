"""Per-layer settings from per-layer alphas: the published mappings (docs/theory.md section 6.2).

Pure functions over arrays, one per paper, so each can be checked by hand:

- :func:`alpha_pruning`: pruning sparsity (AlphaPruning, NeurIPS 2024), docs/theory.md 6.4;
- :func:`linear_map`: learning rates (TempBalance, NeurIPS 2023) and weight decay
  (AlphaDecay, 2025), docs/theory.md 6.5;
- :func:`alpha_q`: quantisation bits (AlphaQ, 2026), a small integer program, docs/theory.md 6.6;
- :func:`alpha_lora`: LoRA experts per block (AlphaLoRA, EMNLP 2024), docs/theory.md 6.7;
- :func:`block_of` and :func:`group_means`: the transformer block of a layer and
  block-wise means, docs/theory.md 6.2.

Higher alpha means a less trained layer: it is pruned more, gets a higher
learning rate, more weight decay, fewer bits and more experts.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .errors import OptionError

#: ``layers.7.``, ``h.7.``, ``layer.7.``, ``blocks.7.``, ``block.7.`` (T5): block 7.
BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
BIT_CHOICES = (2, 3, 4)


def block_of(name: str) -> int | None:
    """The transformer block index in a parameter name; None for a layer outside any block.

    The first match wins: T5's ``encoder.block.1.layer.0.SelfAttention.q`` is block 1.
    Encoder and decoder blocks of the same index are told apart by :func:`block_key`.
    """
    match = BLOCK.search(name)
    return int(match.group(1)) if match else None


def block_key(name: str) -> str | None:
    """The group of a layer for block-wise means: the name up to and with its block index
    (``model.layers.7``), so an encoder's block 7 is not a decoder's; None outside blocks."""
    match = BLOCK.search(name)
    return name[: match.end() - 1].lstrip(".") if match else None


def group_means(values: Sequence[float], groups: Sequence[Hashable | None]) -> np.ndarray:
    """Each value replaced by the mean of its group; a ``None`` group is a group of one.

    NaN values (failed fits) are left out of their group's mean; a group of NaNs stays NaN.
    """
    values = np.asarray(values, dtype=float)
    out = values.copy()
    keys = [g if g is not None else ("own", i) for i, g in enumerate(groups)]
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        finite = values[members][np.isfinite(values[members])]
        out[members] = finite.mean() if finite.size else np.nan
    return out


def unit_scores(metric: np.ndarray) -> np.ndarray:
    """``(m - min) / (max - min)``, in [0, 1]; all zeros when every metric is equal."""
    metric = np.asarray(metric, dtype=float)
    low, high = metric.min(), metric.max()
    return np.zeros_like(metric) if high == low else (metric - low) / (high - low)


def _check_metric(metric: np.ndarray) -> np.ndarray:
    metric = np.asarray(metric, dtype=float)
    if metric.size == 0:
        raise OptionError("layers", "no layer to allocate to")
    if not np.all(np.isfinite(metric)):
        raise OptionError("layers", "a layer has no finite alpha (its fit failed); exclude it")
    return metric


# --- sparsity (AlphaPruning)


@dataclass(frozen=True)
class Sparsity:
    """Per-layer pruning ratios and how they were reached."""

    ratios: np.ndarray  # the allocation (clipped when asked)
    unclipped: np.ndarray  # the published mapping's ratios, before any clipping
    out_of_range: int  # unclipped ratios outside [0, 1)
    clipped: int  # ratios held at a bound by the clipping


def alpha_pruning(
    metric: np.ndarray,
    params: np.ndarray,
    target: float,
    eps: float = 0.3,
    clip_max: float | None = None,
) -> Sparsity:
    """AlphaPruning's ``ww_sparsity`` (docs/theory.md section 6.4).

    ``r = (1 - eps) + unit_scores(metric) * 2 eps``, then every ``r`` scaled by
    ``target * sum(n) / sum(n r)`` so the parameter-weighted mean is ``target``.
    ``clip_max``: hold ratios in ``[0, clip_max]`` and rescale the others until the
    mean is the target again (:func:`clip_to_mean`).
    """
    metric, params = _check_metric(metric), np.asarray(params, dtype=float)
    if not 0 <= target < 1:
        raise OptionError("sparsity", f"must be in [0, 1), not {target!r}")
    if not 0 <= eps <= 1:
        raise OptionError("eps", f"must be from 0 to 1, not {eps!r}")
    raw = (1 - eps) + unit_scores(metric) * 2 * eps
    unclipped = raw * (target * params.sum() / (params * raw).sum())
    outside = int(np.sum((unclipped < 0) | (unclipped >= 1)))
    if clip_max is None:
        return Sparsity(unclipped, unclipped, outside, 0)
    if not target <= clip_max < 1:
        raise OptionError("clip_max", f"must be in [--sparsity, 1), not {clip_max!r}")
    ratios, held = clip_to_mean(raw, params, target, clip_max)
    return Sparsity(ratios, unclipped, outside, held)


def clip_to_mean(
    raw: np.ndarray, weights: np.ndarray, target: float, high: float
) -> tuple[np.ndarray, int]:
    """``clip(c * raw, 0, high)`` with ``c`` chosen so the weighted mean is ``target``.

    Water-filling: entries with ``raw <= 0`` are 0 for every ``c``; clip the largest
    at ``high``, rescale the free ones to restore the mean, and repeat until no free
    entry exceeds ``high`` (an entry once over stays over: ``c`` only grows). At most
    one pass per entry. Returns the values and how many are held at a bound.
    """
    raw, weights = np.asarray(raw, dtype=float), np.asarray(weights, dtype=float)
    goal = target * weights.sum()
    positive = raw > 0
    if goal > high * weights[positive].sum() * (1 + 1e-12):
        raise OptionError("clip_max", f"{high!r} cannot reach the target: raise it or lower eps")
    values = np.zeros_like(raw)
    held = ~positive
    for _ in range(raw.size + 1):
        free = ~held
        rest = goal - high * weights[held & positive].sum()
        values[free] = raw[free] * (rest / (weights[free] * raw[free]).sum()) if free.any() else 0
        over = free & (values > high)
        if not over.any():
            break
        values[over] = high
        held |= over
    return values, int((~positive).sum() + (held & positive).sum())


# --- learning rate (TempBalance) and weight decay (AlphaDecay)


def linear_map(
    metric: np.ndarray, base: float, low: float, high: float, tuned: np.ndarray
) -> np.ndarray:
    """``base * (low + unit_scores * (high - low))`` on the ``tuned`` layers, ``base`` elsewhere.

    TempBalance (lr: low 0.5, high 1.5) and AlphaDecay (wd: low 0.666, high 3);
    min and max are taken over the tuned layers only, as both codes drop the first
    and last layers before mapping (docs/theory.md section 6.5).
    """
    metric = _check_metric(metric)
    tuned = np.asarray(tuned, dtype=bool)
    out = np.full(metric.size, float(base))
    if tuned.any():
        out[tuned] = base * (low + unit_scores(metric[tuned]) * (high - low))
    return out


def ends_fixed(count: int) -> np.ndarray:
    """The tuned mask that leaves the first and last layers at the base value."""
    tuned = np.ones(count, dtype=bool)
    tuned[[0, -1]] = False
    return tuned


# --- bits (AlphaQ)


@dataclass(frozen=True)
class Bits:
    """Per-layer bit widths, the sensitivities behind them and the objective reached."""

    bits: np.ndarray  # int, one of the choices per layer
    sensitivity: np.ndarray  # (median alpha / alpha)^gamma
    objective: float  # sum s_l Var(W_l) 2^(-2 b_l)


def alpha_q(
    metric: np.ndarray,
    variance: np.ndarray,
    params: np.ndarray,
    mean_bits: float,
    gamma: float = 10.0,
    choices: Sequence[int] = BIT_CHOICES,
) -> Bits:
    """AlphaQ's bit allocation (docs/theory.md section 6.6) by ``scipy.optimize.milp``.

    Minimise ``sum_l s_l Var(W_l) 2^(-2 b_l)``, ``s_l = (median alpha / alpha_l)^gamma``,
    over ``b_l`` in ``choices``, subject to ``sum n_l b_l <= mean_bits * sum n_l``.
    An infeasible budget (below the smallest choice) is an :class:`OptionError`.
    """
    metric = _check_metric(metric)
    variance, params = np.asarray(variance, float), np.asarray(params, np.int64)
    choices = np.asarray(sorted(set(choices)), dtype=float)
    if not mean_bits >= choices[0]:
        raise OptionError(
            "mean_bits",
            f"{mean_bits!r} is infeasible: every layer needs at least {choices[0]:g} bits",
        )
    if not np.all(metric > 0):
        raise OptionError("layers", "AlphaQ needs positive alphas")
    log_s = gamma * np.log(np.median(metric) / metric)  # in logs: gamma 10 overflows easily
    with np.errstate(divide="ignore"):
        log_cost = (log_s + np.log(variance))[:, None] - 2 * np.log(2) * choices[None, :]
    top = log_cost.max() if np.isfinite(log_cost.max()) else 0.0
    layers, k = metric.size, choices.size
    one_each = np.kron(np.eye(layers), np.ones(k))  # sum_k x_lk = 1
    budget_row = (params[:, None] * choices[None, :]).ravel()
    budget = np.floor(mean_bits * params.sum() + 1e-9)  # integer bits: no tolerance slack
    result = milp(
        np.exp(log_cost - top).ravel(),  # scaled to max 1: the optimum is unchanged
        integrality=np.ones(layers * k),
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(budget_row[None, :], -np.inf, budget),
        ],
        options={"mip_rel_gap": 0.0},
    )
    if result.x is None:
        raise OptionError("mean_bits", f"{mean_bits!r} is infeasible ({result.message})")
    pick = np.round(result.x).reshape(layers, k).argmax(axis=1)
    pick = _spend_leftover(pick, log_cost, params, choices, budget)
    bits = choices[pick].astype(int)
    with np.errstate(over="ignore"):  # reported as inf when beyond floats; the choice is exact
        objective = float(np.exp(log_cost[np.arange(layers), pick]).sum())
        return Bits(bits, np.exp(log_s), objective)


def _spend_leftover(
    pick: np.ndarray, log_cost: np.ndarray, params: np.ndarray, choices: np.ndarray, budget: float
) -> np.ndarray:
    """Raise layers to their next width while the budget allows, best gain per bit first.

    The solver ranks costs only to its tolerance (~1e-9 of the objective); with gamma 10
    the costs span many decades, so a layer of tiny cost may be left below a width the
    budget still pays for. Each raise lowers the objective and keeps the budget.
    """
    pick = pick.copy()
    while True:
        used = float((params * choices[pick]).sum())
        best, best_gain = -1, -np.inf
        for layer in np.flatnonzero(pick < choices.size - 1):
            extra = params[layer] * (choices[pick[layer] + 1] - choices[pick[layer]])
            if used + extra > budget:
                continue
            step = choices[pick[layer] + 1] - choices[pick[layer]]
            gain = log_cost[layer, pick[layer]] + np.log1p(-(4.0**-step)) - np.log(extra)
            if gain > best_gain:
                best, best_gain = layer, gain
        if best < 0:
            return pick
        pick[best] += 1


# --- LoRA experts (AlphaLoRA)


def alpha_lora(block_metric: np.ndarray, total: int = 160, beta: float = 2.5) -> np.ndarray:
    """AlphaLoRA's experts per block (docs/theory.md section 6.7): ``T a^beta / sum a^beta``,
    rounded by largest remainders so the counts sum to ``total`` exactly."""
    block_metric = _check_metric(block_metric)
    if not (isinstance(total, int) and total >= 0):
        raise OptionError("experts", f"must be a whole number >= 0, not {total!r}")
    if not np.all(block_metric > 0):
        raise OptionError("layers", "AlphaLoRA needs positive alphas")
    logs = beta * np.log(block_metric)
    weights = np.exp(logs - logs.max())  # a^beta / max a^beta: no overflow for large beta
    return largest_remainder(total * weights / weights.sum(), total)


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``: the floors, plus one for the largest fractional parts
    (ties to the earlier entry)."""
    floors = np.floor(shares).astype(int)
    missing = total - int(floors.sum())
    order = np.argsort(-(shares - floors), kind="stable")
    floors[order[:missing]] += 1
    return floors
