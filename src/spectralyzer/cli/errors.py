"""How the command line ends: one line on stderr and the exit code of the house rules.

Exit codes: 0 success (and a passing gate), 1 only for a failed gate, 2 bad
input or option (:class:`~spectralyzer.errors.SpectralyzerError`, ``OSError``,
click usage errors), 3 any other exception (a bug: one line asking to report
it), 130 Ctrl-C and 143 SIGTERM. ``--debug`` prints the traceback first; the
exit code stays the same.
"""

from __future__ import annotations

import functools
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .. import interrupts
from ..errors import OptionError, SpectralyzerError
from ..escaping import terminal
from .options import flag_for


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr: control characters of names in ``message`` are shown escaped."""
    click.echo(f"spectralyzer: error: {terminal(message)}", err=True)
    sys.exit(code)


def one_line(message: str) -> str:
    """A message on one line: third-party text (pandas, torch) may span several."""
    return re.sub(r"\s*[\r\n]+\s*", " ", message).strip()


def user_message(err: BaseException) -> str:
    """The line shown for a user error; an option error names the flag, not the field."""
    if isinstance(err, OptionError):
        return one_line(f"{flag_for(err.key)}: {err.problem}")
    return one_line(str(err)) or type(err).__name__


def internal_error_line(err: BaseException) -> str:
    """The one line shown for an unexpected exception (exit code 3)."""
    message = " ".join(str(err).split())
    message = message if len(message) <= 200 else message[:197] + "..."
    message = "".join(ch if ch.isprintable() else "?" for ch in message)
    return (
        f"spectralyzer: internal error: {type(err).__name__}: {message}; please report this "
        "(rerun with --debug for the traceback)"
    )


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one line on stderr with exit code 2, and bugs into exit 3.

    Ctrl-C and SIGTERM only set a flag (see :mod:`spectralyzer.interrupts`); the
    command stops at its next check with one line and exit codes 130 and 143,
    and writes no output (every output is renamed into place only after a check).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            with interrupts.flag_signals():
                return interrupts.reraise_as_interrupted(command, *args, **kwargs)
        except interrupts.Interrupted as stop:
            click.echo(f"spectralyzer: error: {stop.reason}; no report was written", err=True)
            interrupts.leave(stop.exit_code)
        except (SpectralyzerError, OSError) as err:  # the user's input or option
            if debug:
                traceback.print_exc()
            fail(user_message(err))
        except (click.ClickException, click.exceptions.Exit):
            raise  # usage errors: click (and Commands) print them, exit 2
        except Exception as err:  # anything else is a bug of spectralyzer: exit 3, not 1
            if debug:
                traceback.print_exc()
            click.echo(internal_error_line(err), err=True)
            sys.exit(3)

    return click.option("--debug", is_flag=True, help="Show tracebacks (same exit codes).")(wrapper)


class OneLineUsageError(click.ClickException):
    """A usage mistake, shown like every other user error: one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"spectralyzer: error: {self.format_message()}", err=True)


class Commands(click.Group):
    """The command group; option and usage mistakes print one line instead of click's usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare `spectralyzer` shows the help, as click does
        except click.UsageError as err:
            raise OneLineUsageError(_usage_message(err)) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise OneLineUsageError(_usage_message(err)) from None


def _usage_message(err: click.UsageError) -> str:
    """``<subcommand>: <problem> (see --help)``; the prefix already names spectralyzer."""
    where = " ".join(err.ctx.command_path.split()[1:]) if err.ctx else ""
    return f"{where + ': ' if where else ''}{err.format_message()} (see --help)"
