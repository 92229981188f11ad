"""Exceptions that the CLI turns into one-line messages and exit code 2."""

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
