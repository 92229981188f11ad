"""The uniformly random permutations behind ``--randomize`` (spectralyzer.shuffle)."""

import itertools

import numpy as np
import torch

from spectralyzer import shuffle
from spectralyzer.shuffle import uniform_permutation


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
