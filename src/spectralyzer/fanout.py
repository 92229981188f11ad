"""``--workers``, ``--ray`` and ``--cache``: analyses spread over workers, reusing cached ESDs.

Units of work: one checkpoint for ``compare``, ``diff`` and ``gate``; for
``analyze``, groups of matrices of one checkpoint (about four units per worker,
of equal :func:`~spectralyzer.pipeline.cost`).  A worker is sent the checkpoint's
path, the options and the layer specs -- never tensors: it opens the checkpoint
itself and reads each tensor by name (a safetensors tensor by its offsets in the
shard).  What comes back is eigenvalues (``M`` numbers per matrix) or a whole
:class:`~spectralyzer.pipeline.Analysis`; the main process does the fits, so the
tables are those of the serial run.

A unit that fails is retried once (:mod:`spectralyzer.workers`; an attempt lost
because another unit's local worker died does not count); if it fails again the
others still finish, and the failure is reported, never hidden: the
layers of a failed ``analyze`` unit are listed as skipped with the error, a
failed checkpoint of ``compare`` is left out of the table with a note, ``gate``
and ``diff`` (which need both models) give no verdict; and the command then
exits 2 (:meth:`FanOut.check`) after writing what it has.  A rerun analyses only
what is missing: finished work is in the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import Cache, cached_spectra, default_folder, groups
from .engine import LayerSpectra, resolve_device
from .errors import OptionError, SpectralyzerError
from .io.memory import MemoryCheckpoint
from .layers import LayerSpec, Skipped
from .outputs import check_file_target, resolve_inputs
from .pipeline import (
    Analysis,
    AnalysisOptions,
    OnPlan,
    OnProgress,
    Source,
    SpectraFn,
    cost,
    local_spectra,
    open_source,
    run_analysis,
)
from .threads import MAX_THREADS, torch_threads
from .workers import Failure, LocalPool, Pool, threads_per_worker

UNITS_PER_WORKER = 4  # analyze: units per worker, so a slow one does not hold up the end


@dataclass(frozen=True)
class Job:
    """What a worker is sent: where to read, how, and (for analyze) which layers."""

    source: Source
    options: AnalysisOptions
    cache: str | None  # cache folder, shared by every worker
    specs: tuple[LayerSpec, ...] = ()


def spectra_fn(cache: str | os.PathLike[str] | None, options: AnalysisOptions) -> SpectraFn:
    """The pipeline's ESD step: through the cache in ``cache``, or none."""
    if cache is None:
        return local_spectra
    return functools.partial(cached_spectra, Cache(cache, options))


def analyse_checkpoint(job: Job) -> Analysis:
    """A worker's unit for compare/diff/gate: one whole checkpoint."""
    return run_analysis(job.source, job.options, spectra=spectra_fn(job.cache, job.options))


def layer_spectra(job: Job) -> dict[str, LayerSpectra]:
    """A worker's unit for analyze: the ESDs of ``job.specs``, read from the checkpoint here."""
    options = job.options
    with torch_threads(options.threads), open_source(job.source, options.trust_pickle) as ckpt:
        compute = spectra_fn(job.cache, options)
        device = resolve_device(options.device)
        return dict(compute(ckpt, list(job.specs), options, device, None, {}))


def split(specs: list[LayerSpec], workers: int) -> list[list[LayerSpec]]:
    """Units of about ``total cost / (UNITS_PER_WORKER * workers)``, same shapes together."""
    target = sum(map(cost, specs)) / (UNITS_PER_WORKER * max(1, workers))
    units: list[list[LayerSpec]] = [[]]
    spent = 0.0
    for group in groups(specs):
        for spec in group:
            if units[-1] and spent >= target:
                units.append([])
                spent = 0.0
            units[-1].append(spec)
            spent += cost(spec)
    return [unit for unit in units if unit]


