"""Uniformly random shuffles of matrix entries for the correlation-trap check
(docs/theory.md section 3.8)."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from math import prod

import numpy as np
import torch


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
        self._drawing: dict[tuple[int, ...], Future[torch.Tensor]] = {}
        self._last: Future[torch.Tensor] | None = None  # the latest drawing asked for

    def order(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The permutation of ``prod(shape)`` entries for this shape."""
        if shape in self._drawing:
            self._orders[shape] = self._drawing.pop(shape).result()
        if shape not in self._orders:
            self._orders[shape] = self._draw(shape)
        return self._orders[shape]

    def prefetch(self, shape: tuple[int, ...]) -> None:
        """Start drawing the permutation of ``shape`` on a background thread, after the
        ones asked for before (one drawing at a time, in the order of use).

        ``torch.randperm`` is one thread bound by memory latency (34 ns an entry at 131M
        entries); beside the two-thread float64 Gram product of the same layer it cost
        2.4 s less on 2 cores than one after the other (4.5 s + 6.0 s, measured).
        """
        if shape not in self._orders and shape not in self._drawing:
            future: Future[torch.Tensor] = Future()
            after, self._last = self._last, future
            thread = threading.Thread(
                target=_fulfil, args=(future, self._draw_after, after, shape), daemon=True
            )
            thread.start()
            self._drawing[shape] = future

    def _draw_after(self, before: Future | None, shape: tuple[int, ...]) -> torch.Tensor:
        if before is not None:
            wait([before])  # its failure is raised to whoever asks for its shape
        return self._draw(shape)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        key = zlib.crc32(repr(tuple(shape)).encode())
        return uniform_permutation(prod(shape), (self.seed * 1_000_003 + key) % 2**63)

    def release(self, shape: tuple[int, ...]) -> None:
        """Forget the permutation of a shape that will not come again (bounds memory)."""
        self._orders.pop(shape, None)
        self._drawing.pop(shape, None)

    def __call__(
        self, stack: torch.Tensor, dtype: torch.dtype | None = None, factor: float = 1.0
    ) -> torch.Tensor:
        """The stack with its entries permuted (one permutation across its slices), in
        ``dtype`` (default its own) and multiplied by ``factor`` (a power of two, exact).

        Gathered in chunks straight into the result, so the only full-size allocation is
        the result; the product is taken in the wider of the two dtypes (float64 weights
        near 1e100 scaled down before they become float32).  On the CPU the chunks are
        shared among ``torch.get_num_threads()`` threads: ``index_select`` is one thread
        bound by memory latency (a 32000 x 1024 bf16 gather: 345 ms on one thread,
        161 ms on two, measured on 2 cores).
        """
        shape = tuple(stack.shape)
        order = self.order(shape)
        if order.device != stack.device:  # moved once per shape, kept on the GPU
            order = self._orders[shape] = order.to(stack.device)
        if stack.dtype not in SHUFFLED_DTYPES:  # e.g. float8: index_select lacks kernels
            stack = stack.float()
        flat = stack.reshape(-1)
        dtype = dtype or flat.dtype
        wide = flat.element_size() > torch.empty(0, dtype=dtype).element_size()
        out = torch.empty(flat.numel(), dtype=dtype, device=flat.device)

        def gather(span: tuple[int, int]) -> None:
            index, into = order[span[0] : span[1]], out[span[0] : span[1]]
            if flat.dtype == dtype:
                torch.index_select(flat, 0, index, out=into)
            else:
                part = flat.index_select(0, index)
                into.copy_(part.mul_(factor) if wide and factor != 1.0 else part)

        threads = torch.get_num_threads() if flat.device.type == "cpu" else 1
        if threads < 2 or flat.numel() < 2 * _GATHER_MIN:
            spans = _spans(flat.numel(), _GATHER_CHUNK)
            for span in spans:
                gather(span)
        else:
            parts = threads * -(-flat.numel() // (threads * _GATHER_CHUNK))  # a share each
            spans = _spans(flat.numel(), -(-flat.numel() // parts))
            with ThreadPoolExecutor(min(threads, len(spans))) as pool:
                list(pool.map(gather, spans))
        if factor != 1.0 and not wide:
            out.mul_(factor)
        return out.reshape(shape)


def uniform_permutation(size: int, seed: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(size)`` drawn from ``seed`` (int32 below 2^31).

    Up to :data:`SPLIT_ENTRIES` entries it is ``torch.randperm``, a Fisher-Yates shuffle.
    Above, Fisher-Yates swaps across an array larger than the caches (30 ns an entry at
    32.8M entries, against 4 ns at 131K) and the permutation is drawn in two levels
    (Rao 1961, Sandelius 1962; docs/theory.md section 3.8): every index goes to one of
    :data:`BUCKETS` buckets uniformly at random, the buckets are laid end to end (each
    in index order: a stable counting sort), and each bucket is shuffled by Fisher-Yates
    in cache.  Given the buckets' contents, every arrangement of each is equally likely,
    so every permutation is (the bucket sizes are what they are whatever the
    arrangement).  32.8M entries: 0.50 s against 1.05 s; 131M: 2.1 s against 4.7 s
    (measured on 2 cores).  Bucket labels come from numpy's PCG64, the shuffles from
    torch's generator, both seeded with ``seed``.
    """
    dtype = torch.int32 if size < 2**31 else torch.int64
    generator = torch.Generator().manual_seed(seed)
    if size <= SPLIT_ENTRIES:
        return torch.randperm(size, generator=generator, dtype=dtype)
    labels = np.random.default_rng(seed).integers(0, BUCKETS, size, dtype=np.uint8)
    chunks = _spans(size, _LABEL_CHUNK)  # the counting sort goes a cache-sized chunk at a time
    tallies = [torch.bincount(torch.from_numpy(labels[a:b]), minlength=BUCKETS) for a, b in chunks]
    ends = torch.stack(tallies).sum(dim=0).numpy().cumsum()
    starts = np.concatenate(([0], ends[:-1]))
    out = np.empty(size, dtype=np.int32 if dtype == torch.int32 else np.int64)
    filled = starts.copy()  # where each bucket's next indices go
    for (low, high), tally in zip(chunks, tallies, strict=True):
        order = np.argsort(labels[low:high], kind="stable").astype(out.dtype) + low
        counts = tally.numpy()
        taken = 0
        for bucket in np.flatnonzero(counts).tolist():
            count, at = int(counts[bucket]), int(filled[bucket])
            out[at : at + count] = order[taken : taken + count]
            filled[bucket], taken = at + count, taken + count
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        bucket = out[start:end]
        bucket[:] = bucket[torch.randperm(end - start, generator=generator, dtype=dtype).numpy()]
    return torch.from_numpy(out)


#: permutations of more entries are drawn in two levels (:func:`uniform_permutation`)
SPLIT_ENTRIES = 2**23
BUCKETS = 256  # 32.8M entries: buckets of 128K int32, 512 KB, in a core's L2 cache
_LABEL_CHUNK = 2**20  # labels sorted at once: numpy's radix argsort ran 3x faster than whole


def _spans(size: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, size)) for start in range(0, size, step)]


#: entries gathered at once (16 MiB of float32); a copy smaller than two of
#: ``_GATHER_MIN`` is gathered on the calling thread (threads cost more below: 590K
#: entries took 2.3 ms on two threads, 0.9 ms on one)
_GATHER_CHUNK = 2**22
_GATHER_MIN = 2**21


def _fulfil(future: Future, fn: Callable, *args: object) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as error:  # re-raised by Future.result() in the caller
        future.set_exception(error)


SHUFFLED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
