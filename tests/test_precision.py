"""``--precision float32``: float32 Gram products and eigensolver (docs/theory.md section 1.5).

The issue's promise: alphas, xmins and phases of MiniLM and the demo conv nets unchanged
(alpha within 1e-4). The GPU path (prefetching reader, device products) must give the
table of the CPU path.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from helpers import trained_like
from spectralyzer.demo import demo_model_path
from spectralyzer.errors import OptionError
from spectralyzer.pipeline import make_options, run_analysis


def _model(name: str) -> str:
    """MiniLM (the demo) or one of the MTCNN nets of facenet-pytorch (installed by .ci/setup)."""
    if name == "minilm":
        return str(demo_model_path())
    spec = importlib.util.find_spec("facenet_pytorch")
    assert spec is not None, "facenet-pytorch is installed by .ci/setup"
    return os.path.join(os.path.dirname(spec.origin), "data", f"{name}.pt")


@pytest.mark.parametrize("name", ["minilm", "pnet", "rnet", "onet"])
def test_float32_keeps_alphas_xmins_and_phases(name):
    source = _model(name)
    ref = run_analysis(source, make_options())
    f32 = run_analysis(source, make_options(precision="float32"))
    a, b = ref.details, f32.details
    assert list(a["name"]) == list(b["name"])
    np.testing.assert_allclose(b["alpha"], a["alpha"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(b["xmin"], a["xmin"], rtol=1e-4)
    np.testing.assert_allclose(b["log_spectral_norm"], a["log_spectral_norm"], atol=1e-5)
    assert list(a["phase"]) == list(b["phase"])
    assert list(a["rank_loss"]) == list(b["rank_loss"])
    assert ref.summary["precision"] == "float64" and f32.summary["precision"] == "float32"


def test_float32_eigenvalues_within_the_stated_error():
    """Every eigenvalue within M * eps32 * lambda_max of the float64 one (the stated bound)."""
    gen = torch.Generator().manual_seed(5)
    weights = {"w.weight": torch.randn(700, 300, generator=gen) * 0.02}
    weights["v.weight"] = weights["w.weight"] @ torch.randn(300, 300, generator=gen)
    ref = run_analysis(weights, make_options())
    f32 = run_analysis(weights, make_options(precision="float32"))
    for name in weights:
        exact, fast = ref.spectra[name].esd.evals, f32.spectra[name].esd.evals
        bound = 300 * float(torch.finfo(torch.float32).eps) * exact[-1]
        assert np.abs(fast - exact).max() <= bound
        assert np.abs(fast - exact).max() > 0  # really solved in float32


def test_precision_is_validated():
    with pytest.raises(OptionError, match="precision"):
        make_options(precision="float16")


def _trained_like() -> dict[str, torch.Tensor]:
    """Matrices with heavy tails, a low-rank signal and a planted trap (one huge entry)."""
    shapes = [(512, 256), (512, 256), (300, 300), (1024, 128)]
    return trained_like(shapes, rank=4, strength=0.3, trap=(0, 3, 7, 40.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_cuda_pipeline_gives_the_cpu_table(precision):
    torch.manual_seed(0)
    source = _trained_like()
    cpu = run_analysis(source, make_options(device="cpu", precision=precision, randomize=True))
    gpu = run_analysis(source, make_options(device="cuda", precision=precision, randomize=True))
    assert gpu.summary["device"] == "cuda"
    a, b = cpu.details, gpu.details
    assert list(a["name"]) == list(b["name"])
    tol = 1e-6 if precision == "float64" else 1e-4
    np.testing.assert_allclose(b["alpha"], a["alpha"], atol=tol)
    assert list(a["phase"]) == list(b["phase"])
    assert list(a["num_traps"]) == list(b["num_traps"])
