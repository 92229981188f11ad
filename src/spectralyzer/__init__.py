"""spectralyzer: judge trained neural networks from their weights alone.

>>> import spectralyzer
>>> details, summary = spectralyzer.analyze("model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("spectralyzer")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Analysis",
    "AnalysisOptions",
    "InputError",
    "SpectralyzerError",
    "__version__",
    "analyze",
    "probe",
    "run_analysis",
]

if TYPE_CHECKING:
    from .errors import InputError, SpectralyzerError
    from .pipeline import Analysis, AnalysisOptions, analyze, run_analysis
    from .probe import probe


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so that importing a submodule stays cheap."""
    if name in ("Analysis", "AnalysisOptions", "analyze", "run_analysis"):
        from . import pipeline as module
    elif name == "probe":
        # the function shares its name with its module: import_module, not ``from . import``
        # (which would ask this __getattr__ again), and bind the function over the module
        function = importlib.import_module(".probe", __name__).probe
        globals()["probe"] = function
        return function
    elif name in ("InputError", "SpectralyzerError"):
        from . import errors as module
    else:
        raise AttributeError(f"module 'spectralyzer' has no attribute {name!r}")
    return getattr(module, name)
