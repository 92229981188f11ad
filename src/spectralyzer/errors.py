"""Exceptions that the CLI turns into one-line messages and exit code 2.

Anything else that escapes a command is a bug of spectralyzer: the CLI prints
one line asking to report it and exits 3 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import os


class SpectralyzerError(Exception):
    """Base class for every error spectralyzer raises on purpose."""


class InputError(SpectralyzerError):
    """A user-supplied file or folder cannot be analysed.

    ``str(err)`` is the one line shown to the user: ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OptionError(SpectralyzerError, ValueError):
    """A setting the user chose (command-line option, policy key) has an invalid value.

    ``str(err)`` is ``"<key>: <problem>"``. It is also a ValueError, which library
    callers validating options caught before it existed.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")
