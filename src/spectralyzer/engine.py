"""Batched eigenvalues of ``W^T W`` for every selected matrix (docs/theory.md section 1.5).

The ESD of a layer is the eigenvalues ``lambda_i = s_i^2`` of ``X = W^T W``
(not divided by N), pooled over its matrices.  Matrices of one shape are
stacked and decomposed in one batched call, on a GPU when there is one.

Accuracy.  The Gram matrix is formed and decomposed in float64 (narrower
weights are upcast, float64 weights kept).  Entries of float32 (or narrower)
weights multiply exactly in float64, so the only error is float64 rounding: every eigenvalue is within about ``M * eps64 * lambda_max``
(eps64 = 2.2e-16) of the exact one, i.e. 1e-8 relative for any eigenvalue above
``1e-5 lambda_max`` when ``M <= 4096`` (tested against ``numpy.linalg.svd``).
The randomised copies used for the correlation-trap check need only the top of
their spectrum (:mod:`spectralyzer.randomized`): a block Krylov space for a large
single matrix, the whole float64 spectrum otherwise (docs/theory.md section 3.8).

Threads: on the CPU, the eigensolver runs one share of a batch per thread
with torch's intra-op threads set to 1 for that call (restored afterwards).

Scaling.  Each matrix is divided by the power of two nearest above its largest
``|w|`` before its Gram matrix is formed, and the eigenvalues are multiplied
back by its square.  Dividing by a power of two is exact, so the numbers are
those of the unscaled product, but finite weights can no longer overflow (or
underflow) the Gram matrix: weights near 1e200 gave a ``LinAlgError``.  When
the eigenvalues themselves lie beyond the float64 range (``|w|`` above about
1e154) the layer's ESD is marked ``overflow`` (no eigenvalues), not fatal.

Memory: tensors are loaded one at a time (a tensor several matrices are cut
from, e.g. an expert stack, once, and held until its last matrix is done), in their stored dtype, and
converted to float64 in chunks of rows (``budget.CHUNK_ELEMENTS`` entries)
that are accumulated into the Gram matrix (``G += X_c^T X_c``), so a layer
costs its stored size plus two float64 Gram matrices (``G`` and the
eigensolver's copy) plus one chunk, instead of float32 and float64 copies of
the whole tensor (a 262 MB bf16 embedding took 2.4 GB; ``budget.matrix_need``
is the estimate ``layers.plan`` checks).  A batch holds at most
``batch_elements`` matrix entries (one tensor more when a single tensor is
larger), so peak memory is bounded by the largest layer, not the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import budget, interrupts, randomized
from .batching import Sources, batches_of
from .budget import CHUNK_ELEMENTS
from .choices import DEVICES
from .errors import OptionError
from .fit.traps import ShuffledTop
from .io.base import Checkpoint
from .layers import LayerSpec
from .prefetch import PREFETCH_DEPTH, loaded
from .randomized import full_top, krylov_pays, shuffled_layer, unscaled
from .shuffle import SHUFFLED_DTYPES, Shuffler
from .threads import in_shares, one_thread_each


@dataclass(frozen=True)
class ESD:
    """Eigenvalues of one layer, ascending, pooled over its matrices."""

    evals: np.ndarray  # float64, shape (num_slices * M,), >= 0
    finite: bool = True  # False when the weights held NaN or Inf (evals are then empty)
    overflow: bool = False  # eigenvalues beyond the float64 range (finite False, evals empty)
    eps: float = float(torch.finfo(torch.float64).eps)  # unit roundoff of the solver's dtype


@dataclass(frozen=True)
class LayerSpectra:
    """The ESD of a layer and, when asked for, the ESD of its randomised copy."""

    spec: LayerSpec
    esd: ESD
    randomized: ShuffledTop | None = None  # the top of its shuffled copy's spectrum
    farms: ESD | None = None  # pooled ESD of the FARMS windows (spectralyzer.farms), when asked


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device not in DEVICES:
        raise OptionError("device", f"must be one of {DEVICES}, not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", "cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def gram_eigenvalues(
    stack: torch.Tensor, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
    """Eigenvalues of ``W^T W`` for a finite ``(B, N, M)`` stack, ascending, clipped at 0.

    The Gram matrices are accumulated in ``dtype`` on ``device`` (default CPU) over
    chunks of rows, each matrix scaled by a power of two (module docstring);
    eigenvalues beyond the float64 range come back as ``inf``.
    """
    scale = _Scale.of(stack)
    gram = torch.zeros((stack.shape[0], stack.shape[2], stack.shape[2]), dtype=dtype, device=device)
    accumulate_gram(gram, stack, scale.exponents)
    return torch.from_numpy(scale.unscale(symmetric_eigenvalues(gram)))


def symmetric_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a ``(B, M, M)`` batch of Gram matrices, ascending, clipped at 0.

    Rounding can make eigenvalues of a positive semi-definite Gram matrix
    slightly negative; they are set to 0.
    """
    if gram.device.type != "cpu" or gram.shape[0] == 1:
        return torch.linalg.eigvalsh(gram).clamp_min_(0)
    # LAPACK's eigensolver gains little from threads on one matrix of a few
    # hundred rows: give each CPU thread a share of the batch instead
    # (1.8x faster on 2 cores for a batch of 384 x 384 matrices)
    chunks = gram.chunk(torch.get_num_threads())
    return torch.cat(one_thread_each(torch.linalg.eigvalsh, chunks)).clamp_min_(0)


