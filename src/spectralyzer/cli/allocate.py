"""``spectralyzer allocate``: per-layer sparsity, lr, weight decay, bits or LoRA experts from alphas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..choices import ALLOCATIONS, FORMATS
from ..demo import demo_model_path
from .errors import handle_errors
from .lazy import heavy_imports
from .options import analysis_options, build_options, output_options
from .output import emit, show
from .progress import progress

MAPPING_FORMAT = "mapping"  # {"layer name": value}, for a pruning or training script
#: the options that make the AllocationSettings (the rest are the analysis options)
SETTINGS = (
    *("sparsity", "lr", "weight_decay", "mean_bits", "experts", "block_wise", "eps", "clip_max"),
    *("min_ratio", "max_ratio", "keep_ends", "gamma", "bit_choices", "beta"),
)


@click.command(name="allocate")
@click.argument("model", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--demo", is_flag=True, help="Allocate over the demo model (all-MiniLM-L6-v2).")
@click.option(
    "--for",
    "mapping",
    type=click.Choice(ALLOCATIONS),
    required=True,
    help="What to set per layer: pruning sparsity (AlphaPruning), learning rate "
    "(TempBalance), weight decay (AlphaDecay), quantisation bits (AlphaQ) or LoRA "
    "experts per block (AlphaLoRA).",
)
@click.option("--sparsity", type=float, help="--for sparsity: parameter-weighted mean sparsity.")
@click.option("--lr", type=float, help="--for lr: the base learning rate eta.")
@click.option("--weight-decay", type=float, help="--for weight-decay: the base weight decay.")
@click.option("--mean-bits", type=float, help="--for bits: budget of parameter-weighted mean bits.")
@click.option("--experts", type=int, help="--for lora-experts: total number of experts T.")
@click.option(
    "--block-wise/--layer-wise",
    "block_wise",
    default=None,
    help="Map each layer's alpha, or its transformer block's mean alpha "
    "[default: block-wise for sparsity and lora-experts, else layer-wise].",
)
@click.option("--eps", type=float, help="sparsity: ratios span 1 -/+ eps before scaling [0.3].")
@click.option(
    "--clip",
    "clip_max",
    type=float,
    is_flag=False,
    flag_value=0.99,
    metavar="[MAX]",
    help="sparsity: hold ratios in [0, MAX] (0.99 when MAX is left out) and rescale the rest "
    "so the mean stays the target (default: no clipping, as published).",
)
@click.option(
    "--min-ratio",
    type=float,
    help="lr/weight-decay: factor at the lowest alpha [lr 0.5, weight-decay 0.666].",
)
@click.option(
    "--max-ratio",
    type=float,
    help="lr/weight-decay: factor at the highest alpha [lr 1.5, weight-decay 3].",
)
@click.option(
    "--keep-ends/--tune-ends",
    "keep_ends",
    default=None,
    help="lr/weight-decay: leave the first and last layers at the base value [keep].",
)
@click.option("--gamma", type=float, help="bits: sensitivity exponent gamma [10].")
@click.option(
    "--bit-choices",
    metavar="LIST",
    callback=lambda ctx, param, value: _ints(value),
    help="bits: comma-separated bit widths to choose from [2,3,4].",
)
@click.option("--beta", type=float, help="lora-experts: exponent beta [2.5].")
@click.option(
    "--mapping-out",
    metavar="FILE",
    help='Also write {"layer name": value} as JSON here (for pruning or training scripts).',
)
@output_options("the allocation", (*FORMATS, MAPPING_FORMAT))
@analysis_options
@handle_errors
def allocate_command(
    model: Path | None,
    demo: bool,
    mapping: str,
    mapping_out: str | None,
    fmt: str,
    output: str | None,
    quiet: bool,
    **values: Any,
) -> None:
    """Per-layer values of a published alpha-based mapping, with the proof of its constraint."""
    if demo == (model is not None):
        raise click.UsageError("give either MODEL or --demo")
    with heavy_imports():
        from ..allocate_pipeline import run_allocation  # on use: --help stays light
        from ..allocate_settings import make_settings

    # --estimator (None: the paper's) chooses the allocation's
    estimator = values.pop("estimator", None)
    settings = make_settings(mapping, estimator=estimator, **{k: values.pop(k) for k in SETTINGS})
    path = demo_model_path() if demo else model
    options = build_options(**values)
    with progress(quiet) as shown:
        result = run_allocation(
            path, settings, options, on_plan=shown.on_plan, progress=shown.advance
        )
    if mapping_out:
        emit(result.mapping_json(), mapping_out, [path])
    if fmt == MAPPING_FORMAT:
        emit(result.mapping_json(), output, [path])
    else:
        show(result, fmt, output, [path])


def _ints(value: str | None) -> tuple[int, ...] | None:
    """``"2,3,4"`` -> ``(2, 3, 4)``; a usage error for anything but whole numbers."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"must be comma-separated whole numbers, not {value!r}") from None
