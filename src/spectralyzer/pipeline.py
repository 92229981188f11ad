"""The analysis pipeline: file -> tensors -> matrices -> ESDs -> metrics -> tables.

``analyze()`` is the product; the CLI, reports and the CI gate are front ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from . import __version__, interrupts
from .engine import DEVICES, LayerSpectra, compute_spectra, resolve_device
from .errors import InputError, OptionError
from .fit.tail_tests import SIGNIFICANCE as TAIL_SIGNIFICANCE
from .flow import with_flow
from .io import open_checkpoint
from .io.base import Checkpoint
from .io.memory import MemoryCheckpoint
from .layers import LayerSpec, Selection, Skipped, plan
from .metrics import layer_metrics
from .render import number
from .tables import SUMMARY_MEANS, details_frame, layers_table, summarize
from .threads import MAX_THREADS, torch_threads


@dataclass(frozen=True)
class AnalysisOptions:
    """Everything that changes the numbers of an analysis.

    Checked on construction (the selection checks itself): a bad value raises
    :class:`~spectralyzer.errors.OptionError` naming the field, before any file
    is read.
    """

    selection: Selection = field(default_factory=Selection)
    randomize: bool = False  # correlation-trap check on a randomised copy of each matrix
    seed: int = 0  # seeds the randomisation
    normalize: bool = False  # divide eigenvalues by N (default: eigenvalues of W^T W)
    fix_fingers: bool = False  # clip outsized top eigenvalues from the power-law fit
    tail_tests: bool = False  # test the power-law tail against its alternatives
    device: str = "auto"
    trust_pickle: bool = False
    threads: int | None = None  # torch.set_num_threads for the run; None: torch's choice

    def __post_init__(self) -> None:
        if not isinstance(self.selection, Selection):
            raise OptionError("selection", f"must be a Selection, not {self.selection!r}")
        for key in ("randomize", "normalize", "fix_fingers", "tail_tests", "trust_pickle"):
            if not isinstance(getattr(self, key), bool):
                raise OptionError(key, f"must be True or False, not {getattr(self, key)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise OptionError("seed", f"must be an integer, not {self.seed!r}")
        if self.device not in DEVICES:
            raise OptionError("device", f"must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.threads is not None and (
            not isinstance(self.threads, int)
            or isinstance(self.threads, bool)
            or not 1 <= self.threads <= MAX_THREADS
        ):
            raise OptionError(
                "threads", f"must be an integer from 1 to {MAX_THREADS}, not {self.threads!r}"
            )


@dataclass(frozen=True)
class Analysis:
    """The outcome of one analysis: tables, what was skipped, and where time went."""

    details: pd.DataFrame
    summary: dict[str, Any]
    skipped: list[Skipped]
    timings: dict[str, float]
    spectra: dict[str, LayerSpectra] = field(default_factory=dict)  # ESDs, for plots

    def document(self) -> dict[str, Any]:
        """``{"layers": [...], "summary": {...}}``, a layer object per row of ``details``."""
        return {"layers": self.details.to_dict(orient="records"), "summary": self.summary}

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"layers": layers_table(self.details)}

    def summary_lines(self) -> list[str]:
        return summary_lines(self.summary)


Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module
#: ``on_plan(total_cost, n_matrices)``: once per model, before its spectra are computed.
OnPlan = Callable[[float, int], None]
#: ``progress(cost_done, matrices_done)``: running totals of one model, after each batch.
OnProgress = Callable[[float, int], None]
#: ``spectra(checkpoint, specs, options, device, finished, timings)``: the ESD of every spec
#: by name, or a :class:`Skipped` for a layer that could not be computed (a worker failed);
#: ``finished(batch)`` after each batch. The hook of the cache and of fan-out (``fanout.py``).
SpectraFn = Callable[..., Mapping[str, "LayerSpectra | Skipped"]]
#: ``runner(sources, options, on_plan, progress)``: one Analysis per source, in order; a
#: runner that fans out may put a failure (``str()`` says why) in place of an Analysis.
Runner = Callable[..., list[Any]]


def cost(spec: LayerSpec) -> float:
    """Estimated work of one analysed layer, in flops up to a constant: per matrix the Gram
    product (``N * M**2``) and the eigensolver (``M**3``), times its slices.

    A progress bar weighted by this tells the truth: a 32000 x 4096 embedding costs
    as much as 40 of a 7B model's 4096 x 4096 projections, not one.
    """
    return float(spec.num_slices * (spec.N * spec.M**2 + spec.M**3))


def _reporter(progress: OnProgress | None) -> Callable[[list[LayerSpec]], None] | None:
    """The engine's per-batch callback, turned into running totals for ``progress``."""
    if progress is None:
        return None
    done = [0.0, 0]

    def finished(batch: list[LayerSpec]) -> None:
        done[0] += sum(map(cost, batch))
        done[1] += len(batch)
        progress(done[0], done[1])

    return finished


