"""Progress on stderr, weighted by the work each matrix costs (issue 14).

The pipeline reports work in units of :func:`spectralyzer.pipeline.cost`
(``N * M**2 + M**3`` per matrix): ``on_plan(total_cost, n_matrices)`` once per
model and ``progress(cost_done, matrices_done)`` after each batch.  Counting
layers instead made the ETA wrong by up to 40x (an embedding costs 40 q_proj's).

* On a terminal: a bar whose position is the share of the work done.
* Off a terminal (CI, nohup, a log file): one line at most every ``interval``
  seconds, e.g. ``analysed 120/226 matrices, 41% of the work, ETA 6 min``;
  half an hour of silence looked like a hang.
* ``-q``: nothing.

A run over several models (compare, diff, gate) counts across all of them; a
model not yet opened is assumed to cost what the opened ones cost on average.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import click

INTERVAL = 15.0  # seconds between lines off a terminal
BAR_STEPS = 1000  # resolution of the bar (its length); the position is the share of work


def eta_text(seconds: float) -> str:
    """``45 s``, ``6 min``, ``1 h 05 min`` (seconds below a minute and a half)."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """Work planned and done over ``models`` models, shown as a bar or as periodic lines."""

    def __init__(
        self,
        models: int = 1,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        self.models = max(1, models)
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.quiet = quiet
        self.clock = clock
        self.interval = INTERVAL if interval is None else interval
        self.plans: list[tuple[float, int]] = []  # (cost, matrices) of each model opened
        self.current = (0.0, 0)  # done in the model now running
        self.start = clock()
        self.last_line = self.start
        self.bar: Any = None

    # the pipeline's callbacks
    def on_plan(self, total_cost: float, n_matrices: int) -> None:
        self.current = (0.0, 0)
        self.plans.append((float(total_cost), int(n_matrices)))
        if self.terminal and not self.quiet and self.bar is None:
            self.bar = click.progressbar(
                length=BAR_STEPS,
                label="analysing",
                file=self.stream,
                show_eta=True,
                show_percent=True,
                item_show_func=lambda item: item,
            )
            self.bar.__enter__()
        self._show()

    def advance(self, cost_done: float, matrices_done: int) -> None:
        self.current = (float(cost_done), int(matrices_done))
        self._show()

    # what is shown
    def totals(self) -> tuple[float, int, bool]:
        """(cost, matrices, estimated): the models not yet opened counted at the mean."""
        cost = sum(c for c, _ in self.plans)
        count = sum(n for _, n in self.plans)
        unseen = self.models - len(self.plans)
        if unseen > 0 and self.plans:
            cost += unseen * cost / len(self.plans)
            count += round(unseen * count / len(self.plans))
        return cost, count, unseen > 0

    def done(self) -> tuple[float, int]:
        """(cost, matrices) finished: the models before this one, and this one's share."""
        before = self.plans[:-1]
        return (
            sum(c for c, _ in before) + self.current[0],
            sum(n for _, n in before) + self.current[1],
        )

    def fraction(self) -> float:
        total = self.totals()[0]
        return min(1.0, self.done()[0] / total) if total > 0 else 0.0

    def line(self) -> str:
        """``analysed 120/226 matrices, 41% of the work, ETA 6 min``."""
        _, count, estimated = self.totals()
        matrices, share = self.done()[1], self.fraction()
        text = f"analysed {matrices}/{'~' if estimated else ''}{count} matrices"
        if self.models > 1:
            text += f" (model {len(self.plans)} of {self.models})"
        text += f", {math.floor(share * 100)}% of the work"
        if 0 < share < 1:
            elapsed = self.clock() - self.start
            text += f", ETA {eta_text(elapsed * (1 - share) / share)}"
        return text

    def _show(self) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            _, count, estimated = self.totals()
            label = f"{self.done()[1]}/{'~' if estimated else ''}{count} matrices"
            self.bar.update(round(self.fraction() * BAR_STEPS) - self.bar.pos, label)
        elif not self.terminal and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def progress(quiet: bool, models: int = 1) -> Iterator[Progress]:
    """A :class:`Progress` on stderr for the length of a command, closed however it ends."""
    shown = Progress(models, quiet=quiet)
    try:
        yield shown
    finally:
        shown.close()
