"""The ``spectralyzer`` command line: thin click commands over the library.

User mistakes (bad files, bad options) print one line on stderr and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from . import __version__, interrupts
from .demo import demo_model_path, probe_demo
from .diff import diff as diff_models
from .engine import DEVICES
from .errors import InputError, OptionError, SpectralyzerError
from .escaping import terminal
from .gate import Policy, evaluate, to_junit
from .io.runnable import load_batch, load_runnable
from .layers import CONV_MODES, LAYER_TYPES
from .outputs import resolve_inputs, write_file, write_report_folder
from .pipeline import AnalysisOptions, make_options, run_analysis
from .probe import LOSSES, PRECISIONS, ProbeOptions, load_adam_state, run_probe
from .render import FORMATS, csv_text, render
from .render_table import terminal_view
from .series import RANK_METRICS, default_labels, read_accuracy
from .series import compare as compare_models

#: ProbeOptions raises OptionErrors naming its fields; each field's flag is ``--`` + dashes.
PROBE_FIELDS = frozenset(field.name for field in dataclasses.fields(ProbeOptions))


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr: control characters of names in ``message`` are shown escaped."""
    click.echo(f"spectralyzer: error: {terminal(message)}", err=True)
    sys.exit(code)


def _one_line(message: str) -> str:
    """A message on one line: third-party text (pandas, torch) may span several."""
    return re.sub(r"\s*[\r\n]+\s*", " ", message).strip()


def internal_error_line(err: BaseException) -> str:
    """The one line shown for an unexpected exception (exit code 3)."""
    message = " ".join(str(err).split())
    message = message if len(message) <= 200 else message[:197] + "..."
    message = "".join(ch if ch.isprintable() else "?" for ch in message)
    return (
        f"spectralyzer: internal error: {type(err).__name__}: {message}; please report this "
        "(rerun with --debug for the traceback)"
    )


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one line on stderr with exit code 2, and bugs into exit 3.

    Exit codes: 0 success, 1 only for a failed gate, 2 bad input or option
    (SpectralyzerError, OSError, click usage errors), 3 any other exception
    (a bug: one line asking to report it). ``--debug`` prints the traceback
    first; the exit code stays the same.

    Ctrl-C and SIGTERM only set a flag (see :mod:`.interrupts`); the command
    stops at its next check with one line and exit codes 130 and 143, and
    writes no output (every output is renamed into place only after a check).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            with interrupts.flag_signals():
                return interrupts.reraise_as_interrupted(command, *args, **kwargs)
        except interrupts.Interrupted as stop:
            click.echo(f"spectralyzer: error: {stop.reason}; no report was written", err=True)
            interrupts.leave(stop.exit_code)
        except (SpectralyzerError, OSError) as err:  # the user's input or option
            if debug:
                traceback.print_exc()
            if isinstance(err, OptionError) and err.key in PROBE_FIELDS:  # field -> its flag
                err = OptionError("--" + err.key.replace("_", "-"), err.problem)
            _fail(_one_line(str(err)) or type(err).__name__)
        except (click.ClickException, click.exceptions.Exit):
            raise  # usage errors: click (and Commands) print them, exit 2
        except Exception as err:  # anything else is a bug of spectralyzer: exit 3, not 1
            if debug:
                traceback.print_exc()
            click.echo(internal_error_line(err), err=True)
            sys.exit(3)

    return click.option("--debug", is_flag=True, help="Show tracebacks (same exit codes).")(wrapper)


report_option = click.option(
    "--report",
    metavar="DIR",
    help="Also write a report folder (index.html, report.md, figures, CSV).",
)


