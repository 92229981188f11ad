"""Property-based checks of the analysis on random state dicts (hypothesis).

Random state dicts hold 1 to 5 tensors: 2-D weights, 4-D conv kernels and 1-D
biases, in float32/float16/bfloat16/float64, filled with Gaussian, Student-t,
constant or mostly-zero values, sometimes with one NaN or Inf entry.  The
properties are invariants that must hold for every input, whatever the numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import spectralyzer
from spectralyzer.engine import compute_spectra
from spectralyzer.fit import PHASES
from spectralyzer.fit.powerlaw import XMIN_FLOOR
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.layers import CONV_MODES, Selection, plan, to_matrices
from spectralyzer.tables import SUMMARY_MEANS

StateDict = dict[str, torch.Tensor]

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FILLS = ("gaussian", "student-t", "constant", "sparse")
CLIP = 1000.0  # |entries| <= CLIP, so 16 * CLIP stays finite in float16 (max 65504)
# sizes, weighted towards matrices with at least min_evals = 8 columns (the rest are skipped)
DIM_2D = st.integers(1, 80) | st.integers(8, 80)
CHANNELS = st.integers(1, 24) | st.integers(8, 24)
NAMES_2D = (
    "layer{i}.weight",
    "model.embed{i}.weight",
    "h.{i}.attn.c_attn.weight",
    "rnn.weight_hh_l{i}",
)

# columns of a row that are counts, labels or shape facts rather than measured numbers
STRUCTURE = ("name", "role", "layer_type", "shape", "N", "M", "Q", "num_slices", "num_evals")
TEXT = ("phase", "warning", "tail_law")
FIT_COLUMNS = ("alpha", "alpha_weighted", "xmin", "xmax", "D", "sigma", "log_alpha_norm")
NORM_COLUMNS = ("log_norm", "log_spectral_norm", "stable_rank")  # NaN when lambda_max == 0
MP_COLUMNS = ("sigma_mp", "lambda_plus", "mp_softrank")
TRAP_COLUMNS = ("num_traps", "rand_distance")
FLOW_COLUMNS = ("flow_jump", "flow_z")  # NaN outside a stack of blocks (spectralyzer.flow)
TAIL_COLUMNS = (  # the tail tests: run on every fitted layer when asked, else NaN
    "R_exponential",
    "p_exponential",
    "R_lognormal",
    "p_lognormal",
    "R_truncated",
    "p_truncated",
    "tpl_alpha",
    "tpl_lambda",
)
# metrics that do not change when every weight is multiplied by the same constant
SCALE_FREE = ("alpha", "D", "stable_rank", "entropy", "num_spikes", "phase")

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _values(fill: str, shape: tuple[int, ...], seed: int, constant: float) -> np.ndarray:
    """Entries of one tensor, float64, |x| <= CLIP."""
    rng = np.random.default_rng(seed)
    if fill == "gaussian":
        x = rng.normal(0.0, 1.0, size=shape)
    elif fill == "student-t":
        x = rng.standard_t(df=1.5, size=shape)
    elif fill == "constant":
        x = np.full(shape, constant)
    else:  # mostly zeros: about 5% Gaussian entries
        x = rng.normal(size=shape) * (rng.uniform(size=shape) < 0.05)
    return np.clip(x, -CLIP, CLIP)


@st.composite
def tensors(draw: st.DrawFn, index: int) -> tuple[str, torch.Tensor]:
    """One named tensor: a 2-D weight, a 4-D conv kernel or a 1-D bias."""
    kind = draw(st.sampled_from(("2d", "2d", "conv", "bias")))
    if kind == "2d":
        name = draw(st.sampled_from(NAMES_2D)).format(i=index)
        shape: tuple[int, ...] = (draw(DIM_2D), draw(DIM_2D))
    elif kind == "conv":
        name = f"conv{index}.weight"
        k = draw(st.integers(1, 3))
        shape = (draw(CHANNELS), draw(CHANNELS), k, k)
    else:
        name = f"layer{index}.bias"
        shape = (draw(st.integers(1, 80)),)
    fill = draw(st.sampled_from(FILLS))
    constant = draw(st.sampled_from((0.0, 1.0, -0.375, 3.0, 1e-3)))
    x = _values(fill, shape, draw(st.integers(0, 2**32 - 1)), constant)
    poison = draw(st.sampled_from((None, None, None, None, "nan", "inf", "-inf")))
    if poison:
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = float(poison)
    return name, torch.from_numpy(x).to(draw(st.sampled_from(DTYPES)))


@st.composite
def state_dicts(draw: st.DrawFn) -> StateDict:
    """1 to 5 named tensors with distinct names."""
    count = draw(st.integers(1, 5))
    return dict(draw(tensors(i)) for i in range(count))


def _plan(sd: StateDict, conv_mode: str = "slices") -> tuple[list, list]:
    with MemoryCheckpoint(sd) as checkpoint:
        return plan(checkpoint.tensors(), Selection(conv_mode=conv_mode))


def _analyze_or_none(sd: StateDict, **kwargs: object) -> tuple[pd.DataFrame, dict] | None:
    """``analyze(sd)``; None (after checking the error) when nothing is analysable."""
    specs, _ = _plan(sd, str(kwargs.get("conv_mode", "slices")))
    event(f"{len(specs)} analysable matrices")
    if not specs:
        with pytest.raises(spectralyzer.InputError):
            spectralyzer.analyze(sd, **kwargs)
        return None
    return spectralyzer.analyze(sd, **kwargs)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))


@SETTINGS
@given(sd=state_dicts(), randomize=st.booleans(), conv_mode=st.sampled_from(CONV_MODES))
def test_every_esd_is_sorted_non_negative_and_complete(
    sd: StateDict, randomize: bool, conv_mode: str
) -> None:
    """ESDs: ascending, >= 0, num_slices * M values, trace = ||W||_F^2; empty iff non-finite."""
    specs, _ = _plan(sd, conv_mode)
    with MemoryCheckpoint(sd) as checkpoint:
        spectra = compute_spectra(checkpoint, specs, randomize=randomize)
    assert sorted(spectra) == sorted(s.name for s in specs)  # keyed by name, in batch order
    for spec in specs:
        weights = to_matrices(sd[spec.source], spec).double()  # the part a split row is
        finite = bool(torch.isfinite(weights).all())
        layer = spectra[spec.name]
        assert layer.spec == spec
        assert (layer.randomized is not None) == randomize
        esd = layer.esd
        assert esd.finite == finite
        if not finite:
            assert esd.evals.size == 0
            assert not randomize or not layer.randomized.finite
            continue
        evals = esd.evals
        assert evals.dtype == np.float64 and evals.shape == (spec.num_slices * spec.M,)
        assert np.all(np.isfinite(evals)) and np.all(evals >= 0)
        assert np.all(np.diff(evals) >= 0)
        # trace of W^T W: exact sum of squares up to float64 rounding of the Gram/eigensolver
        frob = float((weights**2).sum())
        slack = 1e-12 * spec.num_evals * max(float(esd.evals[-1]), 1e-300)
        assert abs(esd.evals.sum() - frob) <= 1e-9 * frob + slack
        if randomize:  # a shuffle keeps every entry: the same trace, the same number of evals
            rand = layer.randomized
            assert rand.finite and rand.size == spec.num_slices * spec.M
            assert abs(rand.total - frob) <= 1e-9 * frob + slack
            assert 0 <= rand.count <= rand.size and np.all(np.diff(rand.top) <= 0)
            assert rand.top.sum() <= rand.total * (1 + 1e-9) + rand.top.size * rand.error


def _cross_attention_too_small() -> StateDict:
    """A cross-attention c_attn (k|v of width 1 each): both parts are skipped, so the tensor
    is accounted for by its parts' skip entries (drawn by a fresh CI run)."""
    return {"layer0.weight": torch.ones(8, 8), "h.1.attn.c_attn.weight": torch.ones(1, 2)}


