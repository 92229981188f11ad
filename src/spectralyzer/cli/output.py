"""Where a command's output goes: stdout (the one helper), files via :mod:`spectralyzer.outputs`.

Also the terminal's width and colour for the
renderer, and the one check that the plotting extra is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from .. import interrupts
from ..errors import SpectralyzerError
from ..outputs import resolve_inputs, write_file, write_report_folder
from .lazy import heavy_imports


def existing(paths: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """The paths given that name files or folders (the inputs an output must never replace)."""
    return [Path(p) for p in paths if p is not None and Path(p).exists()]


def emit(data: str | bytes, output: str | None, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Write to stdout, or to a file with :func:`~spectralyzer.outputs.write_file` (atomic,
    never over an input)."""
    interrupts.check()  # a run stopped by a signal writes nothing, not even to stdout
    if output is None or output == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            click.echo(data, nl=False)
        return
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_file(payload, output, resolve_inputs(inputs))


def show(
    result: Any,
    fmt: str,
    output: str | None,
    inputs: Iterable[str | os.PathLike[str]],
    columns: tuple[str, ...] | None = None,
) -> None:
    """Render a result (fitted to the terminal when stdout is one) and emit it."""
    with heavy_imports():
        from ..render import render  # pandas: imported when there is a result to show
        from ..render_table import terminal_view

    to_stdout = output is None or output == "-"
    view = terminal_view(sys.stdout) if to_stdout else {"width": None, "color": False}
    emit(render(result, fmt, columns=columns, **view), output, inputs)


def plotting(module: str) -> ModuleType:
    """``spectralyzer.report.<module>``; a user error when matplotlib (the ``plots`` extra)
    is missing, while any other import failure stays a bug."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SpectralyzerError(
            "reports and plots need matplotlib: pip install 'spectralyzer[plots]'"
        )
    return importlib.import_module(f"spectralyzer.report.{module}")


def write_report(
    module: str, writer: str, folder: str, inputs: Iterable[str | os.PathLike[str]], *args: Any
) -> None:
    """A report folder written by ``spectralyzer.report.<module>.<writer>(*args, folder)``."""
    write = getattr(plotting(module), writer)
    write_report_folder(lambda staging: write(*args, staging), folder, list(inputs))