def analysis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by every command that analyses checkpoints."""
    options = [
        click.option(
            "--layers",
            "include",
            metavar="REGEX",
            help="Analyse only parameters whose name matches.",
        ),
        click.option("--exclude", metavar="REGEX", help="Skip parameters whose name matches."),
        click.option(
            "--types",
            metavar="LIST",
            help=f"Comma-separated layer types to analyse ({', '.join(LAYER_TYPES)}).",
        ),
        click.option(
            "--min-evals",
            default=8,
            show_default=True,
            help="Skip matrices with fewer eigenvalues.",
        ),
        click.option(
            "--max-evals",
            default=16384,
            show_default=True,
            help="Skip matrices with more eigenvalues (0: no cap).",
        ),
        click.option(
            "--conv-mode",
            type=click.Choice(CONV_MODES),
            default="slices",
            show_default=True,
            help="Conv kernels: one (out, in) matrix per kernel position pooled, or one unfolded (out, in*k) matrix.",
        ),
        click.option(
            "--randomize/--no-randomize",
            default=False,
            help="Also check each matrix for correlation traps against a randomised copy.",
        ),
        click.option("--seed", default=0, show_default=True, help="Seed of the randomisation."),
        click.option(
            "--normalize",
            is_flag=True,
            help="Divide eigenvalues by N (default: eigenvalues of W^T W).",
        ),
        click.option(
            "--fix-fingers",
            is_flag=True,
            help="Clip a few outsized top eigenvalues ('fingers') from the power-law fit.",
        ),
        click.option(
            "--tail-tests",
            is_flag=True,
            help="Test each power-law tail against exponential, lognormal and truncated power law (likelihood ratios).",
        ),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option(
            "--trust-code",
            "--trust-pickle",
            "trust_pickle",
            is_flag=True,
            help="Allow loading that runs code from the file (full pickled modules, TorchScript programs). Only for files you trust.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_options(
    include: str | None, types: str | None, max_evals: int, **opts: Any
) -> AnalysisOptions:
    """AnalysisOptions from the values of :func:`analysis_options`, validated."""
    type_list = tuple(t.strip() for t in types.split(",") if t.strip()) if types else None
    unknown = set(type_list or ()) - set(LAYER_TYPES)
    if unknown:
        raise click.BadParameter(
            f"unknown layer type(s) {sorted(unknown)}; choose from {', '.join(LAYER_TYPES)}"
        )
    if opts["min_evals"] < 1:
        raise click.BadParameter("--min-evals must be at least 1")
    if max_evals < 0:
        raise OptionError("--max-evals", f"must be >= 0 (0: no cap), not {max_evals}")
    for flag, pattern in (("--layers", include), ("--exclude", opts["exclude"])):
        try:
            re.compile(pattern or "")
        except re.error as err:
            raise click.BadParameter(
                f"{flag} {pattern!r} is not a valid regular expression: {err}"
            ) from None
    return make_options(layers=include, types=type_list, max_evals=max_evals or None, **opts)


@contextmanager
def progress_bar(quiet: bool):
    """Yields (on_plan, advance) callbacks drawing a bar on stderr when it is a terminal."""
    state: dict[str, Any] = {}
    show = not quiet and sys.stderr.isatty()

    def on_plan(total: int) -> None:
        if show:
            state["bar"] = click.progressbar(
                length=total, label="layers", file=sys.stderr, show_eta=True
            )
            state["bar"].__enter__()

    def advance(n: int) -> None:
        if "bar" in state:
            state["bar"].update(n)

    try:
        yield on_plan, advance
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


def write_output(data: str | bytes, output: str | None, inputs: list[Path]) -> None:
    """Write to stdout, or to a file with :func:`.outputs.write_file` (atomic, never over an input)."""
    interrupts.check()  # a run stopped by a signal writes nothing, not even to stdout
    if output is None or output == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            click.echo(data, nl=False)
        return
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_file(payload, output, resolve_inputs(inputs))


def view(output: str | None) -> dict[str, Any]:
    """render()'s width and colour: a terminal's when the output goes to one, else none."""
    return terminal_view(sys.stdout) if output is None or output == "-" else {}


class OneLineUsageError(click.ClickException):
    """A usage mistake, shown like every other user error: one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"spectralyzer: error: {self.format_message()}", err=True)


