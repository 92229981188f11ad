"""``spectralyzer watch``: follow a training run's output folder, analyse each new checkpoint.

Exit codes: 0 when the watch ends (``--once``, ``--max-checkpoints``,
``--timeout``), 1 when an alarm of a ``--fail-on`` kind rang (so a job
scheduler can stop the run), 2 bad input or option, 130/143 on a signal (the
rows already appended stay).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..alarms import FAIL_ON
from ..escaping import terminal
from .errors import handle_errors
from .lazy import heavy_imports
from .options import analysis_options, build_options
from .output import plotting, write_report


@click.command(name="watch")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--interval",
    type=float,
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between polls; a checkpoint is analysed once it is unchanged across two.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Analyse the checkpoints complete now (two looks --interval apart), then stop.",
)
@click.option(
    "--max-checkpoints", type=int, metavar="N", help="Stop after analysing N checkpoints."
)
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop after this many seconds.")
@click.option(
    "--table",
    metavar="FILE",
    help="Append one row per checkpoint here: CSV, or JSON lines for .jsonl/.ndjson/.json.",
)
@click.option("--report", metavar="DIR", help="Keep a compare report of the run up to date here.")
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    multiple=True,
    help="Exit 1 when an alarm of this kind rings (repeatable): a layer's alpha falls under 2, "
    "new correlation traps (needs --randomize), a correlation-flow jump; any: all of them.",
)
@click.option("-q", "--quiet", is_flag=True, help="No line per analysed checkpoint on stdout.")
@analysis_options
@handle_errors
def watch_command(
    folder: Path,
    interval: float,
    once: bool,
    max_checkpoints: int | None,
    timeout: float | None,
    table: str | None,
    report: str | None,
    fail_on: tuple[str, ...],
    quiet: bool,
    **options: Any,
) -> None:
    """Follow FOLDER (a training run's output) and analyse each new checkpoint when complete."""
    with heavy_imports():
        from ..outputs import check_file_target, check_report_target, resolve_inputs
        from ..render import number
        from ..run_table import append_row, table_row
        from ..series import assemble
        from ..watch import WatchSettings, watch

    settings = WatchSettings(interval, once, max_checkpoints, timeout, fail_on)
    analysis = build_options(**options)
    inputs = resolve_inputs([folder])
    if table:
        check_file_target(table, inputs)
    if report:
        plotting("comparison_reports")  # the plots extra: say so before the first poll
        check_report_target(report, inputs)

    def analysed(entry, alarms, outcome) -> None:
        if table:
            append_row(table, table_row(entry, alarms), inputs)
        if report:
            series = assemble(outcome.entries)
            write_report("comparison_reports", "write_series_report", report, [folder], series)
        for alarm in alarms:
            click.echo(f"spectralyzer: alarm: {terminal(alarm.line())}", err=True)
        if not quiet:
            step = "" if entry.step is None else f" step {entry.step}"
            click.echo(
                f"{terminal(entry.label)}{step}: alpha_weighted "
                f"{number(entry.summary['alpha_weighted'])}, alarms {len(alarms)}"
            )

    def skipped(path, err) -> None:
        click.echo(f"spectralyzer: warning: {terminal(err)}; skipped until it changes", err=True)

    outcome = watch(folder, analysis, settings, on_entry=analysed, on_error=skipped)
    if outcome.stopped == "fail-on":
        kinds = ", ".join(sorted({alarm.kind for alarm in outcome.failed}))
        click.echo(f"spectralyzer: stopping: {kinds} alarm (--fail-on)", err=True)
        sys.exit(1)
