"""``Monitor``: the training-run alarms from inside a training loop, no checkpoint files needed.

Plain PyTorch::

    monitor = spectralyzer.Monitor(every=500, fail_on="alpha", table="run.csv")
    for step, batch in enumerate(loader):
        ...  # forward, backward, optimizer.step()
        for alarm in monitor.step(model, step):  # analyses the weights every 500 steps
            print(alarm.line())  # fail_on="alpha": raises AlarmError instead

PyTorch Lightning (a callback; Lightning is not a dependency of spectralyzer)::

    class SpectralAlarms(lightning.pytorch.Callback):
        def __init__(self):
            self.monitor = spectralyzer.Monitor(every=500)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.monitor.step(pl_module, trainer.global_step):
                trainer.should_stop = True

Hugging Face ``Trainer`` (``Trainer(..., callbacks=[SpectralAlarms()])``)::

    class SpectralAlarms(transformers.TrainerCallback):
        def __init__(self):
            self.monitor = spectralyzer.Monitor(every=500)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if self.monitor.step(model, state.global_step):
                control.should_training_stop = True

The analysis reads the module's ``state_dict()`` in memory (on its device, one
matrix at a time, copied to the CPU); the alarms are those of
:mod:`spectralyzer.alarms` against the previous analysis (docs/theory.md section 6.9).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch

from .alarms import Alarm, AlarmError, check_traps_counted, fail_on_kinds, failing, find_alarms
from .errors import OptionError
from .outputs import resolve_inputs
from .pipeline import AnalysisOptions, run_analysis
from .run_table import append_row, table_row
from .series import Entry, Series, assemble


class Monitor:
    """Analyses a model's weights every ``every`` steps and reports the training-run alarms.

    ``fail_on``: alarm kinds (``alpha``, ``traps``, ``flow`` or ``any``) for which
    :meth:`step` raises :class:`~spectralyzer.alarms.AlarmError` instead of
    returning. ``table``: a CSV or JSON-lines file that gets one row per
    analysis (:mod:`spectralyzer.run_table`). ``options``: the analysis settings
    (``AnalysisOptions(randomize=True)`` is needed for the ``traps`` alarm).
    """

    def __init__(
        self,
        every: int = 100,
        *,
        fail_on: str | Iterable[str] | None = None,
        table: str | os.PathLike[str] | None = None,
        options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    ) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise OptionError("every", f"must be a positive number of steps, not {every!r}")
        if not isinstance(options, AnalysisOptions):
            raise OptionError("options", f"must be AnalysisOptions, not {options!r}")
        self.every = every
        self.fail_on = fail_on_kinds(fail_on)
        check_traps_counted(fail_on, options.randomize)
        self.table = table
        self.options = options
        self.entries: list[Entry] = []  # every analysis so far, in step order
        self.alarms: list[Alarm] = []  # every alarm so far

    def step(self, model: torch.nn.Module | Mapping[str, torch.Tensor], step: int) -> list[Alarm]:
        """At every ``every``-th step (0 included): analyse ``model`` and return the new alarms."""
        if step % self.every:
            return []
        analysis = run_analysis(model, self.options)
        label = f"step {step}"
        previous = self.entries[-1].details if self.entries else None
        alarms = find_alarms(previous, analysis.details, label)
        entry = Entry(label, step, analysis.summary, analysis.details)
        self.entries.append(entry)
        self.alarms += alarms
        if self.table is not None:
            append_row(self.table, table_row(entry, alarms), resolve_inputs([]))
        stop = failing(alarms, self.fail_on)
        if stop:
            raise AlarmError(stop)
        return alarms

    def series(self) -> Series:
        """The analyses so far as a :class:`~spectralyzer.series.Series` (for a report)."""
        if not self.entries:
            raise OptionError("monitor", "no step analysed yet")
        return assemble(self.entries)
