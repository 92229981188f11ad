"""CPU threads: ``--threads N`` for one analysis, and work spread a share per thread.

Torch's default (one thread per core it sees) is kept unless the user asks: the
issue measured it degrading under contention on a shared 2-core machine, but a
new default needs a measurement on more than one machine (``bench/bench_llm.py
--threads N``).  The previous count is restored afterwards, so a library caller's
own setting survives the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

#: Upper bound of ``--threads``: far above any machine's cores, and inside the C int that
#: ``torch.set_num_threads`` takes (a huge value overflowed there, found by the option fuzz).
MAX_THREADS = 4096


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; None leaves torch's choice."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread_each(fn: Callable[[Any], Any], items: list, workers: int | None = None) -> list:
    """``[fn(item) for item in items]`` on a pool of ``workers`` threads (default one per
    item), each taking the next item when free, torch intra-op threads set to 1.

    For jobs that gain little from a second torch thread (LAPACK's eigensolver on one
    matrix of a few hundred rows), a share per thread uses the cores better than one job
    after the other on all of them.
    """
    if len(items) < 2:
        return [fn(item) for item in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers or len(items), len(items))) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def in_shares(jobs: list[Callable[[], Any]]) -> list:
    """``[job() for job in jobs]`` on a worker per torch thread (:func:`one_thread_each`).

    For a batch's Krylov spaces of the correlation-trap check, whose skinny products and
    small factorisations gain little from a second thread: a 1024 x 1024 space took
    21 ms on one thread and 16 ms on two; the 167m randomize stage fell from 2.20 to
    2.10 s (medians of 8 interleaved runs on 2 cores).
    """
    return one_thread_each(lambda job: job(), jobs, workers=torch.get_num_threads())
