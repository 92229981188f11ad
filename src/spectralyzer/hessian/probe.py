"""The probe pipeline: runnable model + batch -> curvature records (THEORY.md section 4).

``run_probe`` computes, in this order (each operator's gradient graph is built,
used and dropped before the next one, since an operator owns the
``requires_grad`` flags of the model while it lives):

1. the Hessian of the loss on the whole batch: top-k eigenvalues (Lanczos with
   full re-orthogonalisation), optionally the trace (Hutch++) and the spectral
   density (stochastic Lanczos quadrature), and the curvature along the
   gradient ``g^T H g / ||g||^2``;
2. the same for the Generalised Gauss-Newton matrix (``ggn``);
3. the batch-size table (:mod:`.batch_scaling`);
4. per-layer blocks: each weight matrix's own Hessian block, beside its alpha
   from the weight analysis (joined by parameter name);
5. with an Adam optimizer state, the top eigenvalue of the preconditioned
   Hessian and Adam's learning-rate limit (:mod:`.adam_state`), on the
   operator of step 1.

Everything random is drawn from one seeded CPU generator, so a run is
reproducible on any device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..engine import DEVICES, resolve_device
from ..errors import InputError, OptionError
from . import step_sizes as ss
from .adam_state import AdamStability, AdamState, adam_stability, read_adam_state
from .batch_scaling import BatchScaling, batch_scaling
from .ggn import GGNOperator
from .lanczos import top_eigenpairs, top_eigenvalues
from .operator import HessianOperator, LossFn
from .slq import SpectralDensity, slq
from .trace import TraceEstimate, hutch_plus_plus


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets.reshape(outputs.shape).to(outputs.dtype))


#: Losses by name: mean over the batch (the Hessian is that of the mean loss).
LOSSES: dict[str, LossFn] = {"cross_entropy": nn.functional.cross_entropy, "mse": _mse}
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
MATRICES = ("hessian", "ggn")
#: What a model raises when the batch does not fit it (shapes, dtypes, label range).
BATCH_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


@dataclass(frozen=True)
class ProbeOptions:
    """Everything that changes the numbers of a probe."""

    loss: str = "cross_entropy"
    top_k: int = 5
    steps: int = 40  # Lanczos steps for the top eigenvalues
    trace: bool = False
    trace_matvecs: int = 90  # Hutch++ budget
    slq: bool = False
    slq_steps: int = 60
    slq_vectors: int = 4
    slq_width: float = 0.01  # Gaussian smoothing, as a fraction of the spectrum's range
    near_zero: float = 1e-3  # |lambda| below this fraction of lambda_1 counts as near zero
    ggn: bool = False
    batch_sizes: tuple[int, ...] = ()
    micro_batch: int | None = None  # default: n // 16 (at least 1)
    variance_vectors: int = 4
    repeats: int = 3  # random sub-batches measured per batch size
    reference_batch: int | None = None  # default: the smallest of batch_sizes
    dataset_size: float = math.inf
    momentum: float = 0.9  # beta of the momentum stability limits (and of training)
    lr: float | None = None  # the training learning rate, for the epoch-noise crossover
    per_layer: bool = False
    layer_steps: int = 20
    layer_trace_matvecs: int = 30
    seed: int = 0
    device: str = "auto"
    precision: str = "float64"

    def __post_init__(self) -> None:
        validate_options(self)


#: Options that count something, and their least valid value.
_COUNTS = {
    "top_k": 1,
    "steps": 1,
    "trace_matvecs": 1,
    "slq_steps": 1,
    "slq_vectors": 1,
    "variance_vectors": 1,
    "repeats": 1,
    "layer_steps": 1,
    "layer_trace_matvecs": 1,
}
_OPTIONAL_COUNTS = ("micro_batch", "reference_batch")
SEEDS = range(-(2**63), 2**64)  # what torch.Generator.manual_seed accepts
#: Real-valued options: (name, test, what the test wants).
_REALS = (
    ("slq_width", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    ("near_zero", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("dataset_size", lambda v: v >= 1, "a number >= 1 (or inf)"),  # NaN fails too
    ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
)


def _flag(name: str) -> str:
    """The command-line spelling of an option: ``slq_steps`` -> ``--slq-steps``."""
    return "--" + name.replace("_", "-")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def validate_options(options: ProbeOptions) -> None:
    """Reject values that cannot work (an OptionError naming the option), before any work.

    What depends on the batch (its size against ``--micro-batch`` and
    ``--dataset-size``) is checked by :func:`_check` once the batch is known.
    """
    choices = (("loss", LOSSES), ("precision", PRECISIONS), ("device", DEVICES))
    for name, allowed in choices:
        if getattr(options, name) not in allowed:
            raise OptionError(
                _flag(name),
                f"must be one of {', '.join(allowed)}, not {getattr(options, name)!r}",
            )
    for name, least in _COUNTS.items():
        value = getattr(options, name)
        if not _is_int(value) or value < least:
            raise OptionError(_flag(name), f"must be an integer >= {least}, not {value!r}")
    if not _is_int(options.seed) or options.seed not in SEEDS:
        raise OptionError("--seed", f"must be an integer in [-2**63, 2**64), not {options.seed!r}")
    for name in _OPTIONAL_COUNTS:
        value = getattr(options, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise OptionError(_flag(name), f"must be a positive integer, not {value!r}")
    if options.steps < options.top_k:
        raise OptionError(
            "--steps", f"({options.steps}) must be at least --top-k ({options.top_k})"
        )
    if not all(_is_int(b) and b >= 1 for b in options.batch_sizes):
        raise OptionError("--batch-sizes", "must be positive integers")
    for name, valid, wanted in _REALS:
        value = getattr(options, name)
        if not (_is_real(value) and valid(value)):
            raise OptionError(_flag(name), f"must be {wanted}, not {value!r}")
    if options.lr is not None:
        if not (_is_real(options.lr) and math.isfinite(options.lr) and options.lr > 0):
            raise OptionError("--lr", f"must be a finite number > 0, not {options.lr!r}")
        if not math.isfinite(options.dataset_size):
            raise OptionError("--lr", "needs --dataset-size (the epoch length N)")


@dataclass(frozen=True)
class Density:
    """SLQ summary: moments, negative and near-zero mass, and the smoothed density on a grid."""

    steps: int
    vectors: int
    mean: float  # estimate of tr(H)/P
    second_moment: float  # estimate of tr(H^2)/P
    negative_mass: float  # fraction of eigenvalues below -near_zero * lambda_1
    near_zero_mass: float  # fraction with |lambda| <= near_zero * lambda_1
    min_node: float
    max_node: float
    width: float
    grid: list[float]
    density: list[float]


def effective_rank(trace: float, lambda_1: float) -> float:
    """``tr(M) / lambda_1``; undefined (NaN) unless lambda_1 > 0."""
    return trace / lambda_1 if lambda_1 > 0 else math.nan


@dataclass(frozen=True)
class Curvature:
    """One curvature matrix (Hessian or GGN) of the whole batch."""

    matrix: str
    top_eigenvalues: list[float]  # descending
    steps: int
    gradient_curvature: float  # g^T M g / ||g||^2
    trace: TraceEstimate | None = None
    density: Density | None = None

    @property
    def lambda_1(self) -> float:
        return self.top_eigenvalues[0]

    @property
    def effective_rank(self) -> float:
        """``tr(M) / lambda_1``."""
        return effective_rank(self.trace.value, self.lambda_1) if self.trace else math.nan


@dataclass(frozen=True)
class Guidance:
    """Learning rates for the probed batch size from its Hessian (THEORY.md section 4)."""

    batch_size: int
    lambda_1: float
    lambda_low: float
    lambda_low_source: str
    momentum: float
    gd_limit: float
    heavy_ball_limit: float
    nesterov_limit: float
    gradient_step: float  # ||g||^2 / g^T H g: the step that minimises the quadratic model along g
    heavy_ball: tuple[float, float] | None  # (lr, momentum)
    nesterov: tuple[float, float] | None


@dataclass(frozen=True)
class EpochNoise:
    """Epoch-based SGD at one batch size: where its anti-correlated noise matters
    (Kuehn & Rosenow 2025; :func:`.step_sizes.crossover_eigenvalue`)."""

    batch_size: int
    steps_per_epoch: float  # M = N / S
    lambda_cross: float  # 3 (1 - beta) S / (lr N)
    tau_sgd: float  # (M / 3) (1 + beta) / (1 - beta): correlation time below lambda_cross
    top_k_above: int  # how many of the Hessian's top-k eigenvalues lie above lambda_cross


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


@dataclass
class ProbeResult:
    model: str
    data: str
    samples: int
    parameters: int
    loss_name: str
    loss: float
    gradient_norm: float
    options: ProbeOptions
    device: str
    curvatures: list[Curvature]
    guidance: Guidance
    scaling: BatchScaling | None = None
    layers: pd.DataFrame | None = None
    adam: AdamStability | None = None
    epoch_noise: list[EpochNoise] | None = None
    timings: dict[str, float] = field(default_factory=dict)


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
    op: HessianOperator | GGNOperator,
    matrix: str,
    options: ProbeOptions,
    generator: torch.Generator,
) -> tuple[Curvature, torch.Tensor]:
    """Top-k, gradient curvature, and (optionally) trace and density of one operator.

    Also returns the top Ritz vector (the batch-size probe needs it).
    """
    values, vectors = top_eigenpairs(
        op.matvec, op.dim, options.top_k, options.steps, generator, op.dtype, op.device
    )
    top = values.tolist()
    g = op.gradient
    gg = float(g @ g)
    gradient_curvature = float(g @ op.matvec(g)) / gg if gg > 0 else math.nan
    trace = density = None
    if options.trace:
        trace = hutch_plus_plus(
            op.matvec, op.dim, options.trace_matvecs, generator, op.dtype, op.device
        )
    if options.slq:
        raw = slq(
            op.matvec,
            op.dim,
            options.slq_steps,
            options.slq_vectors,
            generator,
            dtype=op.dtype,
            device=op.device,
        )
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
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    options: ProbeOptions,
    generator: torch.Generator,
) -> pd.DataFrame:
    """Per weight matrix: its Hessian block's top eigenvalue and trace, beside its alpha.

    The weight analysis is spectralyzer's own (``analyze`` of the model's
    state dict, default options); the rows are joined by parameter name.
    """
    from ..pipeline import analyze

    state = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()}
    details, _ = analyze(state, min_evals=1)
    named = dict(model.named_parameters())
    rows = []
    for name in details["name"]:
        if name not in named:  # a buffer, not a parameter
            continue
        op = HessianOperator(model, loss_fn, inputs, targets, params=[name])
        top = float(
            top_eigenvalues(
                op.matvec, op.dim, 1, options.layer_steps, generator, op.dtype, op.device
            )[0]
        )
        trace = hutch_plus_plus(
            op.matvec, op.dim, options.layer_trace_matvecs, generator, op.dtype, op.device
        )
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
    weights = details[columns + ["phase"]]
    return weights.merge(pd.DataFrame(rows), on="name", how="inner")


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
    _check(options, len(inputs))
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    device = resolve_device(options.device)
    model, inputs, targets = _prepare(model, inputs, targets, device, PRECISIONS[options.precision])
    loss_fn = LOSSES[options.loss]
    generator = torch.Generator().manual_seed(options.seed)
    n = len(inputs)

    def operator(kind: type, idx: torch.Tensor | None = None):
        x, y = (inputs, targets) if idx is None else (inputs[idx], targets[idx])
        try:  # runs the user's forward: its failures are the model's, not ours
            return kind(model, loss_fn, x, y)
        except BATCH_ERRORS as err:
            raise InputError(
                data_label,
                f"the model cannot compute the {options.loss} loss on this batch "
                f"({_first_line(err)})",
            ) from err
        except SystemExit as err:
            raise InputError(model_label, f"the model exited (SystemExit {err.code})") from err
        except Exception as err:  # AssertionError, KeyError, ...: the boundary to user code
            raise InputError(
                model_label, f"the model raised {_first_line(err)} on {data_label}"
            ) from err

    op = operator(HessianOperator)
    loss, gradient_norm, parameters = op.loss, float(op.gradient.norm()), op.dim
    if not math.isfinite(loss):
        raise InputError(data_label, f"the loss on this batch is not finite ({loss})")
    hessian, top_vector = curvature(op, "hessian", options, generator)
    curvatures = [hessian]
    adam_record = None
    if adam is not None:
        adam_record = adam_stability(*preconditioned_top(op, adam, options, generator), adam)
    del op
    timings["hessian"] = time.perf_counter() - clock
    if options.ggn:
        curvatures.append(curvature(operator(GGNOperator), "ggn", options, generator)[0])
        timings["ggn"] = time.perf_counter() - clock - sum(timings.values())
    scaling = None
    if options.batch_sizes:
        scaling = batch_scaling(
            lambda idx: operator(HessianOperator, idx.to(inputs.device)),
            n,
            hessian.lambda_1,
            top_vector,
            options.batch_sizes,
            micro_batch=options.micro_batch or max(1, n // 16),
            vectors=options.variance_vectors,
            repeats=options.repeats,
            steps=options.steps,
            generator=generator,
            reference_batch=options.reference_batch,
            dataset_size=options.dataset_size,
        )
        timings["batch_sizes"] = time.perf_counter() - clock - sum(timings.values())
    layers = None
    if options.per_layer:
        layers = layer_table(model, loss_fn, inputs, targets, options, generator)
        timings["per_layer"] = time.perf_counter() - clock - sum(timings.values())
    timings["total"] = time.perf_counter() - clock
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
    )


def preconditioned_top(
    op: HessianOperator, adam: AdamState, options: ProbeOptions, generator: torch.Generator
) -> tuple[float, str, float]:
    """``lambda_1(D H D)``, ``D = diag(sqrt(lr / P))``, by Lanczos on ``v -> D H (D v)``; and
    the parameter holding the largest share of its eigenvector (name, share of ``|u|^2``)."""
    if adam.scaling.numel() != op.dim:
        raise ValueError(f"the Adam state covers {adam.scaling.numel()} of {op.dim} parameters")
    d = adam.scaling.to(device=op.device, dtype=op.dtype).sqrt()
    values, vectors = top_eigenpairs(
        lambda v: d * op.matvec(d * v), op.dim, 1, options.steps, generator, op.dtype, op.device
    )
    shares = [float(part.square().sum()) for part in vectors[0].split(op.sizes)]
    top = int(np.argmax(shares))
    return float(values[0]), op.names[top], shares[top] / sum(shares)


def _first_line(err: BaseException) -> str:
    """The informative line of an error; TorchScript puts the cause on its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return f"{type(err).__name__}: {line[:160]}"


def _check(options: ProbeOptions, n: int) -> None:
    """Reject settings that cannot work on a batch of ``n`` samples, with the option's name."""
    if options.dataset_size < n:
        raise OptionError(
            "--dataset-size",
            f"({options.dataset_size:g}) is smaller than the batch's {n} samples",
        )
    if options.batch_sizes:
        micro = options.micro_batch or max(1, n // 16)
        if n // micro < 2:
            raise OptionError(
                "--micro-batch", f"{micro} leaves fewer than two micro-batches of {n}"
            )


def probe(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer | dict | None = None,
    **options: Any,
) -> ProbeResult:
    """Library entry point: probe a copy of ``model`` (the caller's module is left as it was).

    ``optimizer``: an Adam/AdamW optimizer over ``model.parameters()`` (or its
    ``state_dict()``) adds the preconditioned curvature and Adam's limit.
    """
    import copy

    adam = None
    if optimizer is not None:
        state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
        adam = read_adam_state(state, model, "<optimizer>")
    return run_probe(copy.deepcopy(model), inputs, targets, ProbeOptions(**options), adam=adam)
