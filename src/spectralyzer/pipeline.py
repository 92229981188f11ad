"""The analysis pipeline: file -> tensors -> matrices -> ESDs -> metrics -> tables.

``analyze()`` is the product; the CLI, reports and the CI gate are front ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from . import __version__, interrupts
from .choices import EXPERT_MODES, PRECISION_NAMES
from .engine import DEVICES, LayerSpectra, compute_spectra, resolve_device
from .errors import InputError, OptionError
from .farms import compute_farms_spectra, farms_cost
from .fit.estimators import Estimator
from .fit.tail_tests import SIGNIFICANCE as TAIL_SIGNIFICANCE
from .flow import with_flow
from .io import open_checkpoint
from .io.adapter import AdapterCheckpoint
from .io.aliases import find_aliases
from .io.base import Checkpoint
from .io.memory import MemoryCheckpoint
from .io.open import open_adapter
from .layers import LayerSpec, Selection, Skipped, plan
from .listing import listing_lines
from .low_rank import low_rank_row
from .metrics import LayerMetrics, layer_metrics
from .render import number
from .tables import (
    SUMMARY_MEANS,
    details_frame,
    estimator_text,
    expert_means,
    layers_table,
    layout_lines,
    summarize,
)
from .threads import MAX_THREADS, torch_threads
from .variants import variant_of
from .windows import FarmsSettings


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
    precision: str = "float64"  # Gram products and eigensolver (docs/theory.md section 1.5)
    # the alpha estimator and FARMS (docs/theory.md section 6.1)
    estimator: str = "clauset"
    hill_k: str | int = "median"  # hill: "median", "alphaq" or a tail size
    xmin_peak_compat: bool = False  # xmin-peak: the released code's lower limit
    farms: bool = False  # fit the pooled ESD of fixed-shape windows
    farms_size: int = FarmsSettings.size  # n_req
    farms_windows: int = FarmsSettings.windows  # K
    farms_ratio: float = FarmsSettings.ratio  # Q'
    split: bool = True  # fused q/k/v and gate/up tensors as their parts (spectralyzer.layouts)
    experts: str = "each"  # expert matrices: "each" a row, "mean" a row per group, "skip"
    adapter: str | os.PathLike[str] | None = None  # a PEFT LoRA adapter folder on the source

    def __post_init__(self) -> None:
        if not isinstance(self.selection, Selection):
            raise OptionError("selection", f"must be a Selection, not {self.selection!r}")
        for key in ("randomize", "normalize", "fix_fingers", "tail_tests", "trust_pickle", "split"):
            if not isinstance(getattr(self, key), bool):
                raise OptionError(key, f"must be True or False, not {getattr(self, key)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise OptionError("seed", f"must be an integer, not {self.seed!r}")
        if self.precision not in PRECISION_NAMES:
            raise OptionError(
                "precision",
                f"must be one of {', '.join(PRECISION_NAMES)}, not {self.precision!r}",
            )
        if self.experts not in EXPERT_MODES:
            raise OptionError(
                "experts", f"must be one of {', '.join(EXPERT_MODES)}, not {self.experts!r}"
            )
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
        if self.adapter is not None and not isinstance(self.adapter, (str, os.PathLike)):
            raise OptionError("adapter", f"must be a folder path, not {self.adapter!r}")
        object.__setattr__(self, "hill_k", self.fit_estimator.hill_k)  # checks the estimator
        if self.fix_fingers and self.estimator != "clauset":
            raise OptionError("fix_fingers", "applies to the clauset estimator only")
        if not isinstance(self.farms, bool):
            raise OptionError("farms", f"must be True or False, not {self.farms!r}")
        windows = FarmsSettings(self.farms_size, self.farms_windows, self.farms_ratio)
        if not self.farms and windows != FarmsSettings():
            changed = next(
                k
                for k in ("size", "windows", "ratio")
                if getattr(windows, k) != getattr(FarmsSettings(), k)
            )
            raise OptionError(f"farms_{changed}", "applies only with --farms")

    @property
    def fit_estimator(self) -> Estimator:
        """The alpha estimator these options name (checked)."""
        return Estimator(self.estimator, self.hill_k, self.xmin_peak_compat)

    @property
    def farms_settings(self) -> FarmsSettings | None:
        """The FARMS windows, or None without ``farms``."""
        if not self.farms:
            return None
        return FarmsSettings(self.farms_size, self.farms_windows, self.farms_ratio)

    def estimator_record(self) -> dict[str, Any]:
        """The estimator and FARMS settings as every output records them."""
        farms = self.farms_settings
        return {**self.fit_estimator.record(), "farms": farms.record() if farms else None}


@dataclass(frozen=True)
class Analysis:
    """The outcome of one analysis: tables, what was skipped, and where time went."""

    details: pd.DataFrame
    summary: dict[str, Any]
    skipped: list[Skipped]
    timings: dict[str, float]
    spectra: dict[str, LayerSpectra] = field(default_factory=dict)  # ESDs, for plots
    verbose: bool = False  # summary lines list each skipped tensor, not counts per reason

    def document(self) -> dict[str, Any]:
        """``{"layers": [...], "summary": {...}}``, a layer object per row of ``details``."""
        return {"layers": self.details.to_dict(orient="records"), "summary": self.summary}

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"layers": layers_table(self.details, self.summary.get("estimator"))}

    def summary_lines(self) -> list[str]:
        return summary_lines(self.summary, verbose=self.verbose)


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


def _reporter(
    progress: OnProgress | None,
    weigh: Callable[[LayerSpec], float] = cost,
    done: list | None = None,
) -> Callable[[list[LayerSpec]], None] | None:
    """The engine's per-batch callback, turned into running totals for ``progress``
    (``done``: totals to continue from, shared between the ESDs and the FARMS windows)."""
    if progress is None:
        return None
    done = [0.0, 0] if done is None else done

    def finished(batch: list[LayerSpec]) -> None:
        done[0] += sum(map(weigh, batch))
        done[1] += len(batch)
        progress(done[0], done[1])

    return finished


def open_source(
    source: Source, trust_pickle: bool = False, adapter: str | os.PathLike[str] | None = None
) -> Checkpoint:
    """A checkpoint for a path, a state dict or a module, with a LoRA adapter when given."""
    if isinstance(source, (Mapping, torch.nn.Module)):
        memory = MemoryCheckpoint(source, label=f"<{type(source).__name__}>")
        return (
            memory if adapter is None else open_adapter(adapter, memory, trust_pickle=trust_pickle)
        )
    return open_checkpoint(source, trust_pickle=trust_pickle, adapter=adapter)


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
        precision=options.precision,
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
    with open_source(source, options.trust_pickle, options.adapter) as checkpoint:
        path = checkpoint.path
        tensors = checkpoint.tensors()
        specs, skipped = plan(
            tensors,
            options.selection,
            randomize=options.randomize,
            config=checkpoint.config(),
            split=options.split,
            experts=options.experts,
        )
        # aliases are source tensors (a stack or fused tensor is compared whole), in file
        # order: the first name in the file is the canonical one
        used = {spec.source for spec in specs}
        aliases = find_aliases(checkpoint, [info for info in tensors if info.name in used])
        specs = [spec for spec in specs if spec.source not in aliases]
        timings["open"] = time.perf_counter() - start
        if not specs:
            raise InputError(path, _nothing_to_analyse(skipped))
        farms = options.farms_settings
        weigh = (lambda s: cost(s) + farms_cost(s, farms)) if farms else cost
        if on_plan:
            on_plan(sum(map(weigh, specs)), len(specs) * (2 if farms else 1))
        done = [0.0, 0]
        spectra = compute(
            checkpoint, specs, options, device, _reporter(progress, cost, done), timings
        )
        if farms:
            tic = time.perf_counter()
            spectra = _with_farms(checkpoint, specs, spectra, farms, device, progress, done)
            timings["farms"] = time.perf_counter() - tic
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
    rows = [_row(spectra[s.name], options) for s in interrupts.checked(specs)]
    details = details_frame(rows)
    if options.experts == "mean":
        details = expert_means(details)
    if fmt == AdapterCheckpoint.format:
        details.insert(1, "variant", details["name"].map(variant_of))
    details = with_flow(details)  # correlation flow needs every layer's alpha
    timings["fits"] = time.perf_counter() - tic
    summary = summarize(
        details,
        skipped,
        model=os.fspath(path),
        format=fmt,
        esd="eigenvalues of W^T W / N" if options.normalize else "eigenvalues of W^T W",
        normalize=options.normalize,
        conv_mode=options.selection.conv_mode,
        split=options.split,
        experts=options.experts,
        randomized=options.randomize,
        fix_fingers=options.fix_fingers,
        tail_tests=options.tail_tests,
        estimator=options.estimator_record(),
        seed=options.seed,
        device=device.type,
        precision=options.precision,
        spectralyzer_version=__version__,
    )
    notes = {s.source: s.note for s in specs if s.note}
    if notes:
        layout = {**layout, "notes": notes}
    if layout:
        summary["layout"] = layout
    if aliases:
        summary["aliases"] = aliases
    if "variant" in details:
        summary.update(_variants(details))
    timings["total"] = time.perf_counter() - start
    summary["timings"] = {stage: round(seconds, 3) for stage, seconds in timings.items()}
    return Analysis(details, summary, skipped, timings, spectra)


def _with_farms(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    spectra: dict[str, LayerSpectra],
    farms: FarmsSettings,
    device: torch.device,
    progress: OnProgress | None,
    done: list,
) -> dict[str, LayerSpectra]:
    """``spectra`` with the FARMS windows' ESD of every layer whose weights are finite."""
    finite = [s for s in specs if spectra[s.name].esd.finite]
    weigh = lambda s: farms_cost(s, farms)  # noqa: E731
    pooled = compute_farms_spectra(
        checkpoint, finite, farms, device=device, progress=_reporter(progress, weigh, done)
    )
    return {name: replace(ls, farms=pooled.get(name)) for name, ls in spectra.items()}


