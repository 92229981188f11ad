"""Odd but valid weights are analysed or skipped with a reason, never a traceback (issue 11, item 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import esd
from spectralyzer.cli import main
from spectralyzer.engine import compute_spectra
from spectralyzer.io.base import TensorInfo
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.layers import Selection, plan
from spectralyzer.pipeline import make_options, run_analysis


def gaussian(*shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_weights_near_1e200_are_flagged_as_eigenvalue_overflow_beside_good_layers():
    # lambda ~ 1e400 lies beyond float64: unscaled, the Gram matrix overflowed and
    # the eigensolver raised LinAlgError for the whole model
    weights = {
        "huge.weight": gaussian(64, 32, dtype=torch.float64) * 1e200,
        "ok.weight": gaussian(64, 32),
    }
    details = run_analysis(weights, make_options(device="cpu")).details.set_index("name")
    assert details.loc["huge.weight", "warning"] == "eigenvalue-overflow"
    assert math.isnan(details.loc["huge.weight", "alpha"])
    assert math.isfinite(details.loc["ok.weight", "alpha"])


def test_large_float64_weights_are_scaled_before_the_gram_product():
    # 1e100 entries: lambda ~ 1e200 is representable, but the randomised copy's float32
    # Gram matrix overflowed (LinAlgError); scaled by a power of two, both are exact
    # (the shuffled copy's eigenvalues sum to its trace, the same ||W||_F^2)
    w = gaussian(64, 32, dtype=torch.float64)
    checkpoint = MemoryCheckpoint({"big.weight": w * 1e100})
    specs, _ = plan(checkpoint.tensors(), Selection())
    spectra = compute_spectra(checkpoint, specs, randomize=True)["big.weight"]
    np.testing.assert_allclose(spectra.esd.evals, esd(w.numpy()) * 1e200, rtol=1e-10)
    rand = spectra.randomized
    frobenius = (w.numpy() ** 2).sum() * 1e200
    np.testing.assert_allclose(rand.total, frobenius, rtol=1e-10)
    np.testing.assert_allclose(rand.top.sum(), frobenius, rtol=1e-10)


@pytest.mark.parametrize("shape", [(16, 16, 0, 3), (16, 16, 3, 0), (0, 32), (32, 0), (0, 16, 3, 3)])
def test_zero_size_dimension_is_skipped_with_a_reason(shape):
    infos = [
        TensorInfo("bad.weight", shape, "float32"),
        TensorInfo("ok.weight", (64, 32), "float32"),
    ]
    specs, skipped = plan(infos, Selection(min_evals=1))
    assert [spec.name for spec in specs] == ["ok.weight"]
    dims = "x".join(map(str, shape))
    assert [(s.name, s.reason) for s in skipped] == [
        ("bad.weight", f"empty: shape {dims} has a dimension of size 0")
    ]


def test_conv_with_zero_size_kernel_dim_beside_good_layers_is_analysed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"conv.weight": torch.empty(16, 16, 0, 3), "ok.weight": gaussian(64, 32)}, path)
    result = CliRunner().invoke(main, ["analyze", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"conv.weight"' in result.stdout and "dimension of size 0" in result.stdout
    assert "Traceback" not in result.output
