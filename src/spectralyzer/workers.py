"""Pools that run one function over many items on other processes, each item at most twice.

A unit of work that raises (or whose worker dies) is run once more; when it fails
again the pool gives a :class:`Failure` in its place and the other units finish.
:class:`LocalPool` uses processes of this machine (``forkserver``: a worker is
forked from a server that has already imported torch; ``spawn`` where there is no
forkserver); :mod:`spectralyzer.ray_runner` has the same pool on a Ray cluster.
The main process waits in short slices and checks the interrupt flag between
them, so Ctrl-C and SIGTERM stop the run at once (the workers are ended).
"""

from __future__ import annotations

import abc
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from . import interrupts

ATTEMPTS = 2  # a unit is retried once
SLICE = 0.1  # seconds between looks at the interrupt flag


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """``threads`` when given, else the cores shared out: ``max(1, cores // workers)``."""
    return threads if threads else max(1, cores() // max(1, workers))


@dataclass(frozen=True)
class Failure:
    """A unit of work that failed on every attempt."""

    unit: str  # what it was: a checkpoint, or a range of layers
    error: str  # the last attempt's error, one line

    def __str__(self) -> str:
        return f"{self.unit}: {self.error}"


def error_line(err: BaseException) -> str:
    """``Type: message`` on one line (a :class:`UnitError` is that line already)."""
    message = " ".join(str(err).split())
    if isinstance(err, UnitError):
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class UnitError(RuntimeError):
    """A unit's error as one line: it always pickles (``InputError`` does not unpickle,
    and a result that cannot be unpickled breaks a whole process pool)."""


def guarded(fn: Callable[[Any], Any], item: Any) -> Any:
    """``fn(item)`` in a worker, any exception turned into a :class:`UnitError`."""
    try:
        return fn(item)
    except Exception as err:
        raise UnitError(error_line(err)) from None


class Pool(abc.ABC):
    """Submit items, collect outcomes; the retry and interrupt logic shared by every pool."""

    workers: int = 1

    def run(
        self,
        fn: Callable[[Any], Any],
        items: list[Any],
        units: list[str],
        on_done: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """``[fn(item) ...]`` in order, a :class:`Failure` for an item that failed
        :data:`ATTEMPTS` times, or whose worker was lost that many times (:meth:`lost`: a
        local worker that dies breaks the pool for every item in flight, and a lost attempt
        is not counted as the item's own failure); ``on_done(index, outcome)`` as each item
        ends (in the order they end)."""
        results: list[Any] = [None] * len(items)
        tries, losses = [0] * len(items), [0] * len(items)
        handles = {self.submit(fn, item): i for i, item in enumerate(items)}
        try:
            while handles:
                interrupts.check()
                for handle, value, error in self.finished(list(handles)):
                    i = handles.pop(handle)
                    counts = losses if error is not None and self.lost(handle) else tries
                    counts[i] += 1
                    if error is not None and max(tries[i], losses[i]) < ATTEMPTS:
                        handles[self.submit(fn, items[i])] = i
                        continue
                    results[i] = Failure(units[i], error) if error is not None else value
                    if on_done:
                        on_done(i, results[i])
        except BaseException:
            self.cancel(list(handles))
            raise
        return results

    @abc.abstractmethod
    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any:
        """Start ``fn(item)``; a handle for :meth:`finished`."""

    @abc.abstractmethod
    def finished(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        """Handles done within a short wait, as ``(handle, value, error line or None)``."""

    def lost(self, handle: Any) -> bool:
        """Whether a handle that ended in error lost its worker rather than failing itself."""
        return False

    def cancel(self, handles: list[Any]) -> None:  # noqa: B027 - optional hook
        """Stop the work in flight (an interruption, or an error of this process)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the workers."""


class InlinePool(Pool):
    """Every item in this process, at once (tests, and a pool of one without processes)."""

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any:
        try:
            return _Done(fn(item), None)
        except Exception as err:
            return _Done(None, error_line(err))

    def finished(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        return [(h, h.value, h.error) for h in handles]


class _Done:
    def __init__(self, value: Any, error: str | None) -> None:
        self.value, self.error = value, error


def _start_worker(threads: int) -> None:
    """In each worker: Ctrl-C is the main process's to act on; torch gets its share of cores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(threads)


class LocalPool(Pool):
    """``workers`` processes of this machine (``--workers N``)."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers, self.threads = workers, threads
        self._executor: ProcessPoolExecutor | None = None
        self._lost: set[Future] = set()  # ended with the pool broken (a worker died)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            methods = multiprocessing.get_all_start_methods()
            method = "forkserver" if "forkserver" in methods else "spawn"
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["spectralyzer.pipeline"])
            self._executor = ProcessPoolExecutor(
                self.workers, context, initializer=_start_worker, initargs=(self.threads,)
            )
        return self._executor

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future:
        return self._pool().submit(guarded, fn, item)

    def finished(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        done, _ = wait(handles, timeout=SLICE, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            error = BrokenProcessPool("cancelled") if future.cancelled() else future.exception()
            if isinstance(error, BrokenProcessPool):  # a worker died: a fresh pool for retries
                self._discard()
                self._lost.add(future)
            out.append((future, None if error else future.result(), _line(error)))
        return out

    def lost(self, handle: Any) -> bool:
        was = handle in self._lost
        self._lost.discard(handle)
        return was

    def cancel(self, handles: list[Any]) -> None:
        if self._executor is None:
            return
        for process in list(getattr(self._executor, "_processes", {}).values()):
            process.terminate()  # a worker in a long eigendecomposition would not stop
        self._discard()

    def _discard(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _line(error: BaseException | None) -> str | None:
    return None if error is None else error_line(error)
