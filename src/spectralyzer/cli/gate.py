"""``spectralyzer diff`` and ``spectralyzer gate``: a candidate model against its base."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .errors import handle_errors
from .lazy import heavy_imports
from .options import analysis_options, build_run, fanout_options, output_options, report_option
from .output import emit, existing, show, write_report
from .progress import progress


@click.command(name="diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@output_options("the table")
@analysis_options
@fanout_options
@handle_errors
def diff_command(
    base: Path, candidate: Path, fmt: str, output: str | None, quiet: bool, **options: Any
) -> None:
    """Per-layer changes from BASE to CANDIDATE (matched by name and shape)."""
    with heavy_imports():
        from ..layer_diff import diff  # on use: --help stays light

    settings, fanout = build_run(options, [base, candidate])
    with fanout, progress(quiet, models=2) as shown:
        result = diff(
            base,
            candidate,
            settings,
            on_plan=shown.on_plan,
            progress=shown.advance,
            runner=fanout.strict_runner,
        )
    show(result, fmt, output, [base, candidate])


@click.command(name="gate")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(path_type=Path),
    help="Policy TOML (default thresholds otherwise).",
)
@output_options("the verdict")
@click.option("--junit", metavar="FILE", help="Also write a JUnit XML report.")
@click.option("--markdown", metavar="FILE", help="Also write a Markdown summary.")
@report_option
@analysis_options
@fanout_options
@handle_errors
def gate_command(
    base: Path,
    candidate: Path,
    policy_path: Path | None,
    fmt: str,
    output: str | None,
    quiet: bool,
    junit: str | None,
    markdown: str | None,
    report: str | None,
    **options: Any,
) -> None:
    """Fail (exit 1) when CANDIDATE's spectra show damage relative to BASE; 0 when it passes.

    Appends the Markdown summary to $GITHUB_STEP_SUMMARY when that is set.
    """
    with heavy_imports():
        from ..gate_policy import gate, to_junit  # on use: --help stays light
        from ..outputs import append_text, resolve_inputs
        from ..render import render

    settings, fanout = build_run(options, [base, candidate])
    with fanout, progress(quiet, models=2) as shown:
        verdict = gate(
            base,
            candidate,
            policy_path,
            settings,
            on_plan=shown.on_plan,
            progress=shown.advance,
            runner=fanout.strict_runner,
        )
    inputs = existing([base, candidate, policy_path])
    if report:
        write_report(
            "comparison_reports", "write_gate_report", report, inputs, verdict.diff, verdict
        )
    if junit:
        emit(to_junit(verdict), junit, inputs)
    summary = render(verdict, "markdown")
    if markdown:
        emit(summary, markdown, inputs)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        append_text(os.environ["GITHUB_STEP_SUMMARY"], summary, resolve_inputs(inputs))
    show(verdict, fmt, output, inputs)
    if not verdict.passed:
        sys.exit(1)