@SETTINGS
@given(sd=state_dicts(), conv_mode=st.sampled_from(CONV_MODES), seed=st.integers(0, 2**16))
@example(sd=_cross_attention_too_small(), conv_mode="slices", seed=0)
def test_rows_are_exactly_the_planned_matrices(sd: StateDict, conv_mode: str, seed: int) -> None:
    """One row per planned matrix, in plan order; 2+-D tensors are rows or skipped, 1-D neither."""
    result = _analyze_or_none(sd, randomize=True, seed=seed, conv_mode=conv_mode)
    if result is None:
        return
    details, summary = result
    specs, skipped = _plan(sd, conv_mode)
    assert list(details["name"]) == [s.name for s in specs]
    assert summary["num_layers"] == len(details) == len(specs)
    skipped_names = [s["name"] for s in summary["skipped"]]
    assert skipped_names == [s.name for s in skipped]
    assert summary["num_skipped"] == len(skipped)
    rows = set(details["name"])
    assert not rows & set(skipped_names)
    rows |= {s.source for s in specs}  # a fused c_attn of shape (n, 3n) becomes :q, :k, :v
    parts = {name.rsplit(":", 1)[0] for name in skipped_names if ":" in name}  # skipped parts
    for name, tensor in sd.items():
        if tensor.ndim >= 2:
            assert name in rows or name in skipped_names or name in parts, name
        else:
            assert name not in rows and name not in skipped_names, name
    for spec, row in zip(specs, details.itertuples(index=False), strict=True):
        assert (row.N, row.M, row.num_slices, row.num_evals) == (
            spec.N,
            spec.M,
            spec.num_slices,
            spec.num_evals,
        )
        if spec.part is None:
            assert tuple(row.shape) == tuple(sd[spec.name].shape)