def _variants(details: pd.DataFrame) -> dict[str, Any]:
    """Rows per variant and each variant's own means: the model means mix base and merged."""
    groups = dict(tuple(details.groupby("variant", sort=False)))
    return {
        "variants": {v: len(rows) for v, rows in groups.items()},
        "means_by_variant": {
            v: {k: summarize(rows, [])[k] for k in SUMMARY_MEANS} for v, rows in groups.items()
        },
    }


def _row(spectra: LayerSpectra, options: AnalysisOptions) -> LayerMetrics:
    """One layer's metrics; a LoRA update's without the fits (:mod:`spectralyzer.low_rank`)."""
    spec = spectra.spec
    row = layer_metrics(
        spectra,
        scale=1.0 / spec.N if options.normalize else 1.0,
        fix_fingers=options.fix_fingers,
        tail_tests=options.tail_tests,
        estimator=options.fit_estimator,
        farms=options.farms_settings,
    )
    return low_rank_row(row) if spec.layer_type == "lora" else row


def analyze(
    source: Source,
    *,
    layers: str | None = None,
    exclude: str | None = None,
    types: tuple[str, ...] | None = None,
    roles: tuple[str, ...] | None = None,
    min_evals: int = 8,
    max_evals: int | None = 16384,
    conv_mode: str = "slices",
    split: bool = True,
    experts: str = "each",
    randomize: bool = False,
    seed: int = 0,
    normalize: bool = False,
    fix_fingers: bool = False,
    tail_tests: bool = False,
    device: str = "auto",
    trust_pickle: bool = False,
    threads: int | None = None,
    precision: str = "float64",
    adapter: str | os.PathLike[str] | None = None,
    **estimator: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-layer metrics (one row per analysed matrix) and the model summary.

    ``source`` is a checkpoint path (file, Hugging Face folder or PEFT adapter
    folder), a state dict or an ``nn.Module``; ``adapter``, a PEFT LoRA adapter
    folder to apply to it (rows of variants base, lora-delta and merged).  ``max_evals=0`` (or None) means no cap, as ``--max-evals 0``
    does; a bad value raises :class:`~spectralyzer.errors.OptionError` naming it.
    ``estimator``: the AnalysisOptions fields ``estimator``, ``hill_k``,
    ``xmin_peak_compat``, ``farms``, ``farms_size``, ``farms_windows``, ``farms_ratio``.
    ``roles`` selects by role or family (:mod:`spectralyzer.roles`); ``split=False``
    keeps fused q/k/v and gate/up tensors whole; ``experts`` is ``"each"``, ``"mean"``
    (a row per expert group) or ``"skip"`` (:mod:`spectralyzer.layouts`).

    >>> details, summary = analyze("model.safetensors")  # doctest: +SKIP
    """
    options = make_options(
        layers=layers,
        exclude=exclude,
        types=types,
        roles=roles,
        min_evals=min_evals,
        max_evals=max_evals,
        conv_mode=conv_mode,
        split=split,
        experts=experts,
        randomize=randomize,
        seed=seed,
        normalize=normalize,
        fix_fingers=fix_fingers,
        tail_tests=tail_tests,
        device=device,
        trust_pickle=trust_pickle,
        threads=threads,
        precision=precision,
        adapter=adapter,
        **estimator,
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
    roles: tuple[str, ...] | None = None,
    **rest: Any,
) -> AnalysisOptions:
    """AnalysisOptions from the flat keyword arguments of :func:`analyze` (validated)."""
    selection = Selection(layers, exclude, types, min_evals, max_evals, conv_mode, roles)
    return AnalysisOptions(selection=selection, **rest)


def summary_lines(summary: dict[str, Any], verbose: bool = False) -> list[str]:
    """The model summary in lines people read (not yet escaped: the path is the model's),
    ending with what was left out (:func:`~spectralyzer.listing.listing_lines`)."""
    lines = [
        f"model: {summary.get('model', '?')} ({summary.get('format', '?')})",
        f"layers analysed: {summary['num_layers']}, skipped: {summary['num_skipped']}, "
        f"fit failed (left out of means): {summary['num_fit_failed']}",
    ]
    if quantisation := summary.get("layout", {}).get("quantisation"):
        lines.append(f"quantisation: {quantisation}")
    if summary.get("num_fit_not_applicable"):
        lines[-1] += (
            f", fit not applicable (low-rank updates, left out of means): "
            f"{summary['num_fit_not_applicable']}"
        )
    if summary.get("variants"):
        lines.append("variants: " + ", ".join(f"{k} {v}" for k, v in summary["variants"].items()))
        by = [
            (k, m["alpha"])
            for k, m in summary["means_by_variant"].items()
            if m["alpha"] == m["alpha"]
        ]
        if by:
            lines.append("alpha by variant: " + ", ".join(f"{k} {number(a)}" for k, a in by))
    lines.append(
        "means: " + ", ".join(f"{k} {number(summary[k])}" for k in SUMMARY_MEANS if k in summary)
    )
    warnings = {k: v for k, v in summary["warnings"].items() if v}
    lines.append("warnings: " + (", ".join(f"{k} {v}" for k, v in warnings.items()) or "none"))
    lines.append("phases: " + ", ".join(f"{k} {v}" for k, v in summary["phases"].items()))
    lines.extend(layout_lines(summary))
    if summary.get("num_traps") is not None:
        lines.append(f"correlation traps: {summary['num_traps']}")
    if summary.get("estimator"):
        lines.append("estimator: " + estimator_text(summary["estimator"]))
    if summary.get("tail_laws"):
        laws = ", ".join(f"{k} {v}" for k, v in summary["tail_laws"].items())
        lines.append(f"tail laws (likelihood ratios, p < {TAIL_SIGNIFICANCE:g}): {laws}")
    return lines + listing_lines(summary, verbose)


def _nothing_to_analyse(skipped: list[Skipped]) -> str:
    if not skipped:
        return "no weight matrix to analyse (no tensor with 2 or more dimensions matched)"
    first = skipped[0]
    return (
        f"no analysable weight matrix ({len(skipped)} skipped; e.g. {first.name}: {first.reason})"
    )
