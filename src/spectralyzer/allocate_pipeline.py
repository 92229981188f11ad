"""``allocate``: analysis -> per-layer metric -> a published mapping -> one value per layer.

The metric is the ``alpha`` column of :func:`~spectralyzer.pipeline.run_analysis`;
the math is in :mod:`spectralyzer.allocation` (docs/theory.md sections 6.2 and 6.4). The
result renders like every other (:mod:`spectralyzer.render`) and also as a
``{"layer name": value}`` mapping for pruning or training scripts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import allocation
from .allocate_settings import PAPERS, TARGETS, AllocationSettings, make_settings
from .errors import InputError
from .pipeline import (
    AnalysisOptions,
    OnPlan,
    OnProgress,
    Source,
    make_options,
    open_source,
    run_analysis,
)
from .render import DIGITS, clean_json, with_shown
from .roles import role_of

COLUMNS = ("name", "role", "block", "parameters", "metric", "group_metric", "value")
SHOWN = ("name", "role", "block", "parameters", "metric", "group_metric", "value")
SUM_TOLERANCE = 1e-9  # the constraints hold to this (they are exact up to rounding)


def analysis_settings(options: AnalysisOptions, estimator: str) -> AnalysisOptions:
    """The analysis behind an allocation: ``options`` with the mapping's estimator (the
    paper's unless ``--estimator`` chose another; docs/theory.md section 6.2)."""
    return replace(options, estimator=estimator)


def used_estimator(options: AnalysisOptions) -> str:
    """The estimator the analysis ran."""
    return options.estimator


@dataclass(frozen=True)
class Allocation:
    """Per-layer values of one mapping, and the summary proving its constraint."""

    table: pd.DataFrame  # COLUMNS, one row per analysed matrix, in model order
    summary: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return {"layers": self.table.to_dict(orient="records"), "summary": self.summary}

    def tables(self) -> dict[str, pd.DataFrame]:
        blocks = ["" if b is None else str(b) for b in self.table["block"]]
        frame = self.table.assign(block=blocks)
        frame.attrs[DIGITS] = 4  # learning rates and weight decays are small numbers
        return {"allocation": with_shown(frame, SHOWN)}

    def summary_lines(self) -> list[str]:
        return summary_lines(self.summary)

    def mapping(self) -> dict[str, float | int]:
        """``{"layer name": value}``, the shape a pruning or training script reads."""
        return {
            str(k): v
            for k, v in clean_json(
                dict(zip(self.table["name"], self.table["value"], strict=True))
            ).items()
        }

    def mapping_json(self) -> str:
        return json.dumps(self.mapping(), indent=2) + "\n"


def run_allocation(
    source: Source,
    settings: AllocationSettings,
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    *,
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
) -> Allocation:
    """Analyse ``source`` and allocate ``settings.mapping`` over its analysed layers."""
    settings = settings.resolved()
    options = analysis_settings(options, settings.estimator)
    analysis = run_analysis(source, options, on_plan=on_plan, progress=progress)
    layers = layer_frame(analysis.details)
    path = analysis.summary.get("model", "<model>")
    failed = layers[~np.isfinite(layers["metric"])]
    if len(failed):
        raise InputError(
            path,
            f"{failed['name'].iloc[0]}: no alpha (fit failed); leave it out with --exclude",
        )
    keys = (
        [allocation.block_key(n) for n in layers["name"]]
        if settings.block_wise
        else [None] * len(layers)
    )
    layers["group_metric"] = allocation.group_means(layers["metric"], keys)
    values, constraint = _allocate(layers, keys, settings, source, options)
    layers["value"] = values
    summary = {
        "model": path,
        "mapping": settings.mapping,
        "paper": PAPERS[settings.mapping],
        "target": settings.target,
        "target_option": "--" + TARGETS[settings.mapping].replace("_", "-"),
        "metric": "alpha",
        "estimator": used_estimator(options),
        "estimator_published": settings.estimator,
        "block_wise": settings.block_wise,
        "settings": settings.hyper(),
        "num_layers": len(layers),
        "parameters": int(layers["parameters"].sum()),
        "constraint": constraint,
        "analysis": {k: analysis.summary.get(k) for k in ("format", "esd", "device", "seed")},
    }
    return Allocation(layers[list(COLUMNS)], summary)


def layer_frame(details: pd.DataFrame) -> pd.DataFrame:
    """name, role, block, parameters and metric of each analysed matrix, in model order."""
    frame = pd.DataFrame(
        {
            "name": details["name"],
            "role": [
                role_of(n, t) for n, t in zip(details["name"], details["layer_type"], strict=True)
            ],
            "parameters": [int(np.prod(s)) for s in details["shape"]],
            "metric": details["alpha"].astype(float),
        }
    )
    order = sorted(range(len(frame)), key=lambda i: model_order(frame["name"][i], frame["role"][i]))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["block"] = pd.Series([allocation.block_of(n) for n in frame["name"]], dtype=object)
    return frame


def model_order(name: str, role: str) -> tuple:
    """Embeddings first, the head last, the rest by name with numbers compared as numbers
    (``layers.10`` after ``layers.9``): "first" and "last" layer for lr and weight decay."""
    rank = 0 if role == "embedding" else 2 if role == "lm-head" else 1
    parts = re.split(r"(\d+)", name)
    return (rank, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts])