def _fused_with_one_nan() -> StateDict:
    """A GPT-2 ``c_attn`` with a NaN in its q part: only the q row is non-finite (found by
    this test once fused tensors were split)."""
    w = torch.randn(40, 120, generator=torch.Generator().manual_seed(0))
    w[0, 0] = math.nan
    return {"h.0.attn.c_attn.weight": w}


@SETTINGS
@given(sd=state_dicts(), seed=st.integers(0, 2**16), tail_tests=st.booleans())
@example(sd=_fused_with_one_nan(), seed=3, tail_tests=False)
def test_every_metric_is_finite_or_explained(sd: StateDict, seed: int, tail_tests: bool) -> None:
    """Which columns may be NaN, and when (finite weights, randomize=True).

    * non-finite weights: every metric NaN (integer counts 0), warning ``nonfinite-weights``, phase unknown;
    * alpha NaN <=> warning ``fit-failed``; then every power-law-derived column
      (FIT_COLUMNS) is NaN and n_tail == 0; alpha finite => alpha >= 1 and all
      FIT_COLUMNS finite;
    * lambda_max is finite; NORM_COLUMNS are NaN exactly when lambda_max == 0
      (all-zero weights: log of 0, 0/0), and then the fit has failed;
    * MP_COLUMNS are NaN exactly when fewer than 2 eigenvalues are above the
      numerical-zero tolerance (num_evals - rank_loss < 2): MP needs a bulk;
    * entropy, num_traps and rand_distance are always finite;
    * with tail_tests, TAIL_COLUMNS are finite and tail_law set exactly when alpha is;
      without, they are NaN and tail_law is empty;
    * FLOW_COLUMNS are NaN when alpha is;
    * any NaN in a numeric column other than TAIL_COLUMNS and FLOW_COLUMNS comes
      with a non-empty warning.
    """
    result = _analyze_or_none(sd, randomize=True, seed=seed, tail_tests=tail_tests)
    if result is None:
        return
    details, _ = result
    numeric = [c for c in details.columns if c not in STRUCTURE + TEXT]
    specs = {spec.name: spec for spec in _plan(sd)[0]}
    for row in details.to_dict(orient="records"):
        codes = set(filter(None, row["warning"].split(";")))
        assert row["phase"] in (*PHASES, "unknown")
        spec = specs[row["name"]]  # a part of a fused tensor (name:q) is its own matrix
        if not bool(torch.isfinite(to_matrices(sd[spec.source], spec)).all()):
            assert "nonfinite-weights" in codes and row["phase"] == "unknown"
            for column in numeric:  # counts (n_tail, rank_loss, ...) are 0, the rest NaN
                value = row[column]
                assert value == 0 if isinstance(value, (int, np.integer)) else math.isnan(value)
            continue
        assert "nonfinite-weights" not in codes
        fitted = _finite(row["alpha"])
        assert fitted != ("fit-failed" in codes)
        if fitted:
            assert row["alpha"] >= 1.0
            assert all(_finite(row[c]) for c in FIT_COLUMNS), row
            assert row["n_tail"] >= 1
        else:
            assert all(not _finite(row[c]) for c in FIT_COLUMNS) and row["n_tail"] == 0
        assert _finite(row["lambda_max"])
        nonzero = row["lambda_max"] > 0
        assert all(_finite(row[c]) == nonzero for c in NORM_COLUMNS), row
        assert nonzero or not fitted
        has_bulk = row["num_evals"] - row["rank_loss"] >= 2
        assert all(_finite(row[c]) == has_bulk for c in MP_COLUMNS), row
        assert 0.0 <= row["entropy"] <= 1.0 + 1e-12
        assert all(_finite(row[c]) for c in TRAP_COLUMNS) and 0.0 <= row["rand_distance"] <= 1.0
        assert fitted or all(not _finite(row[c]) for c in FLOW_COLUMNS)
        tested = tail_tests and fitted
        assert all(_finite(row[c]) == tested for c in TAIL_COLUMNS), row
        assert bool(row["tail_law"]) == tested
        if tested:
            assert row["R_truncated"] <= 1e-9 and 0.0 <= row["p_lognormal"] <= 1.0
        if any(not _finite(row[c]) for c in numeric if c not in TAIL_COLUMNS + FLOW_COLUMNS):
            assert codes, row


