"""Batched eigenvalues of ``W^T W`` for every selected matrix (THEORY.md section 1).

The ESD of a layer is the eigenvalues ``lambda_i = s_i^2`` of ``X = W^T W``
(not divided by N), pooled over its matrices.  Matrices of one shape are
stacked and decomposed in one batched call, on a GPU when there is one.

Accuracy.  The Gram matrix is formed and decomposed in float64 (narrower
weights are upcast, float64 weights kept).  Entries of float32 (or narrower)
weights multiply exactly in float64, so the only error is float64 rounding: every eigenvalue is within about ``M * eps64 * lambda_max``
(eps64 = 2.2e-16) of the exact one, i.e. 1e-8 relative for any eigenvalue above
``1e-5 lambda_max`` when ``M <= 4096`` (tested against ``numpy.linalg.svd``).
The randomised copies used for the correlation-trap check only need to be
compared with a Marchenko-Pastur edge known to a few percent, so they are
computed in float32 (relative error about ``M * 1e-7`` of ``lambda_max``).

Threads: on the CPU, the eigensolver runs one share of a batch per thread
with torch's intra-op threads set to 1 for that call (restored afterwards).

Memory: tensors are loaded one at a time; a batch holds at most
``batch_elements`` matrix entries (one tensor more when a single tensor is
larger), so peak memory is bounded by the largest layer, not the model.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from .errors import OptionError
from .io.base import Checkpoint
from .layers import LayerSpec, to_matrices

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ESD:
    """Eigenvalues of one layer, ascending, pooled over its matrices."""

    evals: np.ndarray  # float64, shape (num_slices * M,), >= 0
    finite: bool = True  # False when the weights held NaN or Inf (evals are then empty)


@dataclass(frozen=True)
class LayerSpectra:
    """The ESD of a layer and, when asked for, the ESD of its randomised copy."""

    spec: LayerSpec
    esd: ESD
    randomized: ESD | None = None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device not in DEVICES:
        raise OptionError("--device", f"must be one of {DEVICES}, not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device", "cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def gram_eigenvalues(stack: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Eigenvalues of ``W^T W`` for a ``(B, N, M)`` stack, ascending, clipped at 0.

    Rounding can make eigenvalues of a positive semi-definite Gram matrix
    slightly negative; they are set to 0.
    """
    x = stack.to(dtype)
    gram = x.mT @ x
    if gram.device.type != "cpu" or gram.shape[0] == 1:
        return torch.linalg.eigvalsh(gram).clamp_min_(0)
    # LAPACK's eigensolver gains little from threads on one matrix of a few
    # hundred rows: give each CPU thread a share of the batch instead
    # (1.8x faster on 2 cores for a batch of 384 x 384 matrices)
    chunks = gram.chunk(torch.get_num_threads())
    return torch.cat(_one_thread_each(torch.linalg.eigvalsh, chunks)).clamp_min_(0)


def _one_thread_each(fn: Callable[[torch.Tensor], torch.Tensor], items: list) -> list:
    """``[fn(item) for item in items]`` on a pool of threads, torch intra-op threads set to 1."""
    if len(items) < 2:
        return [fn(item) for item in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


class Shuffler:
    """Uniformly random permutations of matrix entries, one per stack shape, seeded.

    A layer's randomised copy is its entries in the order of a uniform random
    permutation drawn from ``seed`` and the layer's ``(slices, N, M)`` shape, so
    it does not depend on batching, on the order of layers or on other layers.
    Layers of one shape share the permutation: each copy is still uniformly
    shuffled (its ESD has the same distribution as with a fresh permutation),
    and a model's many same-shaped layers cost one permutation instead of one
    each (drawing a permutation costs more than the eigenvalues of the matrix).
    Cheaper structured shuffles (independent cyclic shifts of rows and columns)
    were measured and rejected: on matrices with sorted or one-signed entries
    their ESDs differ from a uniform permutation's (KS distance up to 0.2).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._orders: dict[tuple[int, ...], torch.Tensor] = {}

    def order(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The permutation of ``prod(shape)`` entries for this shape."""
        if shape not in self._orders:
            size = prod(shape)
            key = zlib.crc32(repr(tuple(shape)).encode())
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + key) % 2**63)
            dtype = torch.int32 if size < 2**31 else torch.int64
            self._orders[shape] = torch.randperm(size, generator=generator, dtype=dtype)
        return self._orders[shape]

    def release(self, shape: tuple[int, ...]) -> None:
        """Forget the permutation of a shape that will not come again (bounds memory)."""
        self._orders.pop(shape, None)

    def __call__(self, stack: torch.Tensor) -> torch.Tensor:
        """The stack with its entries permuted (one permutation across its slices)."""
        order = self.order(tuple(stack.shape)).to(stack.device)
        return stack.reshape(-1).index_select(0, order).reshape(stack.shape)


