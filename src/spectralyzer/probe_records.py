"""The probe's records: its options (validated on creation) and its results.

Each result offers the three views every spectralyzer result gives:
``document()`` (the JSON document; its keys are the dataclass fields here and
in :mod:`.hessian.batch_scaling`, a stable interface), ``tables()`` and
``summary_lines()``; the renderer turns them into text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .choices import BASIS_NAMES, DEVICES, HVP_NAMES, LOSS_NAMES, PRECISION_NAMES
from .errors import InputError, OptionError
from .hessian.adam_state import AdamStability
from .hessian.attention import NoDoubleBackward
from .hessian.batch_scaling import BatchScaling
from .hessian.operator import LossFn
from .hessian.trace import TraceEstimate
from .probe_lines import EVAL_MODE, Section, assumptions, sections

if TYPE_CHECKING:
    from .probe_batching import MemoryPlan


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets.reshape(outputs.shape).to(outputs.dtype))


#: Losses by name: mean over the batch (the Hessian is that of the mean loss).
LOSSES: dict[str, LossFn] = dict(zip(LOSS_NAMES, (nn.functional.cross_entropy, _mse), strict=True))
PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float64, torch.float32), strict=True))
#: Storage of the Lanczos basis by name ("full": the probe's precision; "disk": a temporary file).
BASIS_DTYPES = dict(zip(BASIS_NAMES, (None, torch.float32, torch.bfloat16, "disk"), strict=True))


@dataclass(frozen=True)
class ProbeOptions:
    """Everything that changes the numbers of a probe (checked on creation, see :func:`check`)."""

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
    hvp: str = "exact"  # or "finite-difference" (central differences of gradients)
    hvp_batch: int | None = None  # micro-batch of the products; default from the memory budget
    memory_budget: int | None = None  # bytes; refuse before starting when the formula exceeds it
    lanczos_basis: str = "full"  # storage of the Lanczos basis: full, float32, bfloat16 or disk

    def __post_init__(self) -> None:
        check(self)


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
_OPTIONAL_COUNTS = ("micro_batch", "reference_batch", "hvp_batch", "memory_budget")
SEEDS = range(-(2**63), 2**64)  # what torch.Generator.manual_seed accepts
#: Real-valued options: (name, test, what the test wants).
_REALS = (
    ("slq_width", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    ("near_zero", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("dataset_size", lambda v: v >= 1, "a number >= 1 (or inf)"),  # NaN fails too
    ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check(options: ProbeOptions) -> None:
    """Reject values that cannot work (an OptionError naming the field), before any work.

    What depends on the batch (its size against ``micro_batch`` and
    ``dataset_size``) is checked by :func:`check_batch` once the batch is known.
    """
    choices = (
        ("loss", LOSSES),
        ("precision", PRECISIONS),
        ("device", DEVICES),
        ("hvp", HVP_NAMES),
        ("lanczos_basis", BASIS_DTYPES),
    )
    for name, allowed in choices:
        if getattr(options, name) not in allowed:
            raise OptionError(
                name, f"must be one of {', '.join(allowed)}, not {getattr(options, name)!r}"
            )
    for name, least in _COUNTS.items():
        value = getattr(options, name)
        if not _is_int(value) or value < least:
            raise OptionError(name, f"must be an integer >= {least}, not {value!r}")
    if not _is_int(options.seed) or options.seed not in SEEDS:
        raise OptionError("seed", f"must be an integer in [-2**63, 2**64), not {options.seed!r}")
    for name in _OPTIONAL_COUNTS:
        value = getattr(options, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise OptionError(name, f"must be a positive integer, not {value!r}")
    if options.hvp != "exact" and options.ggn:
        raise OptionError("hvp", f"{options.hvp} gives Hessian products only; --ggn needs exact")
    if options.steps < options.top_k:
        raise OptionError("steps", f"({options.steps}) must be at least top_k ({options.top_k})")
    if not all(_is_int(b) and b >= 1 for b in options.batch_sizes):
        raise OptionError("batch_sizes", "must be positive integers")
    for name, valid, wanted in _REALS:
        value = getattr(options, name)
        if not (_is_real(value) and valid(value)):
            raise OptionError(name, f"must be {wanted}, not {value!r}")
    if options.lr is not None:
        if not (_is_real(options.lr) and math.isfinite(options.lr) and options.lr > 0):
            raise OptionError("lr", f"must be a finite number > 0, not {options.lr!r}")
        if not math.isfinite(options.dataset_size):
            raise OptionError("dataset_size", "must be given with lr (the epoch length N)")


def check_batch(options: ProbeOptions, n: int) -> None:
    """Reject settings that cannot work on a batch of ``n`` samples, naming the field."""
    if options.dataset_size < n:
        raise OptionError(
            "dataset_size", f"({options.dataset_size:g}) is smaller than the batch's {n} samples"
        )
    if options.batch_sizes and n // micro_batch(options, n) < 2:
        raise OptionError(
            "micro_batch",
            f"{micro_batch(options, n)} leaves fewer than two micro-batches of {n}",
        )


def micro_batch(options: ProbeOptions, n: int) -> int:
    """The micro-batch of the noise estimate: as set, else ``n // 16`` (at least 1)."""
    return options.micro_batch or max(1, n // 16)


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
    """Learning rates for the probed batch size from its Hessian (stability limits, momentum)."""

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
    (Kuehn & Rosenow 2025; :func:`.hessian.step_sizes.crossover_eigenvalue`)."""

    batch_size: int
    steps_per_epoch: float  # M = N / S
    lambda_cross: float  # 3 (1 - beta) S / (lr N)
    tau_sgd: float  # (M / 3) (1 + beta) / (1 - beta): correlation time below lambda_cross
    top_k_above: int  # how many of the Hessian's top-k eigenvalues lie above lambda_cross


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
    attention: str | None = None  # the note when attention ran on the math backend
    memory: MemoryPlan | None = None  # micro-batching of the products and the memory formula

    def document(self) -> dict[str, Any]:
        """Everything, as plain data (NaN and infinities left for the renderer to null)."""
        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "parameters": self.parameters,
            "loss_name": self.loss_name,
            "loss": self.loss,
            "gradient_norm": self.gradient_norm,
            "device": self.device,
            "options": asdict(self.options),
            "eval_mode": EVAL_MODE,
            "curvatures": {
                c.matrix: {**asdict(c), "lambda_1": c.lambda_1, "effective_rank": c.effective_rank}
                for c in self.curvatures
            },
            "guidance": asdict(self.guidance),
            "batch_scaling": asdict(self.scaling) if self.scaling else None,
            "layers": self.layers.to_dict(orient="records") if self.layers is not None else None,
            "adam": asdict(self.adam) if self.adam else None,
            "epoch_noise": [asdict(r) for r in self.epoch_noise] if self.epoch_noise else None,
            "assumptions": assumptions(self),
            "timings": self.timings,
            "attention": self.attention,
            "memory": asdict(self.memory) if self.memory else None,
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        """``curvature`` (one row per matrix, the main table), then ``batch_sizes``,
        ``epoch_noise`` and ``layers`` where the probe computed them."""
        out = {"curvature": curvature_frame(self.curvatures)}
        if self.scaling:
            out["batch_sizes"] = pd.DataFrame([asdict(r) for r in self.scaling.rows])
        if self.epoch_noise:
            frame = pd.DataFrame([asdict(r) for r in self.epoch_noise])
            out["epoch_noise"] = frame.rename(
                columns={"top_k_above": f"top_{self.options.top_k}_above"}
            )
        if self.layers is not None:
            out["layers"] = self.layers.copy()
        for frame in out.values():  # curvatures span decades: render.DIGITS significant digits
            frame.attrs["significant_digits"] = 4
        return out

    def sections(self) -> list[Section]:
        """The summary in sections, each with the table (by name) that belongs under it."""
        return sections(self)

    def summary_lines(self) -> list[str]:
        """Plain lines for people: what was probed, each curvature, step sizes, assumptions."""
        return [line for section in self.sections() for line in section.lines]


def curvature_frame(curvatures: list[Curvature]) -> pd.DataFrame:
    """One row per curvature matrix: its top eigenvalues and what else was estimated."""
    rows = []
    for c in curvatures:
        trace, density = c.trace, c.density
        rows.append(
            {
                "matrix": c.matrix,
                "lambda_1": c.lambda_1,
                "lambda_k": c.top_eigenvalues[-1],
                "gradient_curvature": c.gradient_curvature,
                "trace": trace.value if trace else math.nan,
                "trace_stderr": trace.stderr if trace else math.nan,
                "effective_rank": c.effective_rank,
                "negative_mass": density.negative_mass if density else math.nan,
                "near_zero_mass": density.near_zero_mass if density else math.nan,
            }
        )
    return pd.DataFrame(rows)


def first_line(err: BaseException) -> str:
    """The informative line of an error; TorchScript puts the cause on its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return f"{type(err).__name__}: {line[:160]}"


def model_boundary(run: Callable[..., ProbeResult]) -> Callable[..., ProbeResult]:
    """``run`` (called with ``model_label=``), with a missing double backward as an InputError.

    Curvature products differentiate twice; an operation of the model that
    cannot be is the model's limit, told in one line with what to do.
    """

    @functools.wraps(run)
    def bounded(*args: Any, **kwargs: Any) -> ProbeResult:
        try:
            return run(*args, **kwargs)
        except NoDoubleBackward as err:
            problem = (
                f"{err}: curvature products need second derivatives; use an implementation "
                f"of {err.operation} with a double backward"
            )
            raise InputError(kwargs.get("model_label", "<module>"), problem) from err

    return bounded
