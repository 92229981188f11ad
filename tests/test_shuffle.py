"""The uniformly random permutations behind ``--randomize`` (spectralyzer.shuffle)."""

import itertools
from math import prod

import numpy as np
import pytest
import torch

from spectralyzer import shuffle
from spectralyzer.shuffle import Shuffler, uniform_permutation


def test_a_large_permutation_is_drawn_in_two_levels_seeded():
    size = shuffle.SPLIT_ENTRIES + 12_345  # past the split: buckets, then shuffles in cache
    drawn = uniform_permutation(size, 7)
    assert drawn.dtype == torch.int32
    assert torch.equal(torch.sort(drawn).values, torch.arange(size, dtype=torch.int32))
    assert torch.equal(drawn, uniform_permutation(size, 7))
    assert not torch.equal(drawn, uniform_permutation(size, 8))
    # within the first bucket the indices are shuffled, not in index order: about half of
    # the neighbours ascend (all of them without the in-bucket shuffles)
    head = drawn[: size // shuffle.BUCKETS // 2]
    assert abs(float((head[1:] > head[:-1]).float().mean()) - 0.5) < 0.01


def test_two_level_permutations_are_uniform(monkeypatch):
    """Every permutation of 4 items is equally likely: 24000 seeded draws through three
    buckets, labels sorted two at a time, against the chi-square 99.9% quantile (23
    degrees of freedom).  Without the in-bucket shuffles chi-square is 21065."""
    monkeypatch.setattr(shuffle, "SPLIT_ENTRIES", 0)
    monkeypatch.setattr(shuffle, "BUCKETS", 3)
    monkeypatch.setattr(shuffle, "_LABEL_CHUNK", 2)
    outcomes = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.zeros(len(outcomes))
    for seed in range(24_000):
        counts[outcomes[tuple(uniform_permutation(4, seed).tolist())]] += 1
    expected = counts.sum() / len(outcomes)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 49.73, (chi2, counts)


def test_small_permutations_stay_torch_randperm():
    drawn = uniform_permutation(1000, 3)
    assert torch.equal(
        drawn, torch.randperm(1000, generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    )


@pytest.mark.parametrize(
    ("source", "dtype", "factor"),
    [
        (torch.bfloat16, torch.float32, 2.0**-3),  # widened, then scaled
        (torch.float32, torch.float32, 1.0),  # moved as it is
        (torch.float64, torch.float32, 2.0**-300),  # scaled before it is narrowed
    ],
)
def test_a_large_cpu_copy_is_moved_in_the_order_of_its_permutation(
    source, dtype, factor, monkeypatch
):
    """Above the split a CPU copy is moved in two levels, not gathered: the first copy of a
    shape and the next one (through the kept first level) equal their stacks indexed by
    the shape's permutation, on one thread as on two, in uneven chunks and buckets."""
    monkeypatch.setattr(shuffle, "SPLIT_ENTRIES", 1000)
    monkeypatch.setattr(shuffle, "BUCKETS", 7)
    monkeypatch.setattr(shuffle, "_LABEL_CHUNK", 97)
    monkeypatch.setattr(shuffle, "_MOVE_CHUNK", 123)
    gen = torch.Generator().manual_seed(0)
    stacks = [torch.randn(1, 61, 47, generator=gen, dtype=torch.float64) for _ in range(2)]
    if source == torch.float64:
        stacks = [x * 2.0**300 for x in stacks]  # beyond float32: the product must come first
    stacks = [x.to(source) for x in stacks]
    shape = tuple(stacks[0].shape)
    order = shuffle.uniform_permutation(prod(shape), Shuffler(4).seed_of(shape)).long()
    expected = [(x.reshape(-1)[order].double() * factor).to(dtype).reshape(shape) for x in stacks]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            shuffler = Shuffler(4)
            shuffler.prefetch(shape)
            assert not shuffler._drawing  # nothing drawn ahead: the copy moves itself
            assert torch.equal(shuffler(stacks[0], dtype, factor), expected[0])
            assert shape in shuffler._placed
            assert torch.equal(shuffler(stacks[1], dtype, factor), expected[1])
            shuffler.release(shape)
            assert not shuffler._placed
    finally:
        torch.set_num_threads(before)
    assert torch.isfinite(expected[0]).all() and expected[0].abs().max() > 0.1
