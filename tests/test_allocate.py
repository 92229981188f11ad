"""`spectralyzer allocate` (issue 15): each mapping against hand-computed cases, the
constraints to 1e-9, clipping, the bit program against brute force, block-wise means,
and the mapping JSON read back by a `torch.nn.utils.prune` script."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from click.testing import CliRunner

from spectralyzer.allocate_pipeline import allocate
from spectralyzer.allocation import (
    alpha_lora,
    alpha_pruning,
    alpha_q,
    block_key,
    block_of,
    ends_fixed,
    group_means,
    largest_remainder,
    linear_map,
)
from spectralyzer.cli import main
from spectralyzer.errors import OptionError

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "data" / "mlp" / "epoch_30.safetensors"


def cli(*args: object):
    return CliRunner().invoke(main, ["allocate", *map(str, args), "-q"])


# --- blocks


@pytest.mark.parametrize(
    ("name", "block", "key"),
    [
        ("model.layers.7.self_attn.q_proj.weight", 7, "model.layers.7"),
        ("transformer.h.11.mlp.c_fc.weight", 11, "transformer.h.11"),
        ("encoder.layer.3.attention.self.query.weight", 3, "encoder.layer.3"),
        ("encoder.block.1.layer.0.SelfAttention.q.weight", 1, "encoder.block.1"),
        ("decoder.block.1.layer.0.SelfAttention.q.weight", 1, "decoder.block.1"),
        ("blocks.2.attn.qkv.weight", 2, "blocks.2"),
        ("model.embed_tokens.weight", None, None),
        ("lm_head.weight", None, None),
        ("2.weight", None, None),
        ("model.layers_norm.weight", None, None),
    ],
)
def test_block_from_the_name(name, block, key):
    assert block_of(name) == block
    assert block_key(name) == key


def test_group_means_by_hand():
    values = [1.0, 3.0, 10.0, 2.0, np.nan, 6.0]
    groups = ["a", "a", None, "b", "b", None]
    np.testing.assert_array_equal(group_means(values, groups), [2.0, 2.0, 10.0, 2.0, 2.0, 6.0])


# --- sparsity


def test_alpha_pruning_by_hand():
    # r = 0.7, 1.0, 1.3; scale = 0.5 * 400 / (70 + 100 + 260) = 20/43
    result = alpha_pruning(np.array([1.0, 2.0, 3.0]), np.array([100, 100, 200]), 0.5, eps=0.3)
    expected = [float(Fraction(14, 43)), float(Fraction(20, 43)), float(Fraction(26, 43))]
    np.testing.assert_allclose(result.ratios, expected, rtol=0, atol=1e-15)
    assert result.out_of_range == 0


def test_alpha_pruning_higher_alpha_is_pruned_more_and_equal_alphas_are_uniform():
    result = alpha_pruning(np.array([4.0, 2.0, 3.0]), np.array([5, 7, 11]), 0.6)
    assert result.ratios[1] < result.ratios[2] < result.ratios[0]
    flat = alpha_pruning(np.array([3.0, 3.0, 3.0]), np.array([5, 7, 11]), 0.6)
    np.testing.assert_allclose(flat.ratios, 0.6, rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(20))
def test_weighted_mean_sparsity_is_the_target(seed):
    rng = np.random.default_rng(seed)
    layers = rng.integers(2, 40)
    metric, params = rng.uniform(1.5, 8, layers), rng.integers(100, 10**7, layers)
    target = rng.uniform(0.05, 0.9)
    result = alpha_pruning(metric, params, target, eps=rng.uniform(0, 0.5))
    assert abs((params * result.ratios).sum() / params.sum() - target) <= 1e-9


def test_ratios_outside_0_1_are_reported_and_clipping_renormalises_by_hand():
    # r = 0.7, 1.3; scale = 0.9 * 1001 / 701.3, so the small layer gets 1.67
    metric, params = np.array([1.0, 10.0]), np.array([1000, 1])
    plain = alpha_pruning(metric, params, 0.9)
    assert plain.out_of_range == 1 and plain.ratios[1] > 1
    clipped = alpha_pruning(metric, params, 0.9, clip_max=0.99)
    np.testing.assert_allclose(clipped.ratios, [(900.9 - 0.99) / 1000, 0.99], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(clipped.unclipped, plain.ratios)
    assert clipped.clipped == 1 and clipped.out_of_range == 1


def _clipped_by_bisection(raw, params, target, high):
    """Independent: the scale c with sum n clip(c r, 0, high) = S sum n, by bisection."""
    lo, hi = 0.0, 1e6
    for _ in range(300):
        c = (lo + hi) / 2
        mean = (params * np.clip(c * raw, 0, high)).sum() / params.sum()
        lo, hi = (c, hi) if mean < target else (lo, c)
    return np.clip(lo * raw, 0, high)


@pytest.mark.parametrize("seed", range(15))
def test_clipping_keeps_the_target_and_matches_the_unique_clipped_scaling(seed):
    rng = np.random.default_rng(100 + seed)
    layers = rng.integers(3, 30)
    metric = rng.uniform(1.5, 9, layers)
    params = rng.integers(10, 10**6, layers).astype(float)
    target, eps, high = rng.uniform(0.6, 0.85), rng.uniform(0.3, 0.9), 0.9
    result = alpha_pruning(metric, params, target, eps=eps, clip_max=high)
    assert abs((params * result.ratios).sum() / params.sum() - target) <= 1e-9
    assert result.ratios.min() >= 0 and result.ratios.max() <= high
    raw = (1 - eps) + (metric - metric.min()) / (metric.max() - metric.min()) * 2 * eps
    np.testing.assert_allclose(
        result.ratios, _clipped_by_bisection(raw, params, target, high), atol=1e-9
    )


def test_bad_sparsity_values_are_option_errors():
    with pytest.raises(OptionError, match="sparsity"):
        alpha_pruning(np.array([1.0, 2.0]), np.array([1, 1]), 1.0)
    with pytest.raises(OptionError, match="clip_max"):
        alpha_pruning(np.array([1.0, 2.0]), np.array([1, 1]), 0.7, clip_max=0.5)


# --- learning rate and weight decay


def test_tempbalance_learning_rates_by_hand():
    metric = np.array([5.0, 1.0, 3.0, 2.0, 4.0])  # first and last stay at eta
    lr = linear_map(metric, 1e-3, 0.5, 1.5, ends_fixed(5))
    np.testing.assert_allclose(lr, [1e-3, 0.5e-3, 1.5e-3, 1e-3, 1e-3], rtol=1e-15)


def test_alphadecay_weight_decay_rises_with_alpha_from_0_666_to_3():
    metric = np.array([9.0, 1.0, 3.0, 2.0, 0.5])
    wd = linear_map(metric, 0.1, 0.666, 3.0, ends_fixed(5))
    np.testing.assert_allclose(wd, [0.1, 0.0666, 0.3, 0.1 * (0.666 + 0.5 * 2.334), 0.1])


# --- bits


def test_bit_sensitivity_is_median_over_alpha_to_the_gamma():
    metric = np.array([2.0, 4.0, 8.0])
    result = alpha_q(metric, np.ones(3), np.array([10, 10, 10]), 4.0, gamma=3.0)
    np.testing.assert_allclose(result.sensitivity, [8.0, 1.0, 1 / 8])
    np.testing.assert_array_equal(result.bits, [4, 4, 4])  # the budget allows 4 everywhere


@pytest.mark.parametrize("seed", range(25))
def test_bits_are_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(2, 7))
    metric = rng.uniform(1.8, 6, layers)
    variance = rng.uniform(1e-4, 1e-2, layers)
    params = rng.integers(1, 1000, layers)
    budget = float(rng.uniform(2, 4))
    gamma = float(rng.uniform(0, 10))
    result = alpha_q(metric, variance, params, budget, gamma=gamma)
    s = (np.median(metric) / metric) ** gamma
    best = min(
        (float((s * variance * 2.0 ** (-2 * np.array(b))).sum()), b)
        for b in itertools.product((2, 3, 4), repeat=layers)
        if (params * np.array(b)).sum() <= budget * params.sum()
    )
    assert result.objective == pytest.approx(best[0], rel=1e-9, abs=0)
    assert (params * result.bits).sum() / params.sum() <= budget


def test_a_budget_below_two_bits_is_infeasible():
    with pytest.raises(OptionError, match="mean_bits.*infeasible"):
        alpha_q(np.array([2.0, 3.0]), np.ones(2), np.array([5, 5]), 1.99)


# --- LoRA experts


def test_alpha_lora_by_hand():
    # beta 1: shares 3.33 and 6.67 -> 3 and 7
    np.testing.assert_array_equal(alpha_lora(np.array([2.0, 4.0]), total=10, beta=1.0), [3, 7])
    # beta 2.5: shares 10 * 5.657/37.657 = 1.502 and 8.498 -> 2 and 8
    np.testing.assert_array_equal(alpha_lora(np.array([2.0, 4.0]), total=10, beta=2.5), [2, 8])


@pytest.mark.parametrize("seed", range(20))
def test_experts_sum_to_the_total_and_stay_within_one_of_the_share(seed):
    rng = np.random.default_rng(seed)
    alphas, total = rng.uniform(1.5, 8, rng.integers(1, 40)), int(rng.integers(0, 500))
    experts = alpha_lora(alphas, total=total)
    share = total * alphas**2.5 / (alphas**2.5).sum()
    assert experts.sum() == total
    assert np.all(np.abs(experts - share) < 1)


def test_largest_remainder_breaks_ties_to_the_earlier_entry():
    np.testing.assert_array_equal(largest_remainder(np.array([1.5, 1.5, 1.0]), 4), [2, 1, 1])


# --- through the pipeline and the command line


def _llama_like(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(64, 32, generator=g)}
    for block in range(3):
        for part, shape in (("self_attn.q_proj", (32, 32)), ("mlp.up_proj", (48, 32))):
            w = torch.randn(*shape, generator=g) * (1 + block)
            w[0, 0] += 10.0 * block  # blocks differ
            state[f"model.layers.{block}.{part}.weight"] = w
    state["lm_head.weight"] = torch.randn(64, 32, generator=g)
    return state


def test_block_wise_metric_is_the_mean_of_the_blocks_layer_wise_alphas():
    state = _llama_like()
    layer = allocate(state, "sparsity", 0.5, block_wise=False).table
    block = allocate(state, "sparsity", 0.5).table
    assert list(layer["name"]) == list(block["name"])
    assert list(block["name"])[0] == "model.embed_tokens.weight"
    assert list(block["name"])[-1] == "lm_head.weight"
    for b in range(3):
        rows = block["block"] == b
        expected = layer.loc[rows, "metric"].mean()
        np.testing.assert_allclose(block.loc[rows, "group_metric"], expected, rtol=1e-14)
    outside = block["block"].isna()
    np.testing.assert_array_equal(block.loc[outside, "group_metric"], layer.loc[outside, "metric"])
    np.testing.assert_array_equal(layer["group_metric"], layer["metric"])


def test_cli_json_proves_the_sparsity_constraint():
    result = cli(MLP, "--for", "sparsity", "--sparsity", 0.7, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    rows = doc["layers"]
    mean = sum(r["parameters"] * r["value"] for r in rows) / sum(r["parameters"] for r in rows)
    assert abs(mean - 0.7) <= 1e-9
    assert doc["summary"]["constraint"]["holds"] is True
    assert doc["summary"]["settings"] == {"eps": 0.3, "clip_max": None}
    assert doc["summary"]["estimator_published"] == "xmin-peak"


def test_cli_bits_and_experts_constraints():
    bits = json.loads(cli(MLP, "--for", "bits", "--mean-bits", 3, "--format", "json").output)
    rows = bits["layers"]
    mean = sum(r["parameters"] * r["value"] for r in rows) / sum(r["parameters"] for r in rows)
    assert mean <= 3 and {r["value"] for r in rows} <= {2, 3, 4}
    experts = json.loads(
        cli(MLP, "--for", "lora-experts", "--experts", 7, "--format", "json").output
    )
    assert sum(r["value"] for r in experts["layers"]) == 7  # an MLP: each layer its own block


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--for", "bits", "--sparsity", "0.7"), "--sparsity"),
        (("--for", "bits", "--mean-bits", "1.5"), "--mean-bits"),
        (("--for", "lr", "--lr", "1e-3", "--gamma", "3"), "--gamma"),
        (("--for", "lr"), "--lr"),
        (("--for", "sparsity", "--sparsity", "1.2"), "--sparsity"),
        (("--for", "lora-experts", "--experts", "-3"), "--experts"),
    ],
)
def test_wrong_combinations_and_infeasible_budgets_exit_2_with_one_line(args, flag):
    result = cli(MLP, *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spectralyzer: error: {flag}: ")


def test_mapping_json_drives_torch_prune(tmp_path):
    """The README's recipe: read {"layer name": ratio}, prune each layer by magnitude."""
    out = tmp_path / "sparsity.json"
    result = cli(MLP, "--for", "sparsity", "--sparsity", 0.7, "--clip", "--mapping-out", out)
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    model.load_state_dict(load_file(MLP))
    # --- the script a user writes
    ratios = json.loads(out.read_text())
    modules = dict(model.named_modules())
    for name, amount in ratios.items():
        module_name, _, param = name.rpartition(".")
        torch.nn.utils.prune.l1_unstructured(modules[module_name], param, amount=amount)
    # ---
    zeros = {n: int((modules[n.rpartition(".")[0]].weight == 0).sum()) for n in ratios}
    sizes = {n: modules[n.rpartition(".")[0]].weight.numel() for n in ratios}
    for n in ratios:
        assert zeros[n] == round(ratios[n] * sizes[n])  # prune rounds each layer's count
    achieved = sum(zeros.values()) / sum(sizes.values())
    assert abs(achieved - 0.7) <= len(ratios) / sum(sizes.values())
    assert max(ratios.values()) <= 0.99


