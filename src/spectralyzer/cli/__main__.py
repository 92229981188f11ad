"""``python -m spectralyzer.cli``."""

from . import entry

entry()
