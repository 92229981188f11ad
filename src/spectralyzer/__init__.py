"""spectralyzer: judge trained neural networks from their weights alone.

>>> import spectralyzer
>>> details, summary = spectralyzer.analyze("model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    from .hessian.probe import probe
    from .pipeline import Analysis, AnalysisOptions, analyze, run_analysis


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so that importing a submodule stays cheap."""
    if name in ("Analysis", "AnalysisOptions", "analyze", "run_analysis"):
        from . import pipeline as module
    elif name == "probe":
        from .hessian import probe as module
    elif name in ("InputError", "SpectralyzerError"):
        from . import errors as module
    else:
        raise AttributeError(f"module 'spectralyzer' has no attribute {name!r}")
    return getattr(module, name)