def test_extreme_exponents_do_not_overflow():
    experts = alpha_lora(np.array([2.0, 4.0, 3.0]), total=10, beta=1000.0)
    np.testing.assert_array_equal(experts, [0, 10, 0])  # (4/3)^1000: all to the largest
    bits = alpha_q(np.array([2.0, 4.0, 3.0]), np.ones(3), np.array([1, 1, 1]), 3.0, gamma=50.0)
    np.testing.assert_array_equal(bits.bits, [4, 2, 3])  # s = 1.5^50, 0.75^50, 1
    huge = alpha_q(np.array([2.0, 4.0, 3.0]), np.ones(3), np.array([1, 1, 1]), 3.0, gamma=1e4)
    assert huge.bits[0] == 4 and huge.bits.sum() <= 9  # 1.5^10000 overflows a float


def test_clipping_that_cannot_reach_the_target_is_an_error():
    # eps 1: the lowest-alpha layer's ratio is 0 for any scale, so 0.6 of the rest
    # cannot be reached under 0.8 when that layer holds most of the parameters
    with pytest.raises(OptionError, match="clip_max"):
        alpha_pruning(np.array([1.0, 2.0]), np.array([900, 100]), 0.6, eps=1.0, clip_max=0.8)


def test_format_mapping_is_name_to_value_json_for_every_row():
    table = cli(MLP, "--for", "lr", "--lr", 1e-3, "--format", "json")
    mapping = cli(MLP, "--for", "lr", "--lr", 1e-3, "--format", "mapping")
    assert mapping.exit_code == 0, mapping.output
    rows = json.loads(table.output)["layers"]
    assert json.loads(mapping.output) == {r["name"]: r["value"] for r in rows}
    # TempBalance with three layers: the two ends stay at eta, the middle one is mapped alone
    assert [r["value"] for r in rows] == [1e-3, 0.5e-3, 1e-3]
