"""``python -m spectralyzer.cli``."""

from . import main

main()
