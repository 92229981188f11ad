"""``--threads N``: how many CPU threads torch uses for one analysis.

Torch's default (one thread per core it sees) is kept unless the user asks: the
issue measured it degrading under contention on a shared 2-core machine, but a
new default needs a measurement on more than one machine (``bench/bench_llm.py
--threads N``).  The previous count is restored afterwards, so a library caller's
own setting survives the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