class FanOut:
    """The pool (None: this process) and the cache (None: off) of one command's run.

    :meth:`runner` is the :data:`~spectralyzer.pipeline.Runner` of compare/diff/gate,
    :meth:`spectra` the :data:`~spectralyzer.pipeline.SpectraFn` of analyze;
    :attr:`failures` collects what failed twice, :meth:`check` reports it.
    """

    def __init__(self, pool: Pool | None = None, cache: str | os.PathLike[str] | None = None):
        self.pool = pool
        self.cache = None if cache is None else os.fspath(cache)
        self.failures: list[Failure] = []

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()

    def _job(self, source: Source, options: AnalysisOptions, specs: Sequence = ()) -> Job:
        threads = getattr(self.pool, "threads", options.threads)
        return Job(source, dataclasses.replace(options, threads=threads), self.cache, tuple(specs))

    def runner(
        self,
        sources: Sequence[Source],
        options: AnalysisOptions,
        on_plan: OnPlan | None = None,
        progress: OnProgress | None = None,
    ) -> list[Analysis | Failure]:
        """One Analysis per source, in order; a :class:`Failure` where one failed twice."""
        if self.pool is None:
            compute = spectra_fn(self.cache, options)
            return [run_analysis(s, options, on_plan=on_plan, progress=progress, spectra=compute)
                    for s in sources]  # fmt: skip

        def done(index: int, outcome: Any) -> None:
            if isinstance(outcome, Analysis):
                work = [layer.spec for layer in outcome.spectra.values()]
                total = sum(map(cost, work))
                if on_plan:
                    on_plan(total, len(work))
                if progress:
                    progress(total, len(work))

        jobs = [self._job(source, options) for source in sources]
        results = self.pool.run(analyse_checkpoint, jobs, list(map(_name, sources)), done)
        self.failures += [r for r in results if isinstance(r, Failure)]
        return results

    def strict_runner(self, sources: Sequence[Source], *args: Any) -> list[Analysis]:
        """:meth:`runner` for commands that need every model (diff, gate): raises after the
        others finished when one failed."""
        results = self.runner(sources, *args)
        self.check()
        return results

    def spectra(
        self,
        checkpoint: Any,
        specs: list[LayerSpec],
        options: AnalysisOptions,
        device: torch.device,
        finished: Callable[[list[LayerSpec]], None] | None,
        timings: dict[str, float],
    ) -> dict[str, LayerSpectra | Skipped]:
        """The ESDs of ``specs``, unit by unit on the pool; a failed unit's layers as Skipped."""
        if self.pool is None or isinstance(checkpoint, MemoryCheckpoint):
            compute = spectra_fn(self.cache, options)
            return dict(compute(checkpoint, specs, options, device, finished, timings))
        start = time.perf_counter()
        units = split(specs, self.pool.workers)
        jobs = [self._job(checkpoint.path, options, unit) for unit in units]
        names = [f"{checkpoint.path}: {u[0].name} .. {u[-1].name}" for u in units]

        def done(index: int, outcome: Any) -> None:
            if finished and not isinstance(outcome, Failure):
                finished(units[index])

        out: dict[str, LayerSpectra | Skipped] = {}
        for unit, result in zip(
            units, self.pool.run(layer_spectra, jobs, names, done), strict=True
        ):
            if isinstance(result, Failure):
                self.failures.append(result)
                reason = f"not analysed: failed twice on a worker ({result.error})"
                out.update({s.name: Skipped(s.name, s.shape, reason) for s in unit})
            else:
                out.update(result)
        timings["workers"] = time.perf_counter() - start
        return out

    def check(self) -> None:
        """Raise (exit 2 on the command line) when anything failed twice; the output
        written before says what was analysed."""
        if not self.failures:
            return
        listed = "; ".join(map(str, self.failures[:3]))
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        raise SpectralyzerError(
            f"{len(self.failures)} unit(s) not analysed after a retry: {listed}{more}; "
            "the output leaves them out; rerun to retry them (finished work is cached)"
        )


def _name(source: Source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def make_fanout(
    workers: int | None = None,
    ray: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    threads: int | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> FanOut:
    """The fan-out of ``--workers``/``--ray``/``--cache``/``--no-cache``.

    ``workers`` None (and no ``ray``): this process.  ``ray``: ``"local"`` starts a
    cluster of ``workers`` (default: every core) CPUs for the run; ``"auto"`` or an
    address joins an existing one.  The cache is on by default, in
    :func:`~spectralyzer.cache.default_folder`; never in or over one of ``inputs`` (the
    tool does not write into its inputs).
    """
    if workers is not None and (isinstance(workers, bool) or not 1 <= workers <= MAX_THREADS):
        raise OptionError("workers", f"must be from 1 to {MAX_THREADS}, not {workers!r}")
    folder = (Path(cache) if cache else default_folder()) if use_cache else None
    if folder is not None and inputs:
        check_file_target(folder, resolve_inputs(inputs))
    if ray is not None:
        from .ray_runner import RayPool

        pool: Pool | None = RayPool(ray, workers, threads)
    elif workers is not None:
        pool = LocalPool(workers, threads_per_worker(workers, threads))
    else:
        pool = None
    return FanOut(pool, folder)
