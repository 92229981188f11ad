"""``spectralyzer plot``: ESD figures of the layers a pattern selects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .errors import handle_errors
from .options import analysis_options, build_options
from .output import emit, plotting


@click.command(name="plot")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, metavar="FILE.png", help="Where to write the PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@analysis_options
@handle_errors
def plot_command(model: Path, output: str, quiet: bool, **options: Any) -> None:
    """ESD plots (log-log, power-law and Marchenko-Pastur fits) of the layers --layers selects."""
    if options["layers"] is None:
        raise click.UsageError("plot needs --layers REGEX (the layers to plot)")
    png = plotting("panels").plot_layers(model, build_options(**options))
    emit(png, output, [model])
