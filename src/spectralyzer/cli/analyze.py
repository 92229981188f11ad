"""``spectralyzer analyze``: per-layer spectral quality of one checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..demo import demo_model_path
from .errors import handle_errors
from .lazy import heavy_imports
from .options import (
    analysis_options,
    build_run,
    comma_list,
    fanout_options,
    output_options,
    report_option,
)
from .output import show, write_report
from .progress import progress


@click.command(name="analyze")
@click.argument("model", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--demo", is_flag=True, help="Analyse the built-in demo model (all-MiniLM-L6-v2).")
@output_options("the report")
@click.option(
    "--columns",
    metavar="LIST",
    callback=comma_list,
    help="Comma-separated columns of the per-layer table to show (default: the main ones).",
)
@click.option(
    "--adapter",
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="A PEFT LoRA adapter folder to apply to MODEL: rows for the base weights, each "
    "update (lora-delta) and each merged W + dW.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="End the table with every skipped tensor (name, shape, reason), not counts per reason.",
)
@report_option
@analysis_options
@fanout_options
@handle_errors
def analyze_command(
    model: Path | None,
    demo: bool,
    fmt: str,
    output: str | None,
    quiet: bool,
    columns: tuple[str, ...] | None,
    adapter: Path | None,
    verbose: bool,
    report: str | None,
    **options: Any,
) -> None:
    """Per-layer spectral quality of a checkpoint (file, Hugging Face folder or PEFT adapter
    folder)."""
    if demo == (model is not None):
        raise click.UsageError("give either MODEL or --demo")
    with heavy_imports():
        from ..pipeline import run_analysis  # on use: --help stays light

    path = demo_model_path() if demo else model
    inputs = [path] if adapter is None else [path, adapter]
    settings, fanout = build_run({**options, "adapter": adapter}, inputs)
    with fanout, progress(quiet) as shown:
        result = run_analysis(
            path, settings, on_plan=shown.on_plan, progress=shown.advance, spectra=fanout.spectra
        )
    result = replace(result, verbose=verbose)
    if report:
        write_report("model_report", "write_model_report", report, [path], result)
    show(result, fmt, output, [path], columns=columns)
    fanout.check()  # layers that failed on workers: listed as skipped, and exit 2
