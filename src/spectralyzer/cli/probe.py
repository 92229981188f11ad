"""``spectralyzer probe``: curvature of a model that runs, on a batch of data.

Parses the options, calls :func:`spectralyzer.probe_pipeline.probe_files`, renders.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import click

from ..choices import BASIS_NAMES, HVP_NAMES, LOSS_NAMES, PRECISION_NAMES
from ..demo import probe_demo
from .errors import handle_errors
from .lazy import heavy_imports
from .options import device_option, output_options, seed_option, trust_option
from .output import existing, show


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple:
    if not value:
        return ()
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not sizes or sizes[0] < 1:
        raise click.BadParameter("batch sizes must be positive integers")
    return sizes


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``2G``, ``512M``, ``1.5GiB``, ``1000000``: bytes (binary units)."""
    if value is None:
        return None
    found = _SIZE.fullmatch(value)
    if not found:
        raise click.BadParameter(f"{value!r} is not a size such as 2G, 512M or 1500000")
    size = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if size < 1:
        raise click.BadParameter(f"{value!r} is not a positive size")
    return size


MEMORY_HELP = """\b
Memory, for P parameters of b bytes (8 float64, 4 float32), a Lanczos basis of
c bytes per number in memory (b; 4, 2 with --lanczos-basis float32, bfloat16;
0 with disk, which writes steps P b to $TMPDIR instead):
  vectors        7 P b  (+ 3 P b with --hvp finite-difference)
  + the largest of:
    Lanczos      steps P c
    --slq        slq_steps P c
    --trace      3 (trace_matvecs // 3) P b
    Adam state   steps P c + 2 P b
    --batch-sizes max(steps P c, 16 (variance_vectors + 1) P)
    --per-layer  largest block P_l (layer_steps c + 3 (layer_trace_matvecs // 3) b)
  + the graph of one micro-batch of --hvp-batch samples (measured on 1 and 2).
"""


@click.command(name="probe", epilog=MEMORY_HELP)
@click.argument("model", required=False)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Batch of inputs and targets: .pt (dict inputs/targets or a pair) or .npz.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Checkpoint to load into MODEL (with a package.module:factory MODEL).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Probe the built-in demo (a digits CNN, data/digits/, with its Adam state) with every probe on.",
)
@click.option("--loss", type=click.Choice(LOSS_NAMES), default="cross_entropy", show_default=True)
@click.option("--top-k", default=5, show_default=True, help="Top eigenvalues to report.")
@click.option(
    "--steps", default=40, show_default=True, help="Lanczos steps for the top eigenvalues."
)
@click.option(
    "--trace", is_flag=True, help="Trace by Hutch++ (and the effective rank tr/lambda_1)."
)
@click.option("--trace-matvecs", default=90, show_default=True, help="Hutch++ budget of products.")
@click.option("--slq", is_flag=True, help="Spectral density by stochastic Lanczos quadrature.")
@click.option("--slq-steps", default=60, show_default=True)
@click.option("--slq-vectors", default=4, show_default=True)
@click.option(
    "--slq-width",
    default=0.01,
    show_default=True,
    help="Gaussian smoothing of the density, as a fraction of the spectrum's range.",
)
@click.option("--ggn", is_flag=True, help="Also the Generalised Gauss-Newton matrix.")
@click.option(
    "--batch-sizes",
    callback=_batch_sizes,
    metavar="LIST",
    help="Batch-size table, e.g. 32,128,512: top eigenvalue and learning rates per batch size.",
)
@click.option(
    "--micro-batch", type=int, help="Micro-batch size of the Hessian variance (default n/16)."
)
@click.option("--repeats", default=3, show_default=True, help="Random sub-batches per batch size.")
@click.option(
    "--reference-batch",
    type=int,
    help="Batch size the factors are relative to (default: smallest).",
)
@click.option(
    "--dataset-size", type=float, default=math.inf, help="Training-set size N (default: infinite)."
)
@click.option(
    "--momentum",
    default=0.9,
    show_default=True,
    help="beta of the momentum stability limits (and of training, with --lr).",
)
@click.option(
    "--lr",
    type=float,
    help="Training learning rate: with --dataset-size, where epoch-based SGD's "
    "anti-correlated noise matters (lambda_cross per batch size).",
)
@click.option(
    "--per-layer", is_flag=True, help="Each weight matrix's Hessian block beside its alpha."
)
@click.option(
    "--optimizer-state",
    type=click.Path(path_type=Path),
    help="Adam/AdamW state (optimizer.state_dict(), or a checkpoint holding it under 'optimizer'): "
    "preconditioned curvature and Adam's learning-rate limit.",
)
@seed_option
@device_option
@click.option(
    "--precision", type=click.Choice(PRECISION_NAMES), default="float64", show_default=True
)
@click.option(
    "--hvp",
    type=click.Choice(HVP_NAMES),
    default="exact",
    show_default=True,
    help="Hessian-vector products by double backward (exact), or by central differences of "
    "gradients (first derivatives only: for models without a double backward).",
)
@click.option(
    "--hvp-batch",
    type=int,
    metavar="N",
    help="Accumulate each product over micro-batches of N samples: peak memory is one "
    "micro-batch's graph (default: the largest N whose graph fits --memory-budget, else 1 GiB).",
)
@click.option(
    "--memory-budget",
    callback=_size,
    metavar="SIZE",
    help="e.g. 2G: choose --hvp-batch within it, and refuse before starting when the memory "
    "formula below exceeds it.",
)
@click.option(
    "--lanczos-basis",
    type=click.Choice(BASIS_NAMES),
    default="full",
    show_default=True,
    help="Store the Lanczos basis (steps x P numbers, the largest term) in the probe's "
    "precision, in float32/bfloat16 (Ritz values within about that type's eps x lambda_1), or "
    "in a temporary file (disk: same numbers, read back block by block).",
)
@trust_option
@output_options("the report")
@handle_errors
def probe_command(
    model: str | None,
    data: Path | None,
    weights: Path | None,
    demo: bool,
    trust_pickle: bool,
    fmt: str,
    output: str | None,
    quiet: bool,
    optimizer_state: Path | None,
    **opts: Any,
) -> None:
    """Curvature of a model that runs, on a batch: Hessian/GGN spectra, batch-size and step-size guidance.

    MODEL is a TorchScript file or a full pickled module (both run their own
    code: only with --trust-code), or package.module:factory with --weights.
    Unlike analyze, this needs data.
    """
    if demo == (model is not None):
        raise click.UsageError("give either MODEL (with --data) or --demo")
    if demo:
        model, weights, data, optimizer_state = probe_demo()
        opts.update(trace=True, slq=True, ggn=True, per_layer=True)
        opts["batch_sizes"] = opts["batch_sizes"] or (16, 32, 64, 128, 256, 512)
    elif data is None:
        raise click.UsageError("probe needs --data (a batch of inputs and targets)")
    with heavy_imports():
        from ..probe_pipeline import probe_files  # on use: --help stays light
        from ..probe_records import ProbeOptions

    options = ProbeOptions(**opts)  # validated before any file is read or code run
    result = probe_files(
        model,
        data,
        options,
        weights=weights,
        optimizer_state=optimizer_state,
        trust_code=trust_pickle,
    )
    show(result, fmt, output, existing([model, weights, data, optimizer_state]))
