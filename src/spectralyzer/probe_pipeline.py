"""The probe pipeline: runnable model + batch -> curvature records (beside :mod:`.pipeline`).

``run_probe`` computes, in this order (each operator's gradient graph is built,
used and dropped before the next one, since an operator owns the
``requires_grad`` flags of the model while it lives):

1. the Hessian of the loss on the whole batch: top-k eigenvalues (Lanczos with
   full re-orthogonalisation), optionally the trace (Hutch++) and the spectral
   density (stochastic Lanczos quadrature), and the curvature along the
   gradient ``g^T H g / ||g||^2``;
2. the same for the Generalised Gauss-Newton matrix (``ggn``);
3. the batch-size table (:mod:`.hessian.batch_scaling`);
4. per-layer blocks: each weight matrix's own Hessian block, beside its alpha
   from the weight analysis (:func:`.pipeline.analyze`, joined by parameter name);
5. with an Adam optimizer state, the top eigenvalue of the preconditioned
   Hessian and Adam's learning-rate limit (:mod:`.hessian.adam_state`), on the
   operator of step 1.

Everything random is drawn from one seeded CPU generator, so a run is
reproducible on any device.  The math lives in :mod:`.hessian`; the records
in :mod:`.probe_records`.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import interrupts
from .engine import resolve_device
from .errors import InputError
from .hessian import step_sizes as ss
from .hessian.adam_state import AdamState, adam_stability, adam_state, preconditioned_top
from .hessian.attention import NOTE
from .hessian.batch_scaling import ProbedBatch, ScalingPlan, batch_scaling
from .hessian.lanczos import top_eigenpairs, top_eigenvalues
from .hessian.operator import CurvatureOperator
from .hessian.slq import SpectralDensity, slq
from .hessian.trace import hutch_plus_plus
from .io.optimizer_state import SavedAdam, load_optimizer_state, read_optimizer_state
from .io.runnable import load_batch, load_runnable
from .pipeline import analyze
from .probe_batching import Operators, plan_memory
from .probe_records import (
    BASIS_DTYPES,
    LOSSES,
    PRECISIONS,
    Curvature,
    Density,
    EpochNoise,
    Guidance,
    ProbeOptions,
    ProbeResult,
    check_batch,
    effective_rank,
    micro_batch,
    model_boundary,
)
from .roles import role_of

MATRICES = ("hessian", "ggn")


class Interruptible:
    """A curvature operator (with its other attributes) whose every product first checks
    for Ctrl-C/SIGTERM: a probe stops at the next product (:mod:`.interrupts`)."""

    def __init__(self, op: CurvatureOperator) -> None:
        self._op = op

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        interrupts.check()
        return self._op.matvec(vector)


def load_adam_state(path: str | os.PathLike[str], model: nn.Module) -> AdamState:
    """Adam's preconditioner from an optimizer state file (read by :mod:`.io.optimizer_state`)."""
    return _adam(load_optimizer_state(path, [p.shape for p in model.parameters()]))


def read_adam_state(obj: Any, model: nn.Module, label: str | os.PathLike[str]) -> AdamState:
    """:func:`load_adam_state` on an already loaded ``optimizer.state_dict()``."""
    return _adam(read_optimizer_state(obj, [p.shape for p in model.parameters()], label))


def _adam(saved: SavedAdam) -> AdamState:
    return adam_state(saved.moments, saved.lrs, saved.beta1)


def epoch_noise(
    top_eigenvalues: list[float], options: ProbeOptions, sizes: tuple[int, ...]
) -> list[EpochNoise]:
    """One :class:`EpochNoise` per batch size, for ``options.lr`` and ``options.dataset_size``."""
    lr, beta, n = options.lr, options.momentum, options.dataset_size
    rows = []
    for size in sizes:
        cross = ss.crossover_eigenvalue(lr, beta, size, n)
        rows.append(
            EpochNoise(
                batch_size=size,
                steps_per_epoch=n / size,
                lambda_cross=cross,
                tau_sgd=ss.tau_sgd(beta, size, n),
                top_k_above=sum(lam > cross for lam in top_eigenvalues),
            )
        )
    return rows


