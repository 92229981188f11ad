"""FARMS (docs/theory.md section 6.1): windows, offsets and pooling against hand-computed
cases, and the property the method is for: alpha no longer drifts with the aspect ratio Q."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench_farms import QS, drift, drift_table
from spectralyzer.errors import OptionError
from spectralyzer.farms import batches, compute_farms_spectra
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.layers import Selection, plan
from spectralyzer.pipeline import make_options, run_analysis
from spectralyzer.windows import FarmsSettings, offsets, window_grid, window_views


def released_offsets(dim: int, size: int, k: int) -> list[int]:
    """HUST-AI-HYZ/FARMS sampling.py::fixed_sampling along one dimension, written out."""
    step = max(1, (dim - size) // (k - 1))
    count = min(k, max(1, (dim - size) // step + 1))
    return [min(i * step, dim - size) for i in range(count)]


@pytest.mark.parametrize(
    ("dim", "size", "k", "expected"),
    [
        (10, 4, 3, (0, 3, 6)),  # span 6, step 3: the last window ends at the edge
        (7, 4, 3, (0, 1, 2)),  # span 3 < K-1 ... step 1, span + 1 = 4 offsets capped at K = 3
        (23, 5, 4, (0, 6, 12, 18)),  # 23 is no multiple of 5: rows 23 never covered
        (6, 4, 5, (0, 1, 2)),  # fewer positions than K
        (4096, 2000, 15, tuple(range(0, 2097, 149))[:15]),  # released LLM setting
        (9, 9, 15, (0,)),  # window as large as the dimension
        (50, 10, 1, (0,)),  # K = 1: one window
    ],
)
def test_offsets_hand_computed(dim, size, k, expected):
    assert offsets(dim, size, k) == expected
    if k > 1:
        assert list(expected) == released_offsets(dim, size, k)


def test_window_shapes():
    # Q' = 1: square windows of min(n_req, N, M), as released
    grid = window_grid(23, 11, FarmsSettings(size=5, windows=4))
    assert (grid.rows, grid.cols) == (5, 5)
    assert grid.row_offsets == (0, 6, 12, 18) and grid.col_offsets == (0, 2, 4, 6)
    assert grid.count == 16
    big = window_grid(300, 200, FarmsSettings(size=2000))  # n_req above M: M x M windows
    assert (big.rows, big.cols, big.row_offsets, big.col_offsets) == (
        200,
        200,
        tuple(range(0, 101, 7))[:15],
        (0,),
    )
    # Q' = 2: 12 x 6 windows of a 20 x 8 matrix (c = min(6, 8, floor(20 / 2)))
    grid = window_grid(20, 8, FarmsSettings(size=6, windows=3, ratio=2.0))
    assert (grid.rows, grid.cols) == (12, 6)
    assert grid.row_offsets == (0, 4, 8) and grid.col_offsets == (0, 1, 2)
    # Q' larger than the matrix allows: the window shrinks to fit N
    grid = window_grid(9, 8, FarmsSettings(size=8, windows=2, ratio=3.0))
    assert (grid.rows, grid.cols) == (9, 3)


def test_window_views_are_the_hand_listed_submatrices():
    stack = torch.arange(2 * 7 * 5, dtype=torch.float64).reshape(2, 7, 5)
    grid = window_grid(7, 5, FarmsSettings(size=3, windows=2))  # offsets rows (0, 4), cols (0, 2)
    assert grid.row_offsets == (0, 4) and grid.col_offsets == (0, 2)
    views = window_views(stack, grid, 0, 8)
    expected = [stack[s, r : r + 3, c : c + 3] for s in range(2) for r in (0, 4) for c in (0, 2)]
    assert len(views) == 8
    for got, want in zip(views, expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(window_views(stack, grid, 5, 7)[0], stack[1, 0:3, 2:5])


def hand_pooled(w: np.ndarray, rows: list[int], cols: list[int], r: int, c: int) -> np.ndarray:
    """Squared singular values of the listed windows of one N x M matrix, pooled."""
    parts = [
        np.linalg.svd(w[i : i + r, j : j + c], compute_uv=False) ** 2 for i in rows for j in cols
    ]
    return np.sort(np.concatenate(parts))


def test_pooled_esd_of_linear_and_conv_layers_matches_numpy_svd():
    rng = np.random.default_rng(3)
    linear = rng.standard_t(3.0, size=(37, 13))  # (out, in); N = 37, M = 13
    conv = rng.normal(size=(11, 17, 2, 1))  # per-kernel-position slices 17 x 11 (N >= M)
    state = {"fc.weight": torch.from_numpy(linear), "conv.weight": torch.from_numpy(conv)}
    checkpoint = MemoryCheckpoint(state)
    specs, _ = plan(checkpoint.tensors(), Selection(min_evals=2))
    settings = FarmsSettings(size=6, windows=4)
    # 37 x 13: rows span 31 -> step 10 (0, 10, 20, 30); cols span 7 -> step 2 (0, 2, 4, 6)
    want_fc = hand_pooled(linear, [0, 10, 20, 30], [0, 2, 4, 6], 6, 6)
    # each 17 x 11 slice (W[:, :, i, 0] transposed): rows (0, 3, 6, 9), cols (0, 1, 2, 3, 4)[:4]
    slices = [conv[:, :, i, 0].T for i in range(2)]
    want_conv = np.sort(
        np.concatenate([hand_pooled(s, [0, 3, 6, 9], [0, 1, 2, 3], 6, 6) for s in slices])
    )
    for limit in (2**25, 36 * 5):  # one batch, or batches of 5 windows cutting through layers
        got = compute_farms_spectra(checkpoint, specs, settings, batch_elements=limit)
        np.testing.assert_allclose(got["fc.weight"].evals, want_fc, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["conv.weight"].evals, want_conv, rtol=1e-10, atol=1e-12)


def test_batches_bound_the_window_entries_and_cover_every_window_once():
    checkpoint = MemoryCheckpoint({f"l{i}.weight": torch.zeros(40 + i, 30) for i in range(3)})
    specs, _ = plan(checkpoint.tensors(), Selection())
    settings = FarmsSettings(size=10, windows=5)
    grids = {s.name: window_grid(s.N, s.M, settings) for s in specs}
    runs = list(batches(specs, grids, batch_elements=7 * 100))
    assert all(sum(stop - start for _, start, stop in run) <= 7 for run in runs)
    covered = {s.name: [] for s in specs}
    for run in runs:
        for spec, start, stop in run:
            covered[spec.name] += list(range(start, stop))
    assert all(covered[s.name] == list(range(grids[s.name].count)) for s in specs)
    assert sum(len(run) for run in runs) > len(runs)  # windows of several layers share a batch


def test_pipeline_fits_the_pooled_esd_and_records_the_settings():
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_t(3.0, size=(300, 120)))
    options = make_options(farms=True, farms_size=50, farms_windows=3, estimator="hill")
    result = run_analysis({"w.weight": w}, options)
    row = result.details.iloc[0]
    grid = window_grid(300, 120, FarmsSettings(50, 3))
    pooled = hand_pooled(w.numpy(), list(grid.row_offsets), list(grid.col_offsets), 50, 50)
    tail = pooled[pooled.size // 2 :]
    hill = 1 + tail.size / np.sum(np.log(tail / tail[0]))
    assert row["alpha"] == pytest.approx(hill, rel=1e-9)
    assert row["n_tail"] == tail.size == 9 * 50 // 2
    assert result.summary["estimator"] == {
        "name": "hill",
        "k": "median",
        "farms": {"size": 50, "windows": 3, "ratio": 1.0},
    }
    assert "farms(size=50,windows=3,ratio=1)" in result.tables()["layers"]["estimator"].iloc[0]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"farms": True, "farms_size": 1}, "farms_size"),
        ({"farms": True, "farms_windows": 0}, "farms_windows"),
        ({"farms": True, "farms_ratio": 0.5}, "farms_ratio"),
        ({"farms": True, "farms_ratio": math.inf}, "farms_ratio"),
        ({"farms_windows": 9}, "farms_windows"),  # a setting without --farms
    ],
)
def test_bad_farms_settings_name_their_field(values, field):
    with pytest.raises(OptionError) as err:
        make_options(**values)
    assert err.value.key == field


def test_alpha_drifts_with_q_plainly_and_not_with_farms():
    """Same entry law, Q = 1..8: plain alphas drift, FARMS alphas do not (the paper's argument).

    Limits read from bench/bench_farms.py on seeds 0-4 (hill; M = 256, 128 x 128
    windows, K = 5): plain drift 2.38 (Gaussian) and 1.90 (Student-t, 3 dof), FARMS
    drift 0.009 and 0.004; set at half the smallest plain drift and 5x the largest
    FARMS drift, checked here on seeds 5-9.
    """
    table = drift_table([5, 6, 7, 8, 9], m=256, size=128, windows=5, estimator="hill")
    for law, per_q in table.items():
        plain_means = [per_q[q][:, 0].mean() for q in QS]
        assert np.all(np.diff(plain_means) > 0), (law, plain_means)  # grows with Q
        assert drift(per_q, 0) > 0.9, law
        assert drift(per_q, 1) < 0.05, law
