"""Follow a training output folder and analyse each checkpoint once it is complete.

A checkpoint is complete when it looks the same at two polls in a row (size and
modification time of every weight file), and for a Hugging Face folder also
when its shards are all there: the ``*.index.json`` that ``save_pretrained``
writes after the shards, with every shard it names present, or for shards named
``-0000k-of-0000n`` without an index, none (the index is still to come). A
checkpoint file rewritten in place (``last.ckpt``) is analysed again when it
changes. Each analysis is compared with the one before (:mod:`spectralyzer.alarms`).

The polling itself (:func:`snapshot`, :func:`ready`) is pure bookkeeping over
what the folder shows; :func:`watch` is the loop, with every side effect (the
table, the report, the lines on stderr) left to the caller's callbacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .alarms import Alarm, check_traps_counted, fail_on_kinds, failing, find_alarms
from .errors import InputError, OptionError, SpectralyzerError
from .pipeline import AnalysisOptions, run_analysis
from .runs import is_checkpoint_file, natural_key, run_members, step_of
from .series import Entry

#: What a poll sees of one checkpoint: its weight files' (name, size, mtime), and completeness.
Signature = tuple[tuple[str, int, int], ...]
Snapshot = dict[Path, tuple[Signature, bool]]


@dataclass(frozen=True)
class WatchSettings:
    """How :func:`watch` polls and when it stops (checked on construction)."""

    interval: float = 30.0  # seconds between polls
    once: bool = False  # analyse what is complete now (two polls ``interval`` apart), then stop
    max_checkpoints: int | None = None  # stop after analysing this many
    timeout: float | None = None  # stop after this many seconds
    fail_on: tuple[str, ...] = ()  # alarm kinds that stop the watch (``any``: all)

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise OptionError(
                "interval", f"must be a positive number of seconds, not {self.interval!r}"
            )
        if self.max_checkpoints is not None and self.max_checkpoints < 1:
            raise OptionError("max_checkpoints", f"must be at least 1, not {self.max_checkpoints}")
        if self.timeout is not None and not self.timeout > 0:
            raise OptionError(
                "timeout", f"must be a positive number of seconds, not {self.timeout!r}"
            )
        fail_on_kinds(self.fail_on)


@dataclass
class Outcome:
    """What a watch did: the analysed checkpoints, their alarms, and why it stopped."""

    entries: list[Entry] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    failed: list[Alarm] = field(default_factory=list)  # the alarms that stopped it (--fail-on)
    stopped: str = ""  # "once", "max-checkpoints", "timeout" or "fail-on"


def signature(path: Path) -> tuple[Signature, bool]:
    """The weight files of one checkpoint as a poll sees them, and whether it is complete."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if _weights(p))
    seen = []
    for file in files:
        info = file.stat()
        seen.append((file.name, info.st_size, info.st_mtime_ns))
    if not seen or any(size == 0 for _, size, _ in seen):
        return tuple(seen), False
    return tuple(seen), path.is_file() or hf_complete(path)


def _weights(path: Path) -> bool:
    return path.name.endswith(".index.json") or is_checkpoint_file(path)


def hf_complete(folder: Path) -> bool:
    """Every shard is there: those an index names, or no ``-of-`` shards waiting for one."""
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
            return all((folder / name).is_file() for name in set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False  # half-written index: look again at the next poll
    return not any("-of-" in p.name for p in folder.iterdir())


def snapshot(folder: Path) -> Snapshot:
    """Every checkpoint in the run folder as a poll sees it (vanishing entries are left out)."""
    seen: Snapshot = {}
    for member in run_members(folder):
        try:
            seen[member] = signature(member)
        except OSError:
            continue  # deleted or rotated between the listing and the look
    return seen


def ready(previous: Snapshot, current: Snapshot, done: dict[Path, Signature]) -> list[Path]:
    """Checkpoints complete and unchanged since the previous poll, not yet analysed as they are,
    in natural order of their names (``checkpoint-900`` before ``checkpoint-1000``)."""
    found = [
        path
        for path, (sig, complete) in current.items()
        if complete and path in previous and previous[path][0] == sig and done.get(path) != sig
    ]
    return sorted(found, key=lambda p: (natural_key(p.name), p.name))


def watch(
    folder: str | Path,
    options: AnalysisOptions = AnalysisOptions(),  # noqa: B008 - frozen, safe default
    settings: WatchSettings = WatchSettings(),  # noqa: B008 - frozen, safe default
    *,
    on_entry: Callable[[Entry, list[Alarm], Outcome], None] | None = None,
    on_error: Callable[[Path, SpectralyzerError], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Poll ``folder`` and analyse each new complete checkpoint until a stop condition.

    ``on_entry(entry, alarms, outcome)`` runs after each analysis (write the table
    and report there); ``on_error(path, err)`` for a checkpoint that cannot be
    analysed (it is tried again only if it changes; without ``on_error`` the
    error is raised).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder (give the training run's output folder)")
    kinds = fail_on_kinds(settings.fail_on)
    check_traps_counted(settings.fail_on, options.randomize)
    outcome, done, labels = Outcome(), {}, set()
    start, previous = clock(), snapshot(folder)
    while True:
        _sleep(settings.interval, start, settings.timeout, clock)
        current = snapshot(folder)
        for path in ready(previous, current, done):
            interrupts.check()
            done[path] = current[path][0]
            try:
                analysis = run_analysis(path, options)
            except SpectralyzerError as err:
                if on_error is None:
                    raise
                on_error(path, err)
                continue
            label = _label(path.name, labels)
            entry = Entry(label, step_of(path), analysis.summary, analysis.details)
            last = outcome.entries[-1].details if outcome.entries else None
            alarms = find_alarms(last, analysis.details, label)
            outcome.entries.append(entry)
            outcome.alarms += alarms
            outcome.failed = failing(alarms, kinds)
            if on_entry is not None:
                on_entry(entry, alarms, outcome)
            if outcome.failed:
                outcome.stopped = "fail-on"
                return outcome
            if settings.max_checkpoints and len(outcome.entries) >= settings.max_checkpoints:
                outcome.stopped = "max-checkpoints"
                return outcome
        previous = current
        if settings.once:
            outcome.stopped = "once"
            return outcome
        if settings.timeout is not None and clock() - start >= settings.timeout:
            outcome.stopped = "timeout"
            return outcome


def _label(name: str, used: set[str]) -> str:
    """The checkpoint's name; ``name#2``, ... when a rewritten file is analysed again."""
    label, n = name, 1
    while label in used:
        n += 1
        label = f"{name}#{n}"
    used.add(label)
    return label


def _sleep(seconds: float, start: float, timeout: float | None, clock: Callable[[], float]) -> None:
    """Wait ``seconds`` (less when the timeout comes first), looking at the signal flag often."""
    end = clock() + seconds
    if timeout is not None:
        end = min(end, start + timeout)
    while True:
        interrupts.check()
        left = end - clock()
        if left <= 0:
            return
        time.sleep(min(left, interrupts.SLICE))