def _prepare(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model and floating-point data in ``dtype`` on ``device``; integer data (labels, ids) as is."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    return model.to(device=device, dtype=dtype), cast(inputs), cast(targets)


def _density(density: SpectralDensity, lambda_1: float, options: ProbeOptions) -> Density:
    low, high = float(density.nodes.min()), float(density.nodes.max())
    span = max(high - low, abs(lambda_1), 1e-30)
    width = options.slq_width * span
    grid = np.linspace(low - 3 * width, high + 3 * width, 256)
    zero = options.near_zero * abs(lambda_1)
    return Density(
        steps=options.slq_steps,
        vectors=options.slq_vectors,
        mean=density.moment(1),
        second_moment=density.moment(2),
        negative_mass=density.mass_below(-zero),
        near_zero_mass=float(density.weights[np.abs(density.nodes) <= zero].sum()),
        min_node=low,
        max_node=high,
        width=width,
        grid=grid.tolist(),
        density=density.smoothed(grid, width).tolist(),
    )


def curvature(
    op: Any,
    matrix: str,
    options: ProbeOptions,
    generator: torch.Generator,
) -> tuple[Curvature, torch.Tensor]:
    """Top-k, gradient curvature, and (optionally) trace and density of one operator.

    Also returns the top Ritz vector (the batch-size probe needs it).
    """
    checked = Interruptible(op)
    basis = BASIS_DTYPES[options.lanczos_basis]
    values, vectors = top_eigenpairs(
        checked, options.top_k, options.steps, generator, basis, vectors=1
    )
    top = values.tolist()
    g = op.gradient
    gg = float(g @ g)
    gradient_curvature = float(g @ checked.matvec(g)) / gg if gg > 0 else math.nan
    trace = density = None
    if options.trace:
        trace = hutch_plus_plus(checked, options.trace_matvecs, generator)
    if options.slq:
        raw = slq(checked, options.slq_steps, options.slq_vectors, generator, basis)
        density = _density(raw, top[0], options)
    steps = min(options.steps, op.dim)
    return Curvature(matrix, top, steps, gradient_curvature, trace, density), vectors[0]


def guidance(hessian: Curvature, batch_size: int, momentum: float) -> Guidance:
    """Stability limits and momentum rules, with ``[lambda_k, lambda_1]`` as the curvature range."""
    l1 = hessian.lambda_1
    low = hessian.top_eigenvalues[-1]
    source = f"lambda_{len(hessian.top_eigenvalues)} (smallest of the top-k Ritz values)"
    positive = l1 > 0
    pair = positive and 0 < low < l1
    return Guidance(
        batch_size=batch_size,
        lambda_1=l1,
        lambda_low=low,
        lambda_low_source=source,
        momentum=momentum,
        gd_limit=ss.gd_limit(l1) if positive else math.inf,
        heavy_ball_limit=ss.heavy_ball_limit(l1, momentum) if positive else math.inf,
        nesterov_limit=ss.nesterov_limit(l1, momentum) if positive else math.inf,
        gradient_step=1.0 / hessian.gradient_curvature
        if hessian.gradient_curvature > 0
        else math.nan,
        heavy_ball=ss.heavy_ball_optimum(l1, low) if pair else None,
        nesterov=ss.nesterov_optimum(l1, low) if pair else None,
    )


def layer_table(
    model: nn.Module, operators: Operators, options: ProbeOptions, generator: torch.Generator
) -> pd.DataFrame:
    """Per weight matrix: its Hessian block's top eigenvalue and trace, beside its alpha and role.

    The weight analysis is spectralyzer's own (``analyze`` of the model's
    state dict, default options); the rows are joined by parameter name and
    grouped by role (:func:`.roles.role_of`: attention q/k/v/o, MLP, ... as
    ``analyze`` names them), roles in the order the model declares its parameters, each
    by depth.
    """
    state = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()}
    details, _ = analyze(state, min_evals=1)
    named = dict(model.named_parameters())
    basis = BASIS_DTYPES[options.lanczos_basis]
    rows = []
    for name in details["name"]:
        if name not in named:  # a buffer, not a parameter
            continue
        op = Interruptible(operators.build("hessian", params=[name]))
        top = float(top_eigenvalues(op, 1, options.layer_steps, generator, basis)[0])
        trace = hutch_plus_plus(op, options.layer_trace_matvecs, generator)
        rows.append(
            {
                "name": name,
                "block_size": op.dim,
                "hessian_lambda_1": top,
                "hessian_trace": trace.value,
                "hessian_trace_stderr": trace.stderr,
                "hessian_effective_rank": effective_rank(trace.value, top),
            }
        )
        del op
    columns = ["name", "layer_type", "shape", "alpha", "alpha_weighted", "log_spectral_norm"]
    weights = details[columns + ["phase"]].copy()
    roles = [role_of(n, t) for n, t in zip(weights["name"], weights["layer_type"], strict=True)]
    weights.insert(1, "role", roles)
    weights["order"] = weights["name"].map({name: i for i, name in enumerate(named)})
    table = weights.merge(pd.DataFrame(rows), on="name", how="inner")
    # roles in the order the model declares its parameters (its forward pass, usually)
    first = table.groupby("role")["order"].transform("min")
    table = table.assign(first=first).sort_values(["first", "order"], kind="stable")
    return table.drop(columns=["first", "order"]).reset_index(drop=True)


