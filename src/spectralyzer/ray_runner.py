"""``--ray [ADDRESS]``: the pool of :mod:`spectralyzer.workers` on a Ray cluster (extra ``ray``).

``local`` (``--ray`` alone) starts a cluster on this machine for the run, with
``ray.init(num_cpus=workers * threads)``, and stops it afterwards; ``auto`` or
``HOST:PORT`` / ``ray://HOST:PORT`` joins a running cluster and leaves it running
(as does any ``--ray`` in a program that already called ``ray.init``).
Each task asks Ray for as many CPUs as it runs torch threads.  Ray's own retries
are off: a task is retried once by the pool, as on local processes.  On a
cluster every node must see the checkpoints (and the cache folder) at the same
paths: tasks carry paths and layer names, never tensors, so nothing large goes
through the object store.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import OptionError, SpectralyzerError
from .workers import SLICE, Pool, cores, error_line, guarded

LOCAL = "local"
ADDRESS = re.compile(r"(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+)")
MISSING = "--ray needs Ray, an optional extra: pip install 'spectralyzer[ray]'"


def check_address(address: str) -> None:
    """``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is refused
    (``--ray`` takes an optional value, so ``--ray model.safetensors`` would take the model)."""
    if address != LOCAL and not ADDRESS.fullmatch(address):
        raise OptionError(
            "ray",
            f"{address!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT); "
            "write --ray=ADDRESS, or put --ray after the models",
        )


def import_ray() -> Any:
    """The ``ray`` module, or the one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise SpectralyzerError(MISSING) from None
    return ray


class RayPool(Pool):
    """Tasks on a Ray cluster: ``workers`` at a time locally, as the cluster allows otherwise."""

    def __init__(self, address: str, workers: int | None, threads: int | None) -> None:
        check_address(address)
        self.ray = import_ray()
        self.workers = workers or max(1, cores() // (threads or 1))
        self.threads = threads or max(1, cores() // self.workers)
        # a program (or test) that already called ray.init keeps its cluster
        self.started = address == LOCAL and not self.ray.is_initialized()
        settings: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        }
        if self.started:
            settings["num_cpus"] = self.workers * self.threads
        else:
            settings["address"] = address
        try:
            if not self.ray.is_initialized():
                with _handlers_kept():
                    self.ray.init(**settings)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpectralyzerError(f"--ray {address}: cannot start or join Ray ({err})") from None
        self._task: Any = None

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any:
        if self._task is None:
            self._task = self.ray.remote(num_cpus=self.threads, max_retries=0)(guarded)
        return self._task.remote(fn, item)

    def finished(self, handles: list[Any]) -> list[tuple[Any, Any, str | None]]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=SLICE)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref), None))
            except Exception as err:  # the task's exception, or a worker that died
                out.append((ref, None, error_line(getattr(err, "cause", None) or err)))
        return out

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


@contextmanager
def _handlers_kept() -> Iterator[None]:
    """Restore the SIGINT/SIGTERM handlers that ``ray.init`` replaces with its own (which
    exit at once): the run's flag handlers (``interrupts``) must stay in charge, and a
    library caller's handlers must survive the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)