def open_source(source: Source, trust_pickle: bool = False) -> Checkpoint:
    """A checkpoint for a path, a state dict or a module."""
    if isinstance(source, (Mapping, torch.nn.Module)):
        return MemoryCheckpoint(source, label=f"<{type(source).__name__}>")
    return open_checkpoint(source, trust_pickle=trust_pickle)


def local_spectra(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    options: AnalysisOptions,
    device: torch.device,
    finished: Callable[[list[LayerSpec]], None] | None,
    timings: dict[str, float],
) -> dict[str, LayerSpectra]:
    """The default :data:`SpectraFn`: every ESD computed here, nothing cached."""
    return compute_spectra(
        checkpoint,
        specs,
        device=device,
        randomize=options.randomize,
        seed=options.seed,
        progress=finished,
        timings=timings,
    )


def run_each(
    sources: Sequence[Source],
    options: AnalysisOptions,
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
) -> list[Analysis]:
    """The default :data:`Runner`: one model after another in this process."""
    return [run_analysis(s, options, on_plan=on_plan, progress=progress) for s in sources]


def run_analysis(
    source: Source,
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    *,
    on_plan: OnPlan | None = None,
    progress: OnProgress | None = None,
    spectra: SpectraFn | None = None,
) -> Analysis:
    """Analyse every selected weight matrix of a checkpoint (path, state dict or module).

    ``on_plan`` and ``progress`` report the work planned and done in units of :func:`cost`.
    ``spectra`` computes the ESDs (default :func:`local_spectra`; the cache and the
    workers of :mod:`spectralyzer.fanout` plug in here).

    Raises :class:`InputError` for a file that cannot be read or holds no
    analysable matrix.
    """
    with torch_threads(options.threads):
        return _run_analysis(source, options, on_plan, progress, spectra or local_spectra)


def _run_analysis(
    source: Source,
    options: AnalysisOptions,
    on_plan: OnPlan | None,
    progress: OnProgress | None,
    compute: SpectraFn,
) -> Analysis:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = resolve_device(options.device)
    with open_source(source, options.trust_pickle) as checkpoint:
        path = checkpoint.path
        specs, skipped = plan(checkpoint.tensors(), options.selection, randomize=options.randomize)
        timings["open"] = time.perf_counter() - start
        if not specs:
            raise InputError(path, _nothing_to_analyse(skipped))
        if on_plan:
            on_plan(sum(map(cost, specs)), len(specs))
        spectra = compute(checkpoint, specs, options, device, _reporter(progress), timings)
        fmt = checkpoint.format
        layout = checkpoint.notes()
    failed = [s for s in spectra.values() if isinstance(s, Skipped)]  # a worker failed twice
    if failed:
        skipped = skipped + failed
        spectra = {k: v for k, v in spectra.items() if not isinstance(v, Skipped)}
        specs = [s for s in specs if s.name in spectra]
        if not specs:
            raise InputError(path, _nothing_to_analyse(skipped))
    tic = time.perf_counter()
    rows = [
        layer_metrics(
            spectra[s.name],
            scale=1.0 / s.N if options.normalize else 1.0,
            fix_fingers=options.fix_fingers,
            tail_tests=options.tail_tests,
        )
        for s in interrupts.checked(specs)
    ]
    details = with_flow(details_frame(rows))  # correlation flow needs every layer's alpha
    timings["fits"] = time.perf_counter() - tic
    summary = summarize(
        details,
        skipped,
        model=os.fspath(path),
        format=fmt,
        esd="eigenvalues of W^T W / N" if options.normalize else "eigenvalues of W^T W",
        normalize=options.normalize,
        conv_mode=options.selection.conv_mode,
        randomized=options.randomize,
        fix_fingers=options.fix_fingers,
        tail_tests=options.tail_tests,
        seed=options.seed,
        device=device.type,
        spectralyzer_version=__version__,
    )
    if layout:
        summary["layout"] = layout
    timings["total"] = time.perf_counter() - start
    summary["timings"] = {stage: round(seconds, 3) for stage, seconds in timings.items()}
    return Analysis(details, summary, skipped, timings, spectra)


