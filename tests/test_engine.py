import numpy as np
import pytest
import torch

from helpers import esd
from spectralyzer.engine import (
    Shuffler,
    compute_spectra,
    gram_eigenvalues,
    resolve_device,
)
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.layers import Selection, plan


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (256, 256), (1000, 37)])
def test_gram_eigenvalues_match_numpy_svd(shape):
    # float32 weights, as in checkpoints: the reference is the float64 SVD of the same numbers
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    w = w if shape[0] >= shape[1] else w.T
    ours = gram_eigenvalues(w.unsqueeze(0))[0].numpy()
    ref = esd(w.double().numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=0)


def test_gram_eigenvalues_heavy_tailed_relative_accuracy():
    rng = np.random.default_rng(0)
    w = torch.from_numpy(
        (rng.pareto(1.5, size=(400, 200)) * rng.choice([-1, 1], (400, 200))).astype(np.float32)
    )
    ours = gram_eigenvalues(w.unsqueeze(0))[0].numpy()
    ref = esd(w.double().numpy())
    # every eigenvalue above 1e-5 lambda_max is accurate to 1e-8 relative (engine docstring)
    big = ref > 1e-5 * ref[-1]
    np.testing.assert_allclose(ours[big], ref[big], rtol=1e-8)
    assert np.all(np.abs(ours - ref) <= 200 * 2.3e-16 * ref[-1] * 10)


def _checkpoint():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(64, 32, generator=g),
        "b.weight": torch.randn(32, 64, generator=g),  # same matrix shape after orientation
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "c.weight": torch.randn(50, 20, generator=g).half(),
    }


def _spectra(tensors, **kwargs):
    ckpt = MemoryCheckpoint(tensors)
    specs, _ = plan(ckpt.tensors(), Selection())
    return specs, compute_spectra(ckpt, specs, **kwargs)


def test_batched_spectra_equal_per_matrix_svd_whatever_the_batch_size():
    tensors = _checkpoint()
    specs, big = _spectra(tensors)
    _, small = _spectra(tensors, batch_elements=1)
    for spec in specs:
        np.testing.assert_allclose(big[spec.name].esd.evals, small[spec.name].esd.evals, rtol=1e-12)
    conv = tensors["conv.weight"].double()
    pooled = np.sort(
        np.concatenate([esd(conv[:, :, i, j].numpy()) for i in range(3) for j in range(3)])
    )
    np.testing.assert_allclose(big["conv.weight"].esd.evals, pooled, rtol=1e-8)
    np.testing.assert_allclose(
        big["c.weight"].esd.evals, esd(tensors["c.weight"].double().numpy()), rtol=1e-8
    )
    assert big["a.weight"].randomized is None


def test_randomized_spectra_are_seeded_and_keep_the_frobenius_norm():
    tensors = _checkpoint()
    _, one = _spectra(tensors, randomize=True, seed=3)
    _, two = _spectra(tensors, randomize=True, seed=3, batch_elements=1)
    _, other = _spectra(tensors, randomize=True, seed=4)
    for name in tensors:
        r1, r2 = one[name].randomized, two[name].randomized
        np.testing.assert_allclose(r1.top, r2.top, rtol=1e-10, atol=1e-12 * r1.top[0])
        assert not np.allclose(r1.top, other[name].randomized.top)
        # a permutation keeps sum(lambda) = ||W||_F^2 (all of it computed for these sizes)
        assert r1.top.size == r1.size
        np.testing.assert_allclose(r1.top.sum(), one[name].esd.evals.sum(), rtol=1e-10)
        np.testing.assert_allclose(r1.total, one[name].esd.evals.sum(), rtol=1e-10)


def test_shuffler_is_a_seeded_permutation_per_shape():
    x = torch.arange(24.0).reshape(2, 4, 3)
    y = Shuffler(0)(x)
    assert torch.equal(y, Shuffler(0)(x))
    assert not torch.equal(y, Shuffler(1)(x))
    assert not torch.equal(Shuffler(0)(x.reshape(1, 8, 3)).reshape(2, 4, 3), y)
    assert not torch.equal(x, y)
    assert torch.equal(torch.sort(y.reshape(-1)).values, x.reshape(-1))


@pytest.mark.parametrize(
    ("source", "dtype", "factor"),
    [
        (torch.bfloat16, torch.float32, 2.0**-3),  # widened, then scaled
        (torch.float32, torch.float32, 1.0),  # gathered straight into the result
        (torch.float64, torch.float32, 2.0**-300),  # scaled before it is narrowed
    ],
)
def test_the_threaded_gather_is_the_permutation_applied(source, dtype, factor, monkeypatch):
    """Copies large enough to be gathered on two threads, in uneven chunks, equal the
    permutation applied entry by entry on one thread."""
    import spectralyzer.shuffle as shuffle_module

    monkeypatch.setattr(shuffle_module, "_GATHER_MIN", 1000)
    monkeypatch.setattr(shuffle_module, "_GATHER_CHUNK", 1234)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 301, 97, generator=gen, dtype=torch.float64).to(source)
    if source == torch.float64:
        x = x * 2.0**300  # beyond float32: the product must come first
    shuffler = Shuffler(4)
    order = shuffler.order(tuple(x.shape)).long()
    expected = (x.reshape(-1)[order].double() * factor).to(dtype).reshape(x.shape)
    torch.set_num_threads(2)
    assert torch.equal(shuffler(x, dtype, factor), expected)
    assert torch.isfinite(expected).all() and expected.abs().max() > 0.1


def test_prefetched_permutations_are_the_ones_drawn_on_demand():
    """Permutations drawn one after another on background threads, asked for out of
    order and again, are those of a shuffler that draws each when it is needed."""
    ahead, direct = Shuffler(3), Shuffler(3)
    shapes = [(1, 50, 40), (2, 30, 20), (1, 64, 64)]
    for shape in shapes:
        ahead.prefetch(shape)
    for shape in [shapes[2], shapes[0], shapes[1], shapes[0]]:
        assert torch.equal(ahead.order(shape), direct.order(shape))
    assert not ahead._drawing  # every drawing was collected


def test_nonfinite_weights_are_flagged_not_fatal():
    tensors = _checkpoint()
    tensors["a.weight"][3, 4] = float("nan")
    tensors["b.weight"][0, 0] = float("inf")
    _, spectra = _spectra(tensors, randomize=True)
    assert not spectra["a.weight"].esd.finite and spectra["a.weight"].esd.evals.size == 0
    assert not spectra["b.weight"].esd.finite
    assert spectra["conv.weight"].esd.finite


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_spectra_match_cpu():
    tensors = _checkpoint()
    specs, cpu = _spectra(tensors, randomize=True, seed=2)
    _, gpu = _spectra(tensors, randomize=True, seed=2, device=torch.device("cuda"))
    for spec in specs:
        np.testing.assert_allclose(gpu[spec.name].esd.evals, cpu[spec.name].esd.evals, rtol=1e-9)
        np.testing.assert_allclose(
            gpu[spec.name].randomized.top, cpu[spec.name].randomized.top, rtol=1e-9
        )
