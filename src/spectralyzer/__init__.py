"""spectralyzer: judge trained neural networks from their weights alone.

>>> import spectralyzer
>>> details, summary = spectralyzer.analyze("model.safetensors")  # doctest: +SKIP

The public functions are named for what they do (``analyze``, ``compare``,
``diff``, ``gate``, ``probe``, ``allocate``); the modules holding them are named for the
pipeline (``pipeline``, ``series``, ``layer_diff``, ``gate_policy``,
``probe_pipeline``), so importing a module never hides a function. Any result
renders as text with ``spectralyzer.render.render(result, fmt)``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("spectralyzer")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it (imported on first use: `--help` stays fast)
_PUBLIC = {
    "allocate": "allocate_pipeline",
    "Allocation": "allocate_pipeline",
    "AllocationSettings": "allocate_settings",
    "analyze": "pipeline",
    "run_analysis": "pipeline",
    "Analysis": "pipeline",
    "AnalysisOptions": "pipeline",
    "compare": "series",
    "Series": "series",
    "diff": "layer_diff",
    "Diff": "layer_diff",
    "gate": "gate_policy",
    "Policy": "gate_policy",
    "Verdict": "gate_policy",
    "probe": "probe_pipeline",
    "ProbeOptions": "probe_records",
    "ProbeResult": "probe_records",
    "Monitor": "monitor",
    "AlarmError": "alarms",
    "SpectralyzerError": "errors",
    "InputError": "errors",
    "OptionError": "errors",
}

__all__ = [
    "AlarmError",
    "Allocation",
    "AllocationSettings",
    "Analysis",
    "AnalysisOptions",
    "Diff",
    "InputError",
    "Monitor",
    "OptionError",
    "Policy",
    "ProbeOptions",
    "ProbeResult",
    "Series",
    "SpectralyzerError",
    "Verdict",
    "__version__",
    "allocate",
    "analyze",
    "compare",
    "diff",
    "gate",
    "probe",
    "run_analysis",
]  # = "__version__" and the keys of _PUBLIC (a test checks)

if TYPE_CHECKING:
    from .alarms import AlarmError
    from .allocate_pipeline import Allocation, allocate
    from .allocate_settings import AllocationSettings
    from .errors import InputError, OptionError, SpectralyzerError
    from .gate_policy import Policy, Verdict, gate
    from .layer_diff import Diff, diff
    from .monitor import Monitor
    from .pipeline import Analysis, AnalysisOptions, analyze, run_analysis
    from .probe_pipeline import probe
    from .probe_records import ProbeOptions, ProbeResult
    from .series import Series, compare


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so that importing a submodule stays cheap."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'spectralyzer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
