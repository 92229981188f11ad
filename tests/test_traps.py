"""Correlation traps from the top of the shuffled spectrum (docs/theory.md section 3.8).

The fast path (a block Krylov space of the shuffled copy's Gram matrix, settled against
the MP fit) must give the table of the reference path (the whole float64 spectrum of the
same shuffled copy) on MiniLM, planted traps and heavy-tailed low-rank matrices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.integrate import quad

from helpers import esd, gaussian, spiked, trained_like
from spectralyzer import randomized
from spectralyzer.demo import demo_model_path
from spectralyzer.engine import compute_spectra
from spectralyzer.fit import traps
from spectralyzer.fit.mp import fit_mp, fit_mp_top, mp_cdf, mp_density
from spectralyzer.fit.traps import Check, ShuffledTop, rand_cdf, rand_distance, trap_fit
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.layers import Selection, plan, to_matrices
from spectralyzer.pipeline import make_options, run_analysis
from spectralyzer.shuffle import Shuffler
from spectralyzer.top_eigen import GramKrylov


@pytest.mark.parametrize(("N", "M"), [(300, 300), (600, 300), (5000, 100)])
def test_mp_cdf_is_the_integral_of_the_density(N, M):
    sigma2 = 0.37
    lo, hi = sigma2 * (np.sqrt(N) - np.sqrt(M)) ** 2, sigma2 * (np.sqrt(N) + np.sqrt(M)) ** 2
    xs = np.linspace(lo, hi, 12)[1:-1]
    integral = [quad(lambda t: mp_density(np.array([t]), sigma2, N, M)[0], lo, x)[0] for x in xs]
    np.testing.assert_allclose(mp_cdf(xs, sigma2, N, M), integral, atol=1e-9)
    assert list(mp_cdf(np.array([lo * 0.9 - 1, hi * 1.1]), sigma2, N, M)) == [0.0, 1.0]


def _spectra() -> dict[str, tuple[np.ndarray, int, int]]:
    t = torch.distributions.StudentT(2.5).sample((800, 400)).double().numpy()
    return {
        "gaussian": (esd(gaussian(500, 250, seed=1)), 500, 250),
        "spiked": (esd(spiked(800, 400, [30.0, 40.0, 60.0], seed=2)), 800, 400),
        "student-t": (esd(t), 800, 400),
    }


@pytest.mark.parametrize("case", ["gaussian", "spiked", "student-t"])
def test_the_fit_from_the_top_is_the_fit_from_the_whole_spectrum(case):
    evals, N, M = _spectra()[case]
    whole = fit_mp(evals, N, M)
    desc = evals[::-1].copy()
    known = desc[: whole.num_spikes + 1]  # the spikes and the first eigenvalue below
    top = fit_mp_top(known, float(evals.sum()), evals.size, N, M)
    assert top.num_spikes == whole.num_spikes
    for field in ("sigma_mp", "lambda_plus", "spike_threshold", "mp_softrank"):
        assert getattr(top, field) == pytest.approx(getattr(whole, field), rel=1e-12), field
    # without an eigenvalue known below the threshold the count is not settled
    assert fit_mp_top(desc[: whole.num_spikes], float(evals.sum()), evals.size, N, M) is None


def test_a_constant_matrix_has_no_bulk_and_no_trap():
    evals = esd(np.full((60, 30), 0.5))
    fit = fit_mp_top(evals[::-1].copy(), 60 * 30 * 0.25, 30, 60, 30, error=1e-12 * evals[-1])
    assert np.isnan(fit.sigma_mp) and fit.num_spikes == 0


def _brute_distance(evals, top, fit, N, M):
    """sup |F_ESD - F_rand| on both sides of every eigenvalue and trap, and a fine grid."""
    grid = np.concatenate((evals, top.top, np.linspace(0, evals[-1] * 1.2, 20001)))
    grid = np.concatenate((grid, grid * (1 - 1e-12), grid * (1 + 1e-12)))
    ours = np.searchsorted(evals, grid, side="right") / evals.size
    return np.abs(ours - rand_cdf(grid, top, fit, N, M)).max()


@pytest.mark.parametrize("case", ["gaussian", "spiked", "student-t"])
def test_rand_distance_is_the_sup_distance_to_the_fitted_law(case):
    evals, N, M = _spectra()[case]
    shuffled = esd(
        np.random.default_rng(4).permutation(gaussian(N, M, seed=9).ravel()).reshape(N, M)
    )
    top = ShuffledTop(shuffled[::-1].copy(), float(shuffled.sum()), M, M, 0.0)
    fit = trap_fit(top, N, M)
    distance = rand_distance(evals, top, fit, N, M)
    assert distance == pytest.approx(_brute_distance(evals, top, fit, N, M), abs=1e-9)
    assert 0 <= distance <= 1


def test_a_gaussian_is_close_to_its_shuffled_law_and_a_spiked_matrix_is_not():
    def distance(w):
        n, m = w.shape
        shuffled = esd(np.random.default_rng(0).permutation(w.ravel()).reshape(n, m))
        top = ShuffledTop(shuffled[::-1].copy(), float((w**2).sum()), m, m, 0.0)
        return rand_distance(esd(w), top, trap_fit(top, n, m), n, m)

    assert distance(gaussian(1000, 500, seed=3)) < 0.02
    low_rank_heavy = spiked(1000, 500, list(np.linspace(40, 200, 60)), sigma=0.3, seed=4)
    assert distance(low_rank_heavy) > 0.3


def test_ritz_values_are_lower_bounds_that_reach_the_top_eigenvalues():
    w = torch.from_numpy(spiked(900, 400, [60.0, 80.0], seed=6))  # far above the edge 2500
    exact = np.linalg.eigvalsh((w.T @ w).numpy())[::-1]
    space = GramKrylov(w, 16, seed=0)
    space.extend(10)
    theta, residuals = (t.numpy() for t in space.ritz(40))
    assert np.all(theta <= exact[: theta.size] * (1 + 1e-12))  # Cauchy interlacing
    np.testing.assert_allclose(theta[:2], exact[:2], rtol=1e-10)  # the spikes, converged
    assert residuals[0] < 1e-6 * theta[0]


def test_a_float32_space_keeps_its_basis_orthonormal_and_its_projection_exact():
    """A float32 copy gets a float32 basis: after 8 blocks it is orthonormal to 5e-6 (one
    Gram-Schmidt pass instead of two: 1.6e-5) and the Ritz values assembled from the
    Gram-Schmidt coefficients equal those of Q^T G Q formed in float64 to 1e-6 lambda_max
    (docs/theory.md 3.8 quotes 6e-7 and 1e-7), far inside the 10 sqrt(N) eps32 lambda_max
    the fit is given."""
    x = torch.randn(2816, 1024, generator=torch.Generator().manual_seed(3)) / 53
    space = GramKrylov(x, 16, seed=0, capacity=1024 // 3)
    space.extend(8)
    assert space.basis.dtype == torch.float32
    theta, _ = space.ritz(32)
    q, x64 = space.basis[:, : space.dimension].double(), x.double()
    assert float((q.T @ q - torch.eye(q.shape[1], dtype=torch.float64)).abs().max()) < 5e-6
    explicit = q.T @ (x64.T @ (x64 @ q))
    exact = torch.linalg.eigvalsh((explicit + explicit.T) / 2).flip(0)[:32]
    assert float((theta - exact).abs().max()) < 1e-6 * float(theta[0])


def test_a_matrix_is_multiplied_chunk_by_chunk_to_the_same_products(monkeypatch):
    from spectralyzer import top_eigen

    monkeypatch.setattr(top_eigen, "CHUNK_BYTES", 97 * 40 * 8)  # 97 rows: 31 uneven chunks
    x = torch.randn(3000, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = torch.randn(40, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chunked = GramKrylov(x, 4, seed=0)._gram_times(q)
    torch.testing.assert_close(chunked, x.T @ (x @ q), rtol=1e-12, atol=0)
    monkeypatch.setattr(top_eigen, "ONE_PASS_FROM", 10**9)  # the direct products, to compare
    direct = GramKrylov(x, 4, seed=0)._gram_times(q)
    torch.testing.assert_close(direct, x.T @ (x @ q), rtol=1e-12, atol=0)


def test_the_rise_to_come_of_a_geometric_approach_is_what_is_left():
    limit, a, q = 10.0, 0.8, 0.4
    theta = [np.array([12.0, limit - a * q**j]) for j in range(3)]
    looks = (Check(theta[0], 1), Check(theta[1], 1))
    assert traps.rise_to_come(theta[2], 1, looks) == pytest.approx(limit - theta[2][1], rel=1e-12)
    assert traps.rise_to_come(theta[2], 1, None) is None  # no history yet
    assert traps.rise_to_come(theta[2], 1, (Check(theta[0], 0), looks[1])) is None  # new trap
    growing = np.array([12.0, theta[1][1] + 1.01 * (theta[1][1] - theta[0][1])])
    assert traps.rise_to_come(growing, 1, looks) is None  # rises that do not shrink
    slow = np.array([12.0, theta[1][1] + 0.81 * (theta[1][1] - theta[0][1])])
    assert traps.rise_to_come(slow, 1, looks) is None  # shrinking, but not by RISE_RATIO


def test_settling_by_the_rise_is_never_later_and_counts_the_same_traps(monkeypatch):
    """On Gaussian copies with 0, 1 and 2 planted traps, settling by the Ritz values' rise
    as well never needs more vectors than by residual alone, needs fewer on some, and
    both routes count the traps of the whole float64 spectrum."""
    spaces: list[GramKrylov] = []

    def recorded(*args, **kwargs) -> GramKrylov:
        spaces.append(GramKrylov(*args, **kwargs))
        return spaces[-1]

    monkeypatch.setattr(randomized, "GramKrylov", recorded)
    gen, found = torch.Generator().manual_seed(11), []
    for planted in ([], [2.2], [6.0, 2.4]):
        w = torch.randn(2816, 1024, generator=gen)
        for j, size in enumerate(planted):  # in units of (N M)^(1/4), the trap transition
            w[5 + 40 * j, 9 + 30 * j] = size * (2816 * 1024) ** 0.25 / 1.5
        copy = Shuffler(3)(w.unsqueeze(0), torch.float32)
        total = float((copy.double() ** 2).sum())
        exact = copy.double()[0]
        evals = torch.linalg.eigvalsh(exact.T @ exact).numpy()
        reference = trap_fit(randomized.full_top(evals, total, 1024, 1024), 2816, 1024)
        sizes = {}
        for route, safety in (("rise", traps.SAFETY), ("residual", np.inf)):
            monkeypatch.setattr(traps, "SAFETY", safety)
            top = randomized.krylov_top(copy, total, 1024, 0)
            assert top is not None and trap_fit(top, 2816, 1024).num_spikes == reference.num_spikes
            sizes[route] = spaces[-1].dimension
        assert sizes["rise"] <= sizes["residual"], (planted, sizes)
        found.append((reference.num_spikes, sizes["rise"] < sizes["residual"]))
    assert [count for count, _ in found] == [0, 1, 2] and any(sooner for _, sooner in found)


def _with_path(monkeypatch, krylov: bool) -> None:
    """The Krylov path for every single matrix, or never (the whole float64 spectrum)."""
    monkeypatch.setattr(randomized, "KRYLOV_MIN_M", 0 if krylov else 10**9)
    monkeypatch.setattr(randomized, "KRYLOV_MAX_FRACTION", 2)
    monkeypatch.setattr(randomized, "FULL_DTYPE", torch.float64)


def _planted() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    out = {}
    for i, count in enumerate([0, 1, 3]):
        w = torch.randn(2000, 800, generator=gen) * 0.02
        for j in range(count):
            w[17 * j + 3, 31 * j + 5] = 3.0 + j  # outsized entries survive shuffling
        out[f"planted.{i}.weight"] = w
    return out


def _trained_like() -> dict[str, torch.Tensor]:
    """Heavy-tailed noise with a low-rank signal at 768-1024 columns, one with an outsized entry."""
    shapes = [(1200, 800), (2816, 1024), (1024, 1024), (3000, 768)]
    return trained_like(shapes, rank=6, strength=0.2, trap=(1, 5, 9, 25.0))


# MiniLM (M = 384) takes the Krylov path by default; facenet's nets and the MLP have
# M <= 256, where it has too few vectors to settle and they keep the whole spectrum.
SOURCES = {
    "minilm": lambda: str(demo_model_path()),
    "planted": _planted,
    "trained-like": _trained_like,
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_krylov_path_gives_the_reference_table(name, monkeypatch):
    source = SOURCES[name]()
    options = make_options(randomize=True, seed=2)
    _with_path(monkeypatch, krylov=False)
    reference = run_analysis(source, options).details
    _with_path(monkeypatch, krylov=True)
    settled = []
    krylov = randomized.krylov_top
    monkeypatch.setattr(
        randomized, "krylov_top", lambda *a: settled.append(krylov(*a)) or settled[-1]
    )
    fast = run_analysis(source, options).details
    # the comparison is not vacuous: the Krylov path settled (no fallback) for most matrices
    assert len(settled) >= 3 and sum(top is not None for top in settled) >= 0.9 * len(settled)
    assert list(fast["num_traps"]) == list(reference["num_traps"])
    np.testing.assert_allclose(fast["rand_distance"], reference["rand_distance"], atol=1e-6)
    other = [c for c in reference.columns if c not in ("num_traps", "rand_distance", "warning")]
    pd.testing.assert_frame_equal(fast[other], reference[other], check_exact=True)
    assert list(fast["warning"]) == list(reference["warning"])
    if name == "planted":
        assert list(fast["num_traps"]) == [0, 1, 3]


def test_large_single_matrices_take_the_krylov_path(monkeypatch):
    calls = []
    krylov = randomized.krylov_top

    def recorded(*args):
        calls.append((args[0].shape, krylov(*args)))
        return calls[-1][1]

    monkeypatch.setattr(randomized, "krylov_top", recorded)
    details = run_analysis(_planted(), make_options(randomize=True, seed=2)).details
    assert [shape for shape, _ in calls] == [(1, 2000, 800)] * 3
    assert all(top.top.size == randomized.KRYLOV_WANTED < top.size for _, top in calls)
    assert list(details["num_traps"]) == [0, 1, 3]


def test_a_sparse_copy_counts_its_structural_zeros():
    """A shuffled copy with all-zero rows or columns has that many zero eigenvalues: the
    fit's bulk count is ``min(M - zero columns, N - zero rows)``, not M."""
    gen = torch.Generator().manual_seed(3)
    w = torch.zeros(400, 300)
    w.view(-1)[torch.randperm(w.numel(), generator=gen)[:900]] = torch.randn(900, generator=gen)
    checkpoint = MemoryCheckpoint({"sparse.weight": w})
    specs, _ = plan(checkpoint.tensors(), Selection())
    rand = compute_spectra(checkpoint, specs, randomize=True, seed=5)["sparse.weight"].randomized
    copy = Shuffler(5)(to_matrices(w, specs[0]))[0]
    zero_rows = int((copy != 0).any(dim=1).logical_not().sum())
    zero_cols = int((copy != 0).any(dim=0).logical_not().sum())
    assert zero_cols > 0  # 900 entries over 400 x 300: about 15 empty columns expected
    assert rand.count == min(300 - zero_cols, 400 - zero_rows)
    # an upper bound of the rank (this sparse, a few more columns depend on each other)
    nonzero = int((rand.top > 1e-5 * rand.top[0]).sum())
    assert rand.count - 10 <= nonzero <= rand.count


