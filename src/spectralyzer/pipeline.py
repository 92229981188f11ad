"""The analysis pipeline: file -> tensors -> matrices -> ESDs -> metrics -> tables.

``analyze()`` is the product; the CLI, reports and the CI gate are front ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from . import __version__, interrupts
from .analysis_options import AnalysisOptions, make_options
from .analysis_result import Analysis, nothing_to_analyse, summary_lines  # noqa: F401 (re-exported)
from .engine import LayerSpectra, resolve_device, spectra_with
from .errors import InputError
from .farms import compute_farms_spectra, farms_cost
from .flow import with_flow
from .io import open_checkpoint
from .io.adapter import AdapterCheckpoint
from .io.aliases import find_aliases
from .io.base import Checkpoint
from .io.memory import MemoryCheckpoint
from .io.open import open_adapter
from .layers import LayerSpec, Skipped, plan
from .low_rank import low_rank_row
from .metrics import LayerMetrics, layer_metrics
from .tables import (
    SUMMARY_MEANS,
    details_frame,
    expert_means,
    summarize,
)
from .threads import torch_threads
from .variants import variant_of
from .windows import FarmsSettings

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


#: The default :data:`SpectraFn`: every ESD computed here, nothing cached.
local_spectra = spectra_with


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
            experts=options.expert_rows,
        )
        # aliases are source tensors (a stack or fused tensor is compared whole), in file
        # order: the first name in the file is the canonical one
        used = {spec.source for spec in specs}
        aliases = find_aliases(checkpoint, [info for info in tensors if info.name in used])
        specs = [spec for spec in specs if spec.source not in aliases]
        timings["open"] = time.perf_counter() - start
        if not specs:
            raise InputError(path, nothing_to_analyse(skipped))
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
            raise InputError(path, nothing_to_analyse(skipped))
    tic = time.perf_counter()
    rows = [_row(spectra[s.name], options) for s in interrupts.checked(specs)]
    details = details_frame(rows)
    if options.expert_rows == "mean":
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
        experts=options.expert_rows,
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
    expert_rows: str = "each",
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
    keeps fused q/k/v and gate/up tensors whole; ``expert_rows`` is ``"each"``, ``"mean"``
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
        expert_rows=expert_rows,
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