def analyze(
    source: Source,
    *,
    layers: str | None = None,
    exclude: str | None = None,
    types: tuple[str, ...] | None = None,
    min_evals: int = 8,
    max_evals: int | None = 16384,
    conv_mode: str = "slices",
    randomize: bool = False,
    seed: int = 0,
    normalize: bool = False,
    fix_fingers: bool = False,
    tail_tests: bool = False,
    device: str = "auto",
    trust_pickle: bool = False,
    threads: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-layer metrics (one row per analysed matrix) and the model summary.

    ``source`` is a checkpoint path (file or Hugging Face folder), a state dict
    or an ``nn.Module``.  ``max_evals=0`` (or None) means no cap, as ``--max-evals 0``
    does; a bad value raises :class:`~spectralyzer.errors.OptionError` naming it.

    >>> details, summary = analyze("model.safetensors")  # doctest: +SKIP
    """
    options = make_options(
        layers=layers,
        exclude=exclude,
        types=types,
        min_evals=min_evals,
        max_evals=max_evals,
        conv_mode=conv_mode,
        randomize=randomize,
        seed=seed,
        normalize=normalize,
        fix_fingers=fix_fingers,
        tail_tests=tail_tests,
        device=device,
        trust_pickle=trust_pickle,
        threads=threads,
    )
    result = run_analysis(source, options)
    return result.details, result.summary


def make_options(
    *,
    layers: str | None = None,
    exclude: str | None = None,
    types: tuple[str, ...] | None = None,
    min_evals: int = 8,
    max_evals: int | None = 16384,
    conv_mode: str = "slices",
    **rest: Any,
) -> AnalysisOptions:
    """AnalysisOptions from the flat keyword arguments of :func:`analyze` (validated)."""
    selection = Selection(layers, exclude, types, min_evals, max_evals, conv_mode)
    return AnalysisOptions(selection=selection, **rest)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The model summary in lines people read (not yet escaped: the path is the model's)."""
    lines = [
        f"model: {summary.get('model', '?')} ({summary.get('format', '?')})",
        f"layers analysed: {summary['num_layers']}, skipped: {summary['num_skipped']}, "
        f"fit failed (left out of means): {summary['num_fit_failed']}",
    ]
    lines.append(
        "means: " + ", ".join(f"{k} {number(summary[k])}" for k in SUMMARY_MEANS if k in summary)
    )
    warnings = {k: v for k, v in summary["warnings"].items() if v}
    lines.append("warnings: " + (", ".join(f"{k} {v}" for k, v in warnings.items()) or "none"))
    lines.append("phases: " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    if summary.get("num_traps") is not None:
        lines.append(f"correlation traps: {summary['num_traps']}")
    if summary.get("tail_laws"):
        laws = ", ".join(f"{k} {v}" for k, v in summary["tail_laws"].items())
        lines.append(f"tail laws (likelihood ratios, p < {TAIL_SIGNIFICANCE:g}): {laws}")
    return lines


def _nothing_to_analyse(skipped: list[Skipped]) -> str:
    if not skipped:
        return "no weight matrix to analyse (no tensor with 2 or more dimensions matched)"
    first = skipped[0]
    return (
        f"no analysable weight matrix ({len(skipped)} skipped; e.g. {first.name}: {first.reason})"
    )
