"""The options several commands share, one set of defaults, and the field -> flag table.

Nothing heavy is imported here: the choices come from :mod:`spectralyzer.choices`,
so ``--help`` and usage errors need neither torch nor pandas.  Options are parsed here, not checked: the library's records
(:class:`~spectralyzer.pipeline.AnalysisOptions`, its
:class:`~spectralyzer.layers.Selection`, the probe's options) check their own
values and raise :class:`~spectralyzer.errors.OptionError` naming the field;
:func:`flag_for` turns that field into the flag the user typed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..choices import (
    CONV_MODES,
    DEVICES,
    ESTIMATORS,
    EXPERT_MODES,
    FORMATS,
    LAYER_TYPES,
    PRECISION_NAMES,
)
from ..roles import FAMILIES
from .lazy import heavy_imports

if TYPE_CHECKING:
    from ..fanout import FanOut
    from ..pipeline import AnalysisOptions

#: Library field -> command-line flag, where the flag is not ``--`` + the field with dashes.
FLAGS = {"trust_pickle": "--trust-code"}


def flag_for(field: str) -> str:
    """The command-line flag of a library field (``max_evals`` -> ``--max-evals``).

    A key that is not a field name (already a flag, a file) is shown as it is.
    """
    if not field.isidentifier():
        return field
    return FLAGS.get(field, "--" + field.replace("_", "-"))


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(options: list[Decorator], command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
    """``"a, b"`` -> ``("a", "b")``; nothing given -> None."""
    if value is None:
        return None
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    return items or None


trust_option = click.option(
    "--trust-code",
    "--trust-pickle",
    "trust_pickle",
    is_flag=True,
    help="Allow loading that runs code from the file (full pickled modules, TorchScript "
    "programs). Only for files you trust.",
)
device_option = click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True
)
seed_option = click.option(
    "--seed", default=0, show_default=True, help="Seed of everything random."
)


#: ``--estimator`` and FARMS (docs/theory.md section 6.1); defaults: AnalysisOptions'.
estimator_options = [
    click.option(
        "--estimator",
        type=click.Choice(ESTIMATORS),
        default=None,
        help="How alpha is fitted (default clauset; for allocate, the mapping's paper's "
        "estimator): clauset (xmin by minimum KS distance), hill (xmin fixed "
        "at the median eigenvalue, TempBalance's alpha_mid) or xmin-peak (KS scan for xmin in "
        "[0.95, 1.5] x the ESD's histogram peak, AlphaPruning's alpha_peak).",
    ),
    click.option(
        "--hill-k",
        default="median",
        show_default=True,
        metavar="median|alphaq|K",
        help="Tail of --estimator hill: half the eigenvalues (median), AlphaQ's top "
        "max(10, 0.1 N) (alphaq), or the top K.",
    ),
    click.option(
        "--xmin-peak-compat",
        is_flag=True,
        help="--estimator xmin-peak with the released code's lower limit log10(0.95 peak) "
        "compared with linear eigenvalues (it never binds); for published numbers.",
    ),
    click.option(
        "--farms",
        is_flag=True,
        help="FARMS: fit the pooled ESD of fixed-shape windows of each matrix, so alphas of "
        "different shapes compare (with any --estimator).",
    ),
    click.option(
        "--farms-size",
        type=int,
        default=2000,
        show_default=True,
        metavar="N",
        help="FARMS window size n_req (LLM setting 2000; vision setting 100 with "
        "--farms-windows 9).",
    ),
    click.option(
        "--farms-windows",
        type=int,
        default=15,
        show_default=True,
        metavar="K",
        help="FARMS window positions per dimension (up to K^2 windows a matrix).",
    ),
    click.option(
        "--farms-ratio",
        type=float,
        default=1.0,
        show_default=True,
        metavar="Q",
        help="FARMS window aspect ratio rows/columns (>= 1).",
    ),
]


def analysis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that analyses checkpoints (AnalysisOptions' fields)."""
    return _apply(
        [
            click.option(
                "--layers",
                "--layer",
                "layers",
                metavar="REGEX",
                help="Analyse only parameters whose name matches.",
            ),
            click.option("--exclude", metavar="REGEX", help="Skip parameters whose name matches."),
            click.option(
                "--types",
                metavar="LIST",
                callback=comma_list,
                help=f"Comma-separated layer types to analyse ({', '.join(LAYER_TYPES)}).",
            ),
            click.option(
                "--roles",
                metavar="LIST",
                callback=comma_list,
                help="Comma-separated roles or role families to analyse "
                f"({', '.join(FAMILIES)}; or parts such as attn-q, mlp-down, expert-up).",
            ),
            click.option(
                "--split/--no-split",
                default=True,
                show_default=True,
                help="Split fused q/k/v and gate/up tensors into their parts (rows name:q, "
                "name:gate, ...).",
            ),
            click.option(
                "--expert-rows",
                type=click.Choice(EXPERT_MODES),
                default="each",
                show_default=True,
                help="Expert matrices of MoE models: a row each, one mean row per expert "
                "group, or left out.",
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
                help="Conv kernels: one (out, in) matrix per kernel position pooled, "
                "or one unfolded (out, in*k) matrix.",
            ),
            click.option(
                "--randomize/--no-randomize",
                default=False,
                show_default=True,
                help="Also check each matrix for correlation traps against a randomised copy.",
            ),
            seed_option,
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
            *estimator_options,
            click.option(
                "--tail-tests",
                is_flag=True,
                help="Test each power-law tail against exponential, lognormal and truncated "
                "power law (likelihood ratios).",
            ),
            device_option,
            click.option(
                "--precision",
                type=click.Choice(PRECISION_NAMES),
                default="float64",
                show_default=True,
                help="Gram products and eigensolver. float32: about half the time; eigenvalues "
                "within about M*1.2e-7*lambda_max (alpha moves by < 1e-4 on MiniLM), and rank_loss "
                "can miss numerical zeros (docs/theory.md section 1.5).",
            ),
            click.option(
                "--threads",
                type=int,
                metavar="N",
                help="CPU threads torch uses for the run (default: torch's choice, one per core).",
            ),
            trust_option,
        ],
        command,
    )