@SETTINGS
@given(sd=state_dicts(), randomize=st.booleans())
def test_summary_means_are_over_fitted_rows(sd: StateDict, randomize: bool) -> None:
    """Each summary mean is the mean of the finite values of that column over finite-alpha rows."""
    result = _analyze_or_none(sd, randomize=randomize)
    if result is None:
        return
    details, summary = result
    fitted = details[np.isfinite(details["alpha"].to_numpy(dtype=float))]
    assert summary["num_layers"] == len(details)
    assert summary["num_fit_failed"] == len(details) - len(fitted)
    for column in SUMMARY_MEANS:
        values = [v for v in fitted[column] if _finite(v)]
        if values:
            assert summary[column] == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-300)
        else:
            assert math.isnan(summary[column])
    assert sum(summary["phases"].values()) == len(details)


@SETTINGS
@given(sd=state_dicts(), seed=st.integers(0, 2**16), order=st.randoms(use_true_random=False))
def test_analysis_is_deterministic_and_order_free(
    sd: StateDict, seed: int, order: random.Random
) -> None:
    """Same input and seed -> identical frames; reordering the dict changes nothing (rows
    come in natural order of their names, whatever the file order)."""
    result = _analyze_or_none(sd, randomize=True, seed=seed)
    if result is None:
        return
    details, summary = result
    again, summary_again = spectralyzer.analyze(sd, randomize=True, seed=seed)
    pd.testing.assert_frame_equal(details, again)
    timings, timings_again = summary.pop("timings"), summary_again.pop("timings")
    assert timings.keys() == timings_again.keys()  # seconds differ from run to run; nothing else
    assert _nan_equal(summary, summary_again)
    names = list(sd)
    order.shuffle(names)
    shuffled, _ = spectralyzer.analyze({n: sd[n] for n in names}, randomize=True, seed=seed)
    assert list(shuffled["name"]) == list(details["name"])
    pd.testing.assert_frame_equal(
        details.set_index("name").sort_index(), shuffled.set_index("name").sort_index()
    )


def _nan_equal(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN, through dicts and lists."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_nan_equal, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _scaled(sd: StateDict, c: float) -> StateDict:
    """Every tensor times c (a power of 2: exact in every float dtype unless it overflows)."""
    return {name: t * c for name, t in sd.items()}


def _check_scale_free(row: pd.Series, scaled: pd.Series, c: float) -> None:
    for column in SCALE_FREE:
        a, b = row[column], scaled[column]
        if isinstance(a, str) or not _finite(a):
            assert a == b or (not _finite(a) and not _finite(b)), (column, a, b)
        else:
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), (column, a, b)
    expected = row["log_spectral_norm"] + 2 * math.log10(c)
    if _finite(row["log_spectral_norm"]):
        assert scaled["log_spectral_norm"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    else:
        assert not _finite(scaled["log_spectral_norm"])


@SETTINGS
@given(sd=state_dicts(), power=st.integers(1, 4))
def test_scale_invariance(sd: StateDict, power: int) -> None:
    """W -> c W (c = 2^power) leaves SCALE_FREE unchanged and adds 2 log10 c to log_spectral_norm.

    Asserted for every row except those with an eigenvalue in ``(1e-10 / c^2, 1e-10]``
    (XMIN_FLOOR): scaling moves such an eigenvalue across the power-law fit's
    absolute floor, kept on purpose (weightwatcher's and powerlaw's convention;
    the relative numerical-zero tolerance applies above it).
    """
    result = _analyze_or_none(sd)
    if result is None:
        return
    details, _ = result
    c = 2.0**power
    scaled, _ = spectralyzer.analyze(_scaled(sd, c))
    assert list(scaled["name"]) == list(details["name"])
    specs, _ = _plan(sd)
    with MemoryCheckpoint(sd) as checkpoint:
        spectra = compute_spectra(checkpoint, specs)
    for (_, row), (_, other) in zip(details.iterrows(), scaled.iterrows(), strict=True):
        evals = spectra[row["name"]].esd.evals
        if np.any((evals > XMIN_FLOOR / c**2) & (evals <= XMIN_FLOOR)):
            event("row with an eigenvalue near the absolute floor not compared")
            continue
        _check_scale_free(row, other, c)


@pytest.mark.parametrize("make", [lambda: torch.ones(80, 30)], ids=["ones-80x30"])
def test_scale_invariance_of_rank_deficient_layers(make: Callable[[], torch.Tensor]) -> None:
    """Minimal reproducer: a constant (rank-1) matrix and the same matrix times 1024."""
    sd = {"a.weight": make()}
    details, _ = spectralyzer.analyze(sd)
    scaled, _ = spectralyzer.analyze(_scaled(sd, 1024.0))
    _check_scale_free(details.iloc[0], scaled.iloc[0], 1024.0)


def test_finite_float64_weights_are_not_reported_nonfinite() -> None:
    """Minimal reproducer: a Gaussian float64 matrix with one finite entry of 1e39."""
    w = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w[0, 0] = 1e39
    details, _ = spectralyzer.analyze({"a.weight": w})
    assert "nonfinite-weights" not in details.loc[0, "warning"]
    assert math.isfinite(details.loc[0, "lambda_max"])