@model_boundary  # an operation without double backward: one line naming it
def run_probe(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    options: ProbeOptions,
    *,
    model_label: str = "<module>",
    data_label: str = "<batch>",
    adam: AdamState | None = None,
) -> ProbeResult:
    """Probe ``model`` on the batch ``(inputs, targets)`` (and Adam's state, when given).

    The model is modified in place: put in eval mode (dropout off, BatchNorm on
    its running statistics), moved to the device and precision, and its
    ``requires_grad`` flags set per block.
    """
    if len(inputs) < 2:
        raise InputError(data_label, f"the batch needs at least two samples, not {len(inputs)}")
    check_batch(options, len(inputs))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = resolve_device(options.device)
    model, inputs, targets = _prepare(model, inputs, targets, device, PRECISIONS[options.precision])
    loss_fn = LOSSES[options.loss]
    generator = torch.Generator().manual_seed(options.seed)
    n = len(inputs)
    labels = (model_label, data_label)
    memory = plan_memory(
        model, loss_fn, inputs, targets, options, adam=adam is not None, labels=labels
    )
    operators = Operators(model, loss_fn, inputs, targets, options, memory.hvp_batch, labels)

    op = operators.build("hessian")
    loss, gradient_norm, parameters = op.loss, float(op.gradient.norm()), op.dim
    attention = NOTE if op.math_attention else None
    if not math.isfinite(loss):
        raise InputError(data_label, f"the loss on this batch is not finite ({loss})")
    hessian, top_vector = curvature(op, "hessian", options, generator)
    curvatures = [hessian]
    adam_record = None
    if adam is not None:
        top = preconditioned_top(
            Interruptible(op),
            adam,
            op.names,
            op.sizes,
            options.steps,
            generator,
            BASIS_DTYPES[options.lanczos_basis],
        )
        adam_record = adam_stability(*top, adam)
    del op
    timings["hessian"] = time.perf_counter() - start
    if options.ggn:
        tic = time.perf_counter()
        curvatures.append(curvature(operators.build("ggn"), "ggn", options, generator)[0])
        timings["ggn"] = time.perf_counter() - tic
    scaling = None
    if options.batch_sizes:
        tic = time.perf_counter()
        plan = ScalingPlan(
            batch_sizes=options.batch_sizes,
            micro_batch=micro_batch(options, n),
            vectors=options.variance_vectors,
            repeats=options.repeats,
            steps=options.steps,
            reference_batch=options.reference_batch,
            dataset_size=options.dataset_size,
            basis_dtype=BASIS_DTYPES[options.lanczos_basis],
        )
        scaling = batch_scaling(
            lambda idx: Interruptible(operators.build("hessian", idx.to(inputs.device))),
            ProbedBatch(n, hessian.lambda_1, top_vector),
            plan,
            generator,
        )
        timings["batch_sizes"] = time.perf_counter() - tic
    layers = None
    if options.per_layer:
        tic = time.perf_counter()
        layers = layer_table(model, operators, options, generator)
        timings["per_layer"] = time.perf_counter() - tic
    timings["total"] = time.perf_counter() - start
    return ProbeResult(
        model=model_label,
        data=data_label,
        samples=n,
        parameters=parameters,
        loss_name=options.loss,
        loss=loss,
        gradient_norm=gradient_norm,
        options=options,
        device=str(device),
        curvatures=curvatures,
        guidance=guidance(curvatures[0], n, options.momentum),
        scaling=scaling,
        layers=layers,
        adam=adam_record,
        epoch_noise=epoch_noise(hessian.top_eigenvalues, options, options.batch_sizes or (n,))
        if options.lr
        else None,
        timings=timings,
        attention=attention,
        memory=memory,
    )


def probe(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer | dict | None = None,
    **options: Any,
) -> ProbeResult:
    """Library entry point: probe a copy of ``model`` (the caller's module is left as it was).

    ``options`` are the fields of :class:`ProbeOptions` (checked before any
    work). ``optimizer``: an Adam/AdamW optimizer over ``model.parameters()``
    (or its ``state_dict()``) adds the preconditioned curvature and Adam's limit.
    """
    settings = ProbeOptions(**options)
    adam = None
    if optimizer is not None:
        state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
        adam = read_adam_state(state, model, "<optimizer>")
    return run_probe(copy.deepcopy(model), inputs, targets, settings, adam=adam)


def probe_files(
    model: str,
    data: str | os.PathLike[str],
    options: ProbeOptions,
    *,
    weights: str | os.PathLike[str] | None = None,
    optimizer_state: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
) -> ProbeResult:
    """Load the model (:mod:`.io.runnable`), the batch and Adam's state from files; probe."""
    module = load_runnable(model, weights, trust_pickle=trust_code)
    inputs, targets = load_batch(data)
    adam = load_adam_state(optimizer_state, module) if optimizer_state else None
    return run_probe(
        module, inputs, targets, options, model_label=str(model), data_label=str(data), adam=adam
    )