def row_chunks(stack: torch.Tensor, elements: int | None = None) -> Iterator[torch.Tensor]:
    """Views of ``stack[:, rows, :]`` of about ``elements`` (:data:`CHUNK_ELEMENTS`) entries.

    At least one row each; a stack of at most that many entries is one chunk.
    """
    elements = CHUNK_ELEMENTS if elements is None else elements
    rows = max(1, elements // max(1, stack.shape[0] * stack.shape[2]))
    for start in range(0, stack.shape[1], rows):
        yield stack[:, start : start + rows]


def accumulate_gram(gram: torch.Tensor, stack: torch.Tensor, exponents: torch.Tensor) -> None:
    """``gram += (X / 2^e)^T (X / 2^e)`` for each matrix ``X`` of ``stack`` and its exponent ``e``.

    Converts one chunk of rows at a time (to float64, scaled exactly, then to
    ``gram``'s dtype and device), never the whole stack; ``stack`` is not modified.
    """
    factors = torch.pow(2.0, -exponents.double()).to(gram.device).view(-1, 1, 1)
    for chunk in row_chunks(stack):
        interrupts.check()  # a 32000 x 4096 embedding is minutes of chunks on two cores
        x = chunk.to(device=gram.device, dtype=torch.float64)
        x = x * factors if x is chunk else x.mul_(factors)  # one temporary, input untouched
        x = x.to(gram.dtype)
        gram.baddbmm_(x.mT, x)


@dataclass(frozen=True)
class _Scale:
    """Per-matrix powers of two that bring the largest ``|w|`` of each matrix into [0.5, 1)."""

    exponents: torch.Tensor  # int64, shape (B,): matrix b is divided by 2^exponents[b]
    peak: float  # largest |w| of the whole stack; NaN or inf when it is not finite

    @classmethod
    def of(cls, stack: torch.Tensor) -> _Scale:
        """Reads the stack once, chunk by chunk (the largest |w| propagates NaN)."""
        peaks = torch.zeros(stack.shape[0], dtype=torch.float64)
        for chunk in row_chunks(stack):
            if chunk.dtype not in SHUFFLED_DTYPES:  # float8: no max kernels
                chunk = chunk.float()
            top, bottom = chunk.amax(dim=(1, 2)), chunk.amin(dim=(1, 2))  # both propagate NaN
            peaks = torch.maximum(peaks, torch.maximum(top, -bottom).double().cpu())
        finite = torch.isfinite(peaks)
        exponents = torch.frexp(torch.where(finite, peaks, 0.0)).exponent.long()
        # 2^-e stays representable (possibly subnormal, still exact) over this range
        return cls(exponents.clamp_(-1023, 1024), float(peaks.max()))

    @property
    def finite(self) -> bool:
        return math.isfinite(self.peak)

    @property
    def common(self) -> int:
        """One exponent for every matrix: for entries mixed across matrices (a shuffled copy)."""
        return int(self.exponents.max())

    def unscale(self, evals: torch.Tensor) -> np.ndarray:
        """``(B, M)`` eigenvalues of scaled matrices -> float64 eigenvalues of the originals."""
        with np.errstate(over="ignore"):
            return np.ldexp(evals.double().cpu().numpy(), 2 * self.exponents.numpy()[:, None])


def _split(evals: torch.Tensor, specs: list[LayerSpec], scales: list[_Scale]) -> list[ESD]:
    """Cut a ``(B, M)`` block of scaled eigenvalues back into one sorted ESD per layer."""
    eps = float(torch.finfo(evals.dtype).eps)
    out, start = [], 0
    for spec, scale in zip(specs, scales, strict=True):
        block = evals[start : start + spec.num_slices]
        start += spec.num_slices
        if not scale.finite:
            out.append(ESD(np.empty(0), finite=False))
            continue
        values = scale.unscale(block).reshape(-1)
        if np.isfinite(values).all():
            out.append(ESD(np.sort(values), eps=eps))
        else:
            out.append(ESD(np.empty(0), finite=False, overflow=True))
    return out


def compute_spectra(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    *,
    device: torch.device | None = None,
    randomize: bool = False,
    seed: int = 0,
    batch_elements: int = budget.BATCH_ENTRIES,
    progress: Callable[[list[LayerSpec]], None] | None = None,
    timings: dict[str, float] | None = None,
    precision: str = "float64",
) -> dict[str, LayerSpectra]:
    """ESDs (and randomised ESDs) of every spec, keyed by its name (the row name).

    Each spec says how its tensor becomes matrices (``LayerSpec.view``, chosen by
    :func:`~spectralyzer.layers.plan`).  ``timings``, when given, accumulates seconds spent per stage
    (``load``, ``eigenvalues``, ``randomize``); ``progress``, when given, is called with the
    specs of each batch once their spectra are done.
    """
    device = device or torch.device("cpu")
    clock = _Clock(timings)
    batches = list(batches_of(specs, batch_elements))
    last_use = {shape: i for i, batch in enumerate(batches) for shape in map(_stack_shape, batch)}
    sources = Sources(checkpoint, specs)
    return _spectra_of_batches(
        sources,
        batches,
        device,
        randomize,
        Shuffler(seed, device),
        last_use,
        clock,
        progress,
        _GRAM_DTYPES[precision],
    )


def spectra_with(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    options: Any,
    device: torch.device,
    finished: Callable[[list[LayerSpec]], None] | None,
    timings: dict[str, float],
) -> dict[str, LayerSpectra]:
    """:func:`compute_spectra` with the settings of an analysis' ``options`` (its
    ``randomize``, ``seed`` and ``precision``): the pipeline's and the cache's one call."""
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


#: Gram products and eigensolver per ``--precision`` (docs/theory.md section 1.5)
_GRAM_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _stack_shape(spec: LayerSpec) -> tuple[int, int, int]:
    return (spec.num_slices, spec.N, spec.M)


def _spectra_of_batches(
    sources: Sources,
    batches: list[list[LayerSpec]],
    device: torch.device,
    randomize: bool,
    shuffle: Shuffler,
    last_use: dict[tuple[int, int, int], int],
    clock: _Clock,
    progress: Callable[[list[LayerSpec]], None] | None,
    gram_dtype: torch.dtype = torch.float64,
) -> dict[str, LayerSpectra]:
    result: dict[str, LayerSpectra] = {}
    depth = PREFETCH_DEPTH if device.type == "cuda" else 0
    stacks = loaded([spec for batch in batches for spec in batch], sources, device, depth)
    for index, batch in enumerate(batches):
        interrupts.check()
        matrices, size = sum(spec.num_slices for spec in batch), batch[0].M
        grams = torch.zeros((matrices, size, size), dtype=gram_dtype, device=device)
        krylov = randomize and krylov_pays(batch[0].num_slices, size)
        # a CPU batch's Krylov spaces run after its Gram products, a share per thread, one torch
        # thread each (threads.in_shares); the shuffled copies wait for them meanwhile
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        later = krylov and len(batch) > 1 and threads > 1
        # permutations are drawn beside the Gram products, a batch ahead up to AHEAD_ENTRIES
        # (counted by budget.matrix_need); larger CPU copies move instead (Shuffler.moves)
        following = map(_stack_shape, batches[index + 1] if index + 1 < len(batches) else [])
        ahead = [shape for shape in following if math.prod(shape) <= budget.AHEAD_ENTRIES]
        for shape in dict.fromkeys([*map(_stack_shape, batch), *ahead]) if randomize else ():
            shuffle.prefetch(shape)
        full = randomized.FULL_DTYPE
        shuffled = torch.zeros_like(grams, dtype=full) if randomize and not krylov else None
        scales, tops = [], []
        for rows in _rows(batch):
            stack = next(stacks)
            clock.lap("load")
            scales.append(_add_layer(stack, grams[rows], clock))
            if randomize:
                tops.append(
                    _randomized(stack, scales[-1], grams[rows], shuffle, shuffled, rows, later)
                )
                clock.lap("randomize")
            del stack
        if later:  # a share of the batch's Krylov spaces per thread (threads.in_shares)
            pending = [i for i, top in enumerate(tops) if callable(top)]
            for i, top in zip(pending, in_shares([tops[i] for i in pending]), strict=True):
                tops[i] = top
            clock.lap("randomize")
        # on a worker the main thread can leave on SIGTERM/Ctrl-C (minutes for 8192 x 8192)
        esds = _split(interrupts.abandonable(symmetric_eigenvalues, grams), batch, scales)
        del grams
        clock.lap("eigenvalues")
        if shuffled is not None:
            evals = interrupts.abandonable(symmetric_eigenvalues, shuffled).double().cpu().numpy()
            parts = zip(tops, _rows(batch), scales, strict=True)
            tops = [_full(top, evals[rows], scale) for top, rows, scale in parts]
            del shuffled
            clock.lap("randomize")
        for spec, esd, rand in zip(batch, esds, tops or [None] * len(batch), strict=True):
            result[spec.name] = LayerSpectra(spec, esd, rand)
            if last_use[_stack_shape(spec)] == index:
                shuffle.release(_stack_shape(spec))
        if progress:
            progress(batch)
    return result


def _rows(batch: list[LayerSpec]) -> Iterator[slice]:
    start = 0
    for spec in batch:
        yield slice(start, start + spec.num_slices)
        start += spec.num_slices


def _randomized(
    stack: torch.Tensor,
    scale: _Scale,
    grams: torch.Tensor,
    shuffle: Shuffler,
    shuffled: torch.Tensor | None,
    rows: slice,
    later: bool = False,
) -> ShuffledTop | tuple[float, int] | Callable[[], ShuffledTop]:
    """The top of a layer's shuffled copy (or its pending sums, see :func:`shuffled_layer`);
    ``grams`` are the layer's own (scaled) Gram matrices, whose traces give ``||W||_F^2``."""
    if not scale.finite:
        return ShuffledTop.undefined(stack.shape[0] * stack.shape[2])
    common = scale.common
    traces = grams.diagonal(dim1=1, dim2=2).sum(dim=1).double().cpu().numpy()
    total = float(np.ldexp(traces, 2 * (scale.exponents.numpy() - common)).sum())
    gram = shuffled[rows] if shuffled is not None else None
    return shuffled_layer(stack, common, total, shuffle, gram, later)


def _full(top: ShuffledTop | tuple[float, int], evals: np.ndarray, scale: _Scale) -> ShuffledTop:
    """A pending layer's whole shuffled spectrum from the batch's ``eigvalsh``."""
    if isinstance(top, ShuffledTop):
        return top
    total, count = top
    return unscaled(full_top(evals.reshape(-1), total, count, evals.shape[-1]), scale.common)


def _add_layer(stack: torch.Tensor, grams: torch.Tensor, clock: _Clock) -> _Scale:
    """Add the (scaled) Gram matrices of one layer's ``stack`` into ``grams``.

    A layer with non-finite weights adds nothing (its Gram matrices stay 0).
    """
    scale = _Scale.of(stack)
    if scale.finite:
        accumulate_gram(grams, stack, scale.exponents)
        clock.lap("eigenvalues")
    return scale


class _Clock:
    """Accumulates wall time between laps into a dict of stage -> seconds."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[stage] = self.into.get(stage, 0.0) + now - self.last
        self.last = now
