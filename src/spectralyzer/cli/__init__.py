"""The ``spectralyzer`` command line: thin click commands over the library.

Each command parses its options, calls one library function and renders the
result (:mod:`.output`); option records check their own values, and
:mod:`.errors` turns what goes wrong into one line and the exit code
(0 success, 1 failed gate, 2 bad input or option, 3 bug, 130/143 signals).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys

import click

from .. import __version__
from .allocate import allocate_command
from .analyze import analyze_command
from .compare import compare_command
from .errors import Commands, handle_errors, internal_error_line
from .gate import diff_command, gate_command
from .lazy import own_process
from .plot import plot_command
from .probe import probe_command
from .watch import watch_command

__all__ = ["entry", "handle_errors", "internal_error_line", "main"]

# Exit without a last garbage collection over torch's, pandas' and scipy's objects: the
# interpreter's teardown took 0.48 s of a 1.57 s ``import torch`` process on 2 cores, and
# 0.08 s after ``gc.freeze()`` (atexit handlers run before the teardown; measured).
atexit.register(gc.freeze)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spectralyzer")
def main() -> None:
    """Judge trained neural networks from their weights alone (heavy-tailed spectral analysis)."""


for _command in (
    analyze_command,
    plot_command,
    compare_command,
    diff_command,
    gate_command,
    probe_command,
    watch_command,
    allocate_command,
):
    main.add_command(_command)


def entry() -> None:
    """The ``spectralyzer`` script and ``python -m spectralyzer.cli``: :func:`main` in a
    process of its own (:mod:`.lazy`), left without the interpreter's teardown.

    Once the command has finished, its files are closed and renamed into place; what
    remains is the exit handlers (run here: a Ray cluster's shutdown, logging's flush)
    and the teardown, which frees every module's objects one by one: 0.13 s of a 2.5 s
    MiniLM ``analyze --randomize`` process on 2 cores (measured), for nothing.
    """
    own_process()
    try:
        main()
    except SystemExit as done:
        code = done.code
    else:
        code = 0
    if not isinstance(code, int | None):  # sys.exit("message"): as the interpreter does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code or 0)