def test_copies_without_a_bulk_have_no_trap_and_sit_on_their_esd():
    """Zero and constant matrices shuffle into themselves (the Krylov path, M >= 768): the
    fit fails (no bulk), no trap is counted, and the fitted law is the ESD itself."""
    weights = {"zeros.weight": torch.zeros(900, 800), "const.weight": torch.full((900, 800), 0.3)}
    details = run_analysis(weights, make_options(randomize=True)).details.set_index("name")
    assert list(details["num_traps"]) == [0, 0]
    assert details.loc["zeros.weight", "rand_distance"] == 0
    assert details.loc["const.weight", "rand_distance"] <= 1 / 800 + 1e-12  # at the one jump


def test_a_batch_of_krylov_spaces_on_one_thread_each_gives_the_same_traps(monkeypatch):
    """On two CPU threads a batch's spaces run a share per thread (threads.in_shares);
    one after the other (here: with one thread) they count the same traps, each in its own
    row, and give the same rand_distance."""
    from spectralyzer import engine

    shares = []
    together = engine.in_shares
    monkeypatch.setattr(
        engine, "in_shares", lambda jobs: shares.append(len(jobs)) or together(jobs)
    )
    options = make_options(randomize=True, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parted = run_analysis(_planted(), options)
        torch.set_num_threads(1)
        serial = run_analysis(_planted(), options)
    finally:
        torch.set_num_threads(threads)
    assert shares == [3]  # the three planted matrices: one batch, their spaces in shares
    assert list(parted.details["num_traps"]) == list(serial.details["num_traps"]) == [0, 1, 3]
    np.testing.assert_allclose(
        parted.details["rand_distance"], serial.details["rand_distance"], atol=1e-6
    )