class Commands(click.Group):
    """The command group; option and usage mistakes print one line instead of click's usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare `spectralyzer` shows the help, as click does
        except click.UsageError as err:
            raise OneLineUsageError(_usage_message(err)) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise OneLineUsageError(_usage_message(err)) from None


def _usage_message(err: click.UsageError) -> str:
    """``<subcommand>: <problem> (see --help)``; the prefix already names spectralyzer."""
    where = " ".join(err.ctx.command_path.split()[1:]) if err.ctx else ""
    return f"{where + ': ' if where else ''}{err.format_message()} (see --help)"


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spectralyzer")
def main() -> None:
    """Judge trained neural networks from their weights alone (heavy-tailed spectral analysis)."""


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("--demo", is_flag=True, help="Analyse the built-in demo model (all-MiniLM-L6-v2).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write the report here instead of stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--report",
    metavar="DIR",
    help="Also write a report folder: index.html (self-contained), report.md, figures, CSV, JSON.",
)
@analysis_options
@handle_errors
def analyze(
    model: Path | None,
    demo: bool,
    fmt: str,
    output: str | None,
    quiet: bool,
    report: str | None,
    **opts: Any,
) -> None:
    """Per-layer spectral quality of a checkpoint (file or Hugging Face folder)."""
    if demo == (model is not None):
        raise click.UsageError("give either MODEL or --demo")
    path = demo_model_path() if demo else model
    options = build_options(**opts)
    with progress_bar(quiet) as (on_plan, advance):
        result = run_analysis(path, options, on_plan=on_plan, progress=advance)
    if report:
        writers = report_writers()
        write_report_folder(
            lambda d: writers.model_report.write_model_report(result, d), report, [Path(path)]
        )
    write_output(render(result, fmt, **view(output)), output, [Path(path)])


def report_writers() -> Any:
    """The report package (needs matplotlib, the optional 'plots' extra)."""
    try:
        from . import report
        from .report import comparison_reports, model_report  # noqa: F401
    except ImportError as err:
        raise SpectralyzerError(
            f"reports need matplotlib: pip install 'spectralyzer[plots]' ({err})"
        ) from None
    return report


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--layer", "layer", required=True, metavar="REGEX", help="Layers to plot (regex on the name)."
)
@click.option("-o", "--output", required=True, metavar="FILE.png", help="Where to write the PNG.")
@click.option(
    "--randomize/--no-randomize",
    default=True,
    show_default=True,
    help="Overlay the randomised ESD.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--trust-code",
    "--trust-pickle",
    "trust_pickle",
    is_flag=True,
    help="Allow loading that runs code from the file (full pickled modules, TorchScript programs). Only for files you trust.",
)
@handle_errors
def plot(
    model: Path, layer: str, output: str, randomize: bool, seed: int, trust_pickle: bool
) -> None:
    """ESD plots (log-log, power-law and Marchenko-Pastur fits) of the matching layers."""
    try:
        from .report.plots import esd_grid
    except ImportError as err:
        raise SpectralyzerError(
            f"plot needs matplotlib: pip install 'spectralyzer[plots]' ({err})"
        ) from None
    try:
        re.compile(layer)
    except re.error as err:
        raise click.BadParameter(f"{layer!r} is not a valid regular expression: {err}") from None
    options = make_options(layers=layer, randomize=randomize, seed=seed, trust_pickle=trust_pickle)
    result = run_analysis(model, options)
    panels = []
    for _, row in result.details.iterrows():
        spectra = result.spectra[row["name"]]
        if spectra.esd.finite:
            rand = spectra.randomized.evals if spectra.randomized is not None else None
            panels.append((row, spectra.esd.evals, rand))
    if not panels:
        raise SpectralyzerError(f"{model}: no analysable layer matches {layer!r}")
    buffer = io.BytesIO()
    esd_grid(panels).savefig(buffer, format="png")
    write_output(buffer.getvalue(), output, [model])


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels", metavar="LIST", help="Comma-separated names of the models (default: file names)."
)
@click.option(
    "--accuracy",
    "accuracy_csv",
    type=click.Path(path_type=Path),
    help="CSV with a 'model' column (label or path) and 'accuracy' or 'error'.",
)
@click.option(
    "--rank-by",
    type=click.Choice(RANK_METRICS),
    default="alpha_weighted",
    show_default=True,
    help="Model mean that ranks the models (lower is better).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write the comparison here instead of stdout.")
@click.option("--layers-out", metavar="FILE", help="Also write the per-depth layer table as CSV.")
@report_option
@analysis_options
@handle_errors
def compare(
    models: tuple[Path, ...],
    labels: str | None,
    accuracy_csv: Path | None,
    rank_by: str,
    fmt: str,
    output: str | None,
    layers_out: str | None,
    report: str | None,
    **opts: Any,
) -> None:
    """Compare a series of models: summaries, ranking, and agreement with accuracy."""
    names = [label.strip() for label in labels.split(",")] if labels else default_labels(models)
    if len(names) != len(models):
        raise click.BadParameter(
            f"{len(names)} labels for {len(models)} models", param_hint="--labels"
        )
    accuracy = read_accuracy(accuracy_csv, names) if accuracy_csv else None
    series = compare_models(
        list(models),
        labels=names,
        accuracy=accuracy,
        rank_by=rank_by,
        options=build_options(**opts),
    )
    inputs = [*models, *([accuracy_csv] if accuracy_csv else [])]
    if layers_out:
        write_output(csv_text(series.layers), layers_out, inputs)
    if report:
        writers = report_writers()
        write_report_folder(
            lambda d: writers.comparison_reports.write_series_report(series, d), report, inputs
        )
    write_output(render(series, fmt, **view(output)), output, inputs)


@main.command(name="diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write the table here instead of stdout.")
@analysis_options
@handle_errors
def diff_command(base: Path, candidate: Path, fmt: str, output: str | None, **opts: Any) -> None:
    """Per-layer changes from BASE to CANDIDATE (matched by name and shape)."""
    result = diff_models(base, candidate, build_options(**opts))
    write_output(render(result, fmt, **view(output)), output, [base, candidate])


@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(path_type=Path),
    help="Policy TOML (default thresholds otherwise).",
)
@click.option("--junit", metavar="FILE", help="Write a JUnit XML report.")
@click.option("--markdown", metavar="FILE", help="Write a Markdown summary.")
@report_option
@analysis_options
@handle_errors
def gate(
    base: Path,
    candidate: Path,
    policy_path: Path | None,
    junit: str | None,
    markdown: str | None,
    report: str | None,
    **opts: Any,
) -> None:
    """Fail (exit 1) when CANDIDATE's spectra show damage relative to BASE; 0 when it passes.

    Appends the Markdown summary to $GITHUB_STEP_SUMMARY when that is set.
    """
    policy = Policy.from_toml(policy_path) if policy_path else Policy()
    result = diff_models(base, candidate, build_options(**opts))
    if result.matched.empty:
        raise InputError(candidate, f"shares no layer name with {base}; nothing to gate")
    try:
        verdict = evaluate(result, policy)
    except OptionError as err:  # include/exclude, which only a policy file sets
        raise InputError(policy_path or "policy", str(err)) from None
    inputs = [base, candidate, *([policy_path] if policy_path else [])]
    if report:
        writers = report_writers()
        write_report_folder(
            lambda d: writers.comparison_reports.write_gate_report(result, verdict, d),
            report,
            inputs,
        )
    if junit:
        write_output(to_junit(verdict), junit, inputs)
    summary = render(verdict, "markdown")
    if markdown:
        write_output(summary, markdown, inputs)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as handle:
            handle.write(summary)
    click.echo(render(verdict, "table", **view(None)), nl=False)
    if not verdict.passed:
        sys.exit(1)


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


@main.command()
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
@click.option("--loss", type=click.Choice(list(LOSSES)), default="cross_entropy", show_default=True)
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
@click.option("--seed", default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--precision", type=click.Choice(list(PRECISIONS)), default="float64", show_default=True
)
@click.option(
    "--trust-code",
    "--trust-pickle",
    "trust_pickle",
    is_flag=True,
    help="Allow loading that runs code from the file (full pickled modules, TorchScript programs). Only for files you trust.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write the report here instead of stdout.")
@handle_errors
def probe(
    model: str | None,
    data: Path | None,
    weights: Path | None,
    demo: bool,
    trust_pickle: bool,
    fmt: str,
    output: str | None,
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
    options = ProbeOptions(**opts)  # validated before any file is read or code run
    module = load_runnable(model, weights, trust_pickle=trust_pickle)
    inputs, targets = load_batch(data)
    adam = load_adam_state(optimizer_state, module) if optimizer_state else None
    result = run_probe(
        module,
        inputs,
        targets,
        options,
        model_label=str(model),
        data_label=str(data),
        adam=adam,
    )
    sources = (model, weights, data, optimizer_state)
    inputs_used = [Path(p) for p in sources if p and Path(p).exists()]
    write_output(render(result, fmt), output, inputs_used)


if __name__ == "__main__":  # pragma: no cover
    main()