def _batches(specs: list[LayerSpec], batch_elements: int) -> Iterable[list[LayerSpec]]:
    """Groups of same-shaped layers holding at most ``batch_elements`` entries each."""
    by_shape: dict[tuple[int, int], list[LayerSpec]] = defaultdict(list)
    for spec in specs:
        by_shape[(spec.N, spec.M)].append(spec)
    for group in by_shape.values():
        batch: list[LayerSpec] = []
        size = 0
        for spec in group:
            n = spec.num_slices * spec.N * spec.M
            if batch and size + n > batch_elements:
                yield batch
                batch, size = [], 0
            batch.append(spec)
            size += n
        if batch:
            yield batch


def _split(evals: torch.Tensor, specs: list[LayerSpec], finite: list[bool]) -> list[ESD]:
    """Cut a ``(B, M)`` block of eigenvalues back into one sorted ESD per layer."""
    out, start = [], 0
    for spec, ok in zip(specs, finite, strict=True):
        block = evals[start : start + spec.num_slices]
        start += spec.num_slices
        if ok:
            values = np.sort(block.reshape(-1).double().cpu().numpy())
            out.append(ESD(values))
        else:
            out.append(ESD(np.empty(0), finite=False))
    return out


def compute_spectra(
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    *,
    conv_mode: str = "slices",
    device: torch.device | None = None,
    randomize: bool = False,
    seed: int = 0,
    batch_elements: int = 2**25,
    progress: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, LayerSpectra]:
    """ESDs (and randomised ESDs) of every spec, keyed by parameter name.

    ``timings``, when given, accumulates seconds spent per stage
    (``load``, ``eigenvalues``, ``randomize``).
    """
    device = device or torch.device("cpu")
    clock = _Clock(timings)
    batches = list(_batches(specs, batch_elements))
    last_use = {shape: i for i, batch in enumerate(batches) for shape in map(_stack_shape, batch)}
    return _spectra_of_batches(
        checkpoint, batches, conv_mode, device, randomize, Shuffler(seed), last_use, clock, progress
    )


def _stack_shape(spec: LayerSpec) -> tuple[int, int, int]:
    return (spec.num_slices, spec.N, spec.M)


def _spectra_of_batches(
    checkpoint: Checkpoint,
    batches: list[list[LayerSpec]],
    conv_mode: str,
    device: torch.device,
    randomize: bool,
    shuffle: Shuffler,
    last_use: dict[tuple[int, int, int], int],
    clock: _Clock,
    progress: Callable[[int], None] | None,
) -> dict[str, LayerSpectra]:
    result: dict[str, LayerSpectra] = {}
    for index, batch in enumerate(batches):
        stacks, finite = [], []
        for spec in batch:
            tensor = checkpoint.load(spec.name)
            tensor = tensor if tensor.dtype == torch.float64 else tensor.float()
            stack = to_matrices(tensor, spec, conv_mode)
            ok = bool(torch.isfinite(stack).all())
            stacks.append(stack if ok else torch.zeros_like(stack))
            finite.append(ok)
        clock.lap("load")
        block = _concat(stacks, torch.float64, device)
        esds = _split(gram_eigenvalues(block), batch, finite)
        clock.lap("eigenvalues")
        rands: list[ESD | None] = [None] * len(batch)
        if randomize:
            block = _concat([shuffle(s) for s in stacks], torch.float32, device)
            rands = list(_split(gram_eigenvalues(block, torch.float32), batch, finite))
            clock.lap("randomize")
        del stacks, block
        for spec, esd, rand in zip(batch, esds, rands, strict=True):
            result[spec.name] = LayerSpectra(spec, esd, rand)
            if last_use[_stack_shape(spec)] == index:
                shuffle.release(_stack_shape(spec))
        if progress:
            progress(len(batch))
    return result


def _concat(stacks: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The stacks as one batch of ``dtype`` on ``device``, converted while copied (one copy)."""
    if len(stacks) == 1:
        return stacks[0].to(device=device, dtype=dtype)
    total = sum(s.shape[0] for s in stacks)
    block = torch.empty((total, *stacks[0].shape[1:]), dtype=dtype, device=device)
    start = 0
    for stack in stacks:
        block[start : start + stack.shape[0]].copy_(stack)
        start += stack.shape[0]
    return block


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
