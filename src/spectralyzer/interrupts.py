"""SIGTERM and Ctrl-C as a flag that long work checks (no exception from a signal handler).

A handler that raises runs only when the main thread is back in Python code:
during an 8192 x 8192 eigendecomposition that is 95 s after SIGTERM, and an
exception raised from it in the middle of report writing can be swallowed
("Exception ignored ...") so the run completes with exit 0.  Here the
handlers only record the signal; :func:`check` raises :class:`Interrupted`
at safe points (between matrices, in long loops, before every final rename),
and :func:`abandonable` runs one long native call on a worker thread that the
main thread waits on in short slices, so a signal is acted on within a
fraction of a second and the call's result is never used.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

T = TypeVar("T")

#: Seconds the main thread waits on a worker before it looks at the flag again.
SLICE = 0.05

_received: int | None = None  # the first signal received while the handlers are installed
_abandoned: list[threading.Thread] = []  # workers left running after an interruption

_REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Interrupted(BaseException):
    """A signal asked the run to stop.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except
    Exception`` handlers on the way up do not turn it into an ordinary error.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report
        self.reason = _REASONS.get(signum, f"stopped by signal {signum}")


def _record(signum: int, frame: object) -> None:
    """The handler: remember the first signal, nothing else (async-signal context)."""
    global _received
    if _received is None:
        _received = signum


def requested() -> int | None:
    """The signal received since :func:`flag_signals` was entered, if any."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` when a signal has arrived; cheap, call it often."""
    if _received is not None:
        raise Interrupted(_received)


@contextmanager
def flag_signals() -> Iterator[None]:
    """SIGTERM and SIGINT set the flag while the block runs; the old handlers return after.

    SIGINT stays ignored when it was ignored on entry: a process started in the
    background (``cmd &`` without job control, nohup) inherits it ignored, and
    the shell expects it to stay deaf to Ctrl-C meant for the foreground.
    Outside the main thread (a library caller's worker) nothing is installed.
    """
    global _received
    _received = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if signum == signal.SIGINT and current == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _record)
    try:
        yield
    finally:
        _received = None  # a later call in this process (a library user's) starts afresh
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def checked(items: Iterable[T]) -> Iterator[T]:
    """The items, with :func:`check` before each (for long loops)."""
    for item in items:
        check()
        yield item


def reraise_as_interrupted(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)``; whatever it raises after a signal arrived becomes :class:`Interrupted`.

    Code running when the signal came may fail in its own way on the way out
    (a test's stand-in, a broken pipe); the signal is the cause to report.
    ``SystemExit`` passes: the command had already finished (gate's exit 1).
    """
    try:
        return fn(*args, **kwargs)
    except (Interrupted, SystemExit):
        raise
    except BaseException as err:
        if _received is not None:
            raise Interrupted(_received) from err
        raise


def abandonable(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on a worker thread; the main thread checks the flag every :data:`SLICE` s.

    For long native calls (Gram products, eigendecompositions) that hold no
    Python lock: on a signal the worker is left running, its result is never
    used, and :func:`leave` ends the process without waiting for it.  Off the
    main thread (nothing to wake) or with no handlers installed this is a
    plain call.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as err:  # handed to the main thread below
            outcome["error"] = err

    worker = threading.Thread(target=work, name="spectralyzer-worker", daemon=True)
    worker.start()
    while worker.is_alive():
        if _received is not None:
            _abandoned.append(worker)
            raise Interrupted(_received)
        worker.join(SLICE)
    check()  # a signal during the last slice: do not go on with the result
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def leave(code: int) -> NoReturn:
    """Exit with ``code``; skip interpreter shutdown when abandoned work still runs.

    A normal exit would wait for the abandoned call (thread pools are joined at
    shutdown) or tear down libraries under it, so the streams are flushed and
    the process ends at once.  Cleanup (staging folders) ran before this, on
    the way up.
    """
    if any(worker.is_alive() for worker in _abandoned):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
