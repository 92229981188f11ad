"""Optional readers' packages: imported on use, a one-line InputError naming the extra when absent."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..errors import InputError


def import_extra(path: str | os.PathLike[str], module: str, fmt: str, extra: str) -> ModuleType:
    """``import module``, or an InputError saying which extra reads ``fmt`` files.

    The format is known from the file's magic bytes before this is called, so a
    missing package is reported at once, by name (issue 13).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            path,
            f"{fmt} file: reading it needs the {extra} extra: pip install 'spectralyzer[{extra}]'",
        ) from None
