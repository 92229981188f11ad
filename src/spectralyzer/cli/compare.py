"""``spectralyzer compare``: several models side by side, ranked, against their accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..choices import RANK_METRICS
from ..escaping import terminal
from ..runs import ORDERS
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
from .output import emit, existing, show, write_report
from .progress import progress


@click.command(name="compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--order",
    type=click.Choice(ORDERS),
    default="natural",
    show_default=True,
    help="Order of the checkpoints of a run folder or glob: numbers in names compared as "
    "numbers (natural), plain name, or modification time. Models listed one by one keep "
    "their order.",
)
@click.option(
    "--labels",
    metavar="LIST",
    callback=comma_list,
    help="Comma-separated names of the models (default: file names).",
)
@click.option(
    "--accuracy",
    "accuracy_csv",
    type=click.Path(path_type=Path),
    help="CSV with a 'model' column (label or path) and 'accuracy' or 'error'.",
)
@click.option(
    "--family",
    "families",
    metavar="LIST",
    callback=comma_list,
    help="Comma-separated architecture family of each model (default: the accuracy CSV's "
    "'family' column, else models with the same layer shapes form a family).",
)
@click.option(
    "--rank-by",
    type=click.Choice(RANK_METRICS),
    default="alpha_weighted",
    show_default=True,
    help="Model mean that ranks the models (lower is better).",
)
@output_options("the comparison")
@click.option("--layers-out", metavar="FILE", help="Also write the per-depth layer table as CSV.")
@report_option
@analysis_options
@fanout_options
@handle_errors
def compare_command(
    models: tuple[Path, ...],
    order: str,
    labels: tuple[str, ...] | None,
    accuracy_csv: Path | None,
    families: tuple[str, ...] | None,
    rank_by: str,
    fmt: str,
    output: str | None,
    quiet: bool,
    layers_out: str | None,
    report: str | None,
    **options: Any,
) -> None:
    """Compare a series of models: summaries, ranking, and agreement with accuracy.

    MODELS are checkpoint files, Hugging Face folders, or a training run's folder
    or glob (its checkpoints ordered by the step in their names, see --order).
    """
    with heavy_imports():
        from ..render import csv_text  # on use: --help stays light
        from ..runs import expand_sources
        from ..series import compare

    settings, fanout = build_run(options, list(models))
    sources = expand_sources(models, order)  # to count them; compare() expands them the same way
    with fanout, progress(quiet, models=len(sources)) as shown:
        series = compare(
            list(models),
            order=order,
            labels=labels,
            accuracy=accuracy_csv,
            families=families,
            rank_by=rank_by,
            options=settings,
            on_plan=shown.on_plan,
            progress=shown.advance,
            runner=fanout.runner,
        )
    for line in series.warnings:
        click.echo(f"spectralyzer: warning: {terminal(line)}", err=True)
    inputs = existing([*models, *sources, accuracy_csv])
    if layers_out:
        emit(csv_text(series.layers), layers_out, inputs)
    if report:
        write_report("comparison_reports", "write_series_report", report, inputs, series)
    show(series, fmt, output, inputs)
    fanout.check()  # models that failed on workers: left out with a note, and exit 2