def _allocate(
    layers: pd.DataFrame,
    keys: list[str | None],
    s: AllocationSettings,
    source: Source,
    options: AnalysisOptions,
) -> tuple[np.ndarray, dict[str, Any]]:
    metric = layers["group_metric"].to_numpy(float)
    params = layers["parameters"].to_numpy(np.int64)
    if s.mapping == "sparsity":
        result = allocation.alpha_pruning(metric, params, s.target, s.eps, s.clip_max)
        mean = float((params * result.ratios).sum() / params.sum())
        return result.ratios, {
            "weighted_mean_sparsity": mean,
            "difference": abs(mean - s.target),
            "holds": abs(mean - s.target) <= SUM_TOLERANCE,
            "outside_0_1": result.out_of_range,
            "clipped": result.clipped,
            "range": [float(result.ratios.min()), float(result.ratios.max())],
        }
    if s.mapping in ("lr", "weight-decay"):
        tuned = (
            allocation.ends_fixed(len(layers))
            if s.keep_ends and len(layers) > 2
            else np.ones(len(layers), bool)
        )
        values = allocation.linear_map(metric, s.target, s.min_ratio, s.max_ratio, tuned)
        return values, {
            "range": [float(values.min()), float(values.max())],
            "ends_at_base": [layers["name"].iloc[i] for i in np.flatnonzero(~tuned)],
        }
    if s.mapping == "bits":
        variance = weight_variances(source, list(layers["name"]), options)
        result = allocation.alpha_q(metric, variance, params, s.target, s.gamma, s.bit_choices)
        mean = float((params * result.bits).sum() / params.sum())
        counts = {int(b): int((result.bits == b).sum()) for b in sorted(set(s.bit_choices))}
        return result.bits, {
            "weighted_mean_bits": mean,
            "holds": mean <= s.target + SUM_TOLERANCE,
            "objective": result.objective,
            "layers_per_bits": counts,
        }
    units = [k if k is not None else ("own", i) for i, k in enumerate(keys)]
    unique = list(dict.fromkeys(units))
    per_unit = allocation.alpha_lora(
        np.array([metric[units.index(u)] for u in unique]), int(s.target), s.beta
    )
    values = np.array([per_unit[unique.index(u)] for u in units], dtype=int)
    return values, {
        "units": len(unique),
        "experts_sum": int(per_unit.sum()),
        "holds": int(per_unit.sum()) == int(s.target),
        "range": [int(per_unit.min()), int(per_unit.max())],
    }


def weight_variances(source: Source, names: list[str], options: AnalysisOptions) -> np.ndarray:
    """Var(W) of each named matrix (a split part ``name:q`` reads its whole tensor)."""
    with open_source(source, options.trust_pickle) as checkpoint:
        return np.array(
            [float(checkpoint.load(n.partition(":")[0]).to(torch.float64).var()) for n in names]
        )


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The allocation and the proof of its constraint, for people."""
    c, settings = summary["constraint"], summary["settings"]
    hyper = ", ".join(f"{k} {v}" for k, v in settings.items()) or "none"
    lines = [
        f"model: {summary['model']}",
        f"allocation: {summary['mapping']} ({summary['paper']}), target {summary['target_option']} "
        f"{summary['target']:g}, {'block-wise' if summary['block_wise'] else 'layer-wise'}, "
        f"settings: {hyper}",
        f"metric: {summary['metric']} (estimator {summary['estimator']}; the paper's: "
        f"{summary['estimator_published']})",
    ]
    mapping = summary["mapping"]
    if mapping == "sparsity":
        lines.append(
            f"constraint: parameter-weighted mean sparsity {c['weighted_mean_sparsity']:.12f} = "
            f"target {summary['target']:g} (|difference| {c['difference']:.1e}, "
            f"{'holds' if c['holds'] else 'DOES NOT HOLD'})"
        )
        lines.append(
            f"ratios from {c['range'][0]:.4f} to {c['range'][1]:.4f}; outside [0, 1) before "
            f"clipping: {c['outside_0_1']}; held at a bound by --clip: {c['clipped']}"
        )
    elif mapping == "bits":
        per = ", ".join(f"{b} bits: {n}" for b, n in c["layers_per_bits"].items())
        lines.append(
            f"constraint: parameter-weighted mean bits {c['weighted_mean_bits']:.6f} <= budget "
            f"{summary['target']:g} ({'holds' if c['holds'] else 'DOES NOT HOLD'}); layers with {per}"
        )
        lines.append(f"objective sum s Var(W) 2^(-2b): {c['objective']:.6g}")
    elif mapping == "lora-experts":
        lines.append(
            f"constraint: experts over {c['units']} blocks sum to {c['experts_sum']} = "
            f"total {summary['target']:g} ({'holds' if c['holds'] else 'DOES NOT HOLD'}); "
            f"from {c['range'][0]} to {c['range'][1]} per block"
        )
    else:
        ends = ", ".join(c["ends_at_base"]) or "none"
        lines.append(
            f"values from {c['range'][0]:.6g} to {c['range'][1]:.6g}; left at the base value: {ends}"
        )
    return lines


def allocate(
    source: Source,
    mapping: str,
    target: float,
    *,
    options: AnalysisOptions | None = None,
    **settings: Any,
) -> Allocation:
    """Per-layer ``mapping`` values for a checkpoint (path, state dict or module).

    ``mapping`` is one of ``sparsity``, ``lr``, ``weight-decay``, ``bits``,
    ``lora-experts``; ``target`` its target (mean sparsity, base lr, base weight
    decay, mean bits, total experts); ``settings`` the fields of
    :class:`~spectralyzer.allocate_settings.AllocationSettings` (published defaults).

    >>> spectralyzer.allocate("model.safetensors", "sparsity", 0.7).mapping()  # doctest: +SKIP
    """
    record = make_settings(mapping, **{TARGETS.get(mapping, "sparsity"): target}, **settings)
    return run_allocation(source, record, options or make_options())


__all__ = ["Allocation", "AllocationSettings", "allocate", "run_allocation"]
