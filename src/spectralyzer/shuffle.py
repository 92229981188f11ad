"""Uniformly random shuffles of matrix entries for the correlation-trap check
(docs/theory.md section 3.8)."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from .threads import one_thread_each


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

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed, self.device = seed, torch.device(device)
        self._orders: dict[tuple[int, ...], torch.Tensor] = {}
        self._placed: dict[tuple[int, ...], Placement] = {}  # shapes that move (:meth:`moves`)
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
        if shape not in self._orders and shape not in self._drawing and not self.moves(shape):
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
        return uniform_permutation(prod(shape), self.seed_of(shape))

    def seed_of(self, shape: tuple[int, ...]) -> int:
        """The seed of this shape's permutation."""
        key = zlib.crc32(repr(tuple(shape)).encode())
        return (self.seed * 1_000_003 + key) % 2**63

    def moves(self, shape: tuple[int, ...]) -> bool:
        """Whether copies of this shape on this shuffler's device are shuffled by moving their
        entries in two levels (:func:`two_level_shuffle`, the same order as :meth:`order`)
        instead of through a stored permutation: CPU copies above :data:`SPLIT_ENTRIES`
        entries (a GPU gathers through the permutation, kept on it)."""
        return self.device.type == "cpu" and prod(shape) > SPLIT_ENTRIES

    def release(self, shape: tuple[int, ...]) -> None:
        """Forget the permutation of a shape that will not come again (bounds memory)."""
        self._orders.pop(shape, None)
        self._placed.pop(shape, None)
        self._drawing.pop(shape, None)

    def __call__(
        self, stack: torch.Tensor, dtype: torch.dtype | None = None, factor: float = 1.0
    ) -> torch.Tensor:
        """The stack with its entries permuted (one permutation across its slices), in
        ``dtype`` (default its own) and multiplied by ``factor`` (a power of two, exact).

        A CPU copy above :data:`SPLIT_ENTRIES` entries is moved in two levels
        (:func:`two_level_shuffle`), the first level kept for the next copy of its shape.
        Others are gathered through the shape's permutation in chunks straight into the
        result, so the only full-size allocation is the result; on the CPU the chunks are
        shared among ``torch.get_num_threads()`` threads (``index_select`` is one thread
        bound by memory latency: a 32000 x 1024 bf16 gather took 345 ms on one thread,
        161 ms on two, measured on 2 cores).
        """
        shape = tuple(stack.shape)
        if stack.dtype not in SHUFFLED_DTYPES:  # e.g. float8: index_select lacks kernels
            stack = stack.float()
        flat, dtype = stack.reshape(-1), dtype or stack.dtype
        threads = torch.get_num_threads() if flat.device.type == "cpu" else 1
        if self.moves(shape) and flat.device == self.device:
            seed, placement = self.seed_of(shape), self._placed.get(shape)
            out, self._placed[shape] = two_level_shuffle(
                flat, seed, dtype, factor, threads, placement
            )
            return out.reshape(shape)
        order = self.order(shape)
        if order.device != flat.device:  # moved once per shape, kept on the GPU
            order = self._orders[shape] = order.to(flat.device)
        out = torch.empty(flat.numel(), dtype=dtype, device=flat.device)

        def gather(span: tuple[int, int]) -> None:
            index, into = order[span[0] : span[1]], out[span[0] : span[1]]
            if flat.dtype == dtype and factor == 1.0:
                torch.index_select(flat, 0, index, out=into)
            else:
                into.copy_(_in_dtype(flat.index_select(0, index), dtype, factor))

        if threads < 2 or flat.numel() < 2 * _GATHER_MIN:
            for span in _spans(flat.numel(), _GATHER_CHUNK):
                gather(span)
        else:
            parts = threads * -(-flat.numel() // (threads * _GATHER_CHUNK))  # a share each
            spans = _spans(flat.numel(), -(-flat.numel() // parts))
            # not _share (one torch thread each): keeping torch's threads in index_select
            # ran 10% faster (2048 x 4096 bf16: 51-56 ms against 56-61 ms, 2 cores)
            with ThreadPoolExecutor(min(threads, len(spans))) as pool:
                list(pool.map(gather, spans))
        return out.reshape(shape)


def _in_dtype(part: torch.Tensor, dtype: torch.dtype, factor: float) -> torch.Tensor:
    """``part`` in ``dtype`` times ``factor``, a power of two, multiplied in the wider of the
    two dtypes (float64 weights near 1e100 scaled down before they become float32): exact."""
    if factor == 1.0:
        return part.to(dtype)
    if part.element_size() > torch.empty(0, dtype=dtype).element_size():
        return (part * factor).to(dtype)
    return part.to(dtype) * factor


def uniform_permutation(size: int, seed: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(size)`` drawn from ``seed`` (int32 below 2^31).

    Up to :data:`SPLIT_ENTRIES` entries it is ``torch.randperm``, a Fisher-Yates shuffle;
    above, it is :func:`two_level_shuffle` of ``arange(size)``, so that a copy shuffled
    there equals the stack indexed by this permutation.
    """
    dtype = torch.int32 if size < 2**31 else torch.int64
    if size <= SPLIT_ENTRIES:
        return torch.randperm(size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return two_level_shuffle(torch.arange(size, dtype=dtype), seed, dtype)[0]


@dataclass(frozen=True)
class Placement:
    """The first level of a two-level shuffle (:func:`two_level_shuffle`): where each entry
    goes when the entries are laid out bucket by bucket, and the buckets' bounds."""

    into: torch.Tensor  # int32 (int64 from 2^31 entries), one destination per entry
    starts: list[int]
    ends: list[int]


def two_level_shuffle(
    flat: torch.Tensor,
    seed: int,
    dtype: torch.dtype,
    factor: float = 1.0,
    threads: int = 1,
    placement: Placement | None = None,
) -> tuple[torch.Tensor, Placement]:
    """The entries of a 1-D CPU tensor ``flat`` in a uniformly random order drawn from
    ``seed``, in ``dtype``, times ``factor`` (a power of two, taken in the wider dtype: exact);
    and the first level of that order, which shuffles another tensor of the same size faster.

    Fisher-Yates swaps across an array larger than the caches (30 ns an entry at 32.8M
    entries, against 4 ns at 131K), and a gather through a stored permutation reads at
    random over the whole tensor, so the order comes in two levels (Rao 1961, Sandelius
    1962; docs/theory.md section 3.8) and the entries are moved, not fetched: every entry
    gets one of :data:`BUCKETS` labels uniformly at random (numpy's PCG64 from ``seed``),
    each chunk of :data:`_LABEL_CHUNK` entries is sorted by label (stable) and its runs
    are written to their buckets, laid end to end; then each bucket is shuffled in cache
    by Fisher-Yates (``torch.randperm`` from its own seed).  Given the buckets' contents
    every arrangement of each is equally likely, so every order is.  With ``placement``
    (this seed's, from an earlier call) the labels are not drawn or sorted again.

    Chunks, then buckets, are shared among ``threads`` threads; chunks and seeds are
    fixed, so the result does not depend on the number of threads.  Measured figures:
    docs/benchmarks.md.
    """
    size = flat.numel()
    out = torch.empty(size, dtype=dtype)

    def moved(low: int, high: int, into: torch.Tensor) -> None:
        out.index_copy_(0, into, _in_dtype(flat[low:high], dtype, factor))

    if placement is None:
        placement, place = _placed(size, seed, moved)
        _share(place, len(_spans(size, _LABEL_CHUNK)), threads)
    else:
        chunks = _spans(size, _MOVE_CHUNK)
        into = placement.into
        _share(lambda c: moved(*chunks[c], into[slice(*chunks[c])].long()), len(chunks), threads)

    def shuffle(k: int) -> None:
        start, end = placement.starts[k], placement.ends[k]
        generator = torch.Generator().manual_seed((seed + (k + 1) * _SEED_STRIDE) % 2**63)
        order = torch.randperm(end - start, generator=generator, dtype=torch.int32)
        bucket = out[start:end]
        bucket.copy_(bucket.index_select(0, order))

    _share(shuffle, len(placement.starts), threads)
    return out, placement


def _placed(
    size: int, seed: int, moved: Callable[[int, int, torch.Tensor], None]
) -> tuple[Placement, Callable[[int], None]]:
    """The first level of a two-level shuffle drawn from ``seed``, to be filled in by the
    returned job, one chunk of :data:`_LABEL_CHUNK` entries per call, which also hands
    each chunk's destinations to ``moved(low, high, into)``."""
    labels = np.random.default_rng(seed).integers(0, BUCKETS, size, dtype=np.uint8)
    chunks = _spans(size, _LABEL_CHUNK)
    tallies = np.stack([np.bincount(labels[a:b], minlength=BUCKETS) for a, b in chunks])
    totals = tallies.sum(axis=0)
    ends = totals.cumsum()
    starts = ends - totals
    # where chunk c's run of bucket k goes: after the bucket's runs from chunks before c
    runs_at = torch.from_numpy(starts + tallies.cumsum(axis=0) - tallies)
    runs = torch.from_numpy(tallies)
    placement = Placement(
        torch.empty(size, dtype=torch.int32 if size < 2**31 else torch.int64),
        starts.tolist(),
        ends.tolist(),
    )

    def place(c: int) -> None:
        low, high = chunks[c]
        order = torch.from_numpy(np.argsort(labels[low:high], kind="stable"))
        first = runs[c].cumsum(0) - runs[c]  # where each run starts in the sorted chunk
        ranked = torch.repeat_interleave(runs_at[c] - first, runs[c], output_size=high - low)
        into = torch.empty_like(ranked).index_copy_(0, order, ranked.add_(torch.arange(high - low)))
        placement.into[low:high] = into
        moved(low, high, into)

    return placement, place


def _share(job: Callable[[int], None], count: int, threads: int) -> None:
    """``job(i)`` for ``i`` in ``range(count)``, a contiguous share of them per thread."""
    if threads < 2:
        for i in range(count):
            job(i)
        return
    shares = [range(*span) for span in _spans(count, -(-count // threads))]
    one_thread_each(lambda share: [job(i) for i in share], shares)


#: copies (and permutations) of more entries are shuffled in two levels (:func:`two_level_shuffle`)
SPLIT_ENTRIES = 2**23
BUCKETS = 256  # 32.8M entries: buckets of 128K float32, 512 KB, in a core's L2 cache
_LABEL_CHUNK = 2**16  # labels sorted at once: numpy's radix argsort ran fastest at 2^16-2^18
_MOVE_CHUNK = 2**18  # entries moved at once through a stored placement
_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd: one generator seed per bucket


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
