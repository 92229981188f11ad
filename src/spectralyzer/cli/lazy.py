"""The commands' heavy imports (torch, pandas, scipy), on first use and without the
cyclic garbage collector running through them.

Importing torch, pandas and scipy creates about a million objects, and the
collector's full passes over that growing heap cost 0.2-0.3 s of a 2.7 s MiniLM
``analyze --randomize`` process on 2 cores (median of 7 alternating runs: 3.06 s
with the collector running, 2.73 s paused; measured with ``gc.disable()`` around
the imports and ``gc.freeze()`` after).  So every command imports its libraries
inside :func:`heavy_imports`: the collector pauses while they load and, in a
process the command line owns (:func:`own_process`, the ``spectralyzer``
script), what they loaded moves to the collector's permanent generation
(``gc.freeze()``), which later full passes and the exit skip.  Called from
another program (tests, notebooks), nothing is frozen: its own garbage would
never be collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_owned = False  # True in a process started as the command line


def own_process() -> None:
    """Mark this process as the command line's own (its entry point calls this)."""
    global _owned
    _owned = True


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Pause the cyclic garbage collector while the block imports (module docstring)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _owned:
            gc.freeze()
        if enabled:
            gc.enable()