def build_options(**values: Any) -> AnalysisOptions:
    """AnalysisOptions from the values of :func:`analysis_options` (the record checks them).

    The library is imported here, when a command runs, not when the CLI loads (fast --help).
    """
    with heavy_imports():
        from ..pipeline import make_options

    if values.get("estimator", "") is None:  # not given: AnalysisOptions' default (clauset)
        del values["estimator"]
    return make_options(**values)


FANOUT_KEYS = ("workers", "ray", "cache", "no_cache")


def fanout_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--workers``, ``--ray [ADDRESS]``, ``--cache DIR`` and ``--no-cache`` (see
    :mod:`spectralyzer.fanout`); :func:`build_fanout` takes them out of the values."""
    return _apply(
        [
            click.option(
                "--workers",
                type=int,
                metavar="N",
                help="Analyse on N local processes (torch threads: cores / N each).",
            ),
            click.option(
                "--ray",
                is_flag=False,
                flag_value="local",
                metavar="[ADDRESS]",
                help="Analyse on Ray (extra 'ray'): alone, a local cluster started for the run; "
                "auto or HOST:PORT, a running cluster (write --ray=ADDRESS).",
            ),
            click.option(
                "--cache",
                metavar="DIR",
                help="Reuse and keep layer ESDs here "
                "(default: $XDG_CACHE_HOME/spectralyzer or ~/.cache/spectralyzer).",
            ),
            click.option("--no-cache", is_flag=True, help="Neither read nor write the cache."),
        ],
        command,
    )


def build_run(values: dict[str, Any], inputs: list[Any]) -> tuple[AnalysisOptions, FanOut]:
    """The options and the :class:`~spectralyzer.fanout.FanOut` (workers, cache) of the values
    of :func:`analysis_options` and :func:`fanout_options`; the options are checked first,
    so a bad one stops the run before any worker starts. The cache never goes into ``inputs``."""
    with heavy_imports():
        from ..fanout import make_fanout

    workers, ray, cache, no_cache = (values.pop(key) for key in FANOUT_KEYS)
    if no_cache and cache:
        raise click.UsageError("--cache and --no-cache exclude each other")
    settings = build_options(**values)
    return settings, make_fanout(workers, ray, cache, not no_cache, settings.threads, inputs)


def output_options(what: str, formats: tuple[str, ...] = FORMATS) -> Decorator:
    """``--format``, ``-o`` and ``-q``: the same names and defaults on every command."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _apply(
            [
                click.option(
                    "--format",
                    "fmt",
                    type=click.Choice(formats),
                    default=formats[0],
                    show_default=True,
                ),
                click.option(
                    "-o", "--output", metavar="FILE", help=f"Write {what} here instead of stdout."
                ),
                click.option(
                    "-q",
                    "--quiet",
                    is_flag=True,
                    help="No progress (a bar on a terminal, else a line every 15 s).",
                ),
            ],
            command,
        )

    return decorate


def report_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--report DIR``: a report folder beside the rendered output."""
    return click.option(
        "--report",
        metavar="DIR",
        help="Also write a report folder: index.html (self-contained), report.md, figures, CSV.",
    )(command)
