"""Quantised checkpoints (issue 13): fp8 with block / per-channel / per-tensor scales, int8,
GPTQ and AWQ int4, and the numerical-zero threshold that must not read quantisation noise
as rank loss.

Each test quantises a dense matrix here, packs it by the published convention
(written out element by element, independently of spectralyzer.io.dequant), and
checks that the analysed spectrum equals the spectrum of the test's own
dequantised matrix (relative 1e-9: the engine's float64 accuracy) and lies
within the quantisation error of the dense one: by Mirsky's inequality the
singular values move by at most ``||W - W_q||_F`` in the 2-norm, and each
scheme bounds the entries of ``W - W_q`` (stated in each test).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import spectralyzer
from helpers import pareto_entries
from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.io import open_checkpoint
from spectralyzer.pipeline import run_analysis

E4M3_MAX = 448.0
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ GEMM: nibble i of a word holds column order[i]


def dense(out: int, inp: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.05, size=(out, inp)).astype(np.float32)


def singular_values(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False))


def folder(tmp_path: Path, tensors: dict[str, torch.Tensor], quant: dict | None) -> Path:
    """A Hugging Face folder: one safetensors file and a config.json with the scheme."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "model.safetensors")
    config = {"model_type": "llama"}
    if quant is not None:
        config["quantization_config"] = quant
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def analysed(path: Path):
    """The analysis with the spectra kept, and its rows by name."""
    analysis = run_analysis(path)
    return analysis, analysis.details.set_index("name")


def check_spectrum(analysis, name: str, expected: np.ndarray, original: np.ndarray, bound: float):
    """The analysed ESD equals the test's dequantised matrix's, and the dense one's to ``bound``."""
    evals = np.sort(analysis.spectra[name].esd.evals)
    s_expected = singular_values(expected)
    np.testing.assert_allclose(evals, s_expected**2, rtol=1e-9, atol=1e-12 * s_expected[-1] ** 2)
    moved = np.linalg.norm(np.sqrt(evals) - singular_values(original))
    assert moved <= bound, (moved, bound)
    # the bound is not vacuous: it is well below the spectrum's own size
    assert bound < 0.2 * np.linalg.norm(original)


# ---------------------------------------------------------------- fp8 and int8 with scales


def fp8_blocks(w: np.ndarray, block: int, dtype=torch.float8_e4m3fn):
    """DeepSeek-V3 style: per 128x128 block s = amax / 448, q = fp8(w / s), stored s."""
    rows, cols = math.ceil(w.shape[0] / block), math.ceil(w.shape[1] / block)
    scales = np.zeros((rows, cols), dtype=np.float32)
    q = torch.zeros(w.shape, dtype=dtype)
    back = np.zeros_like(w)
    fmax = torch.finfo(dtype).max
    for i in range(rows):
        for j in range(cols):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block]
            s = np.float32(np.abs(tile).max() / fmax)
            stored = torch.from_numpy(tile / s).to(dtype)
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = stored
            scales[i, j] = s
            back[i * block : (i + 1) * block, j * block : (j + 1) * block] = (
                stored.float().numpy() * s
            )
    return q, torch.from_numpy(scales), back


@pytest.mark.parametrize(
    ("dtype", "relative"),
    [
        (torch.float8_e4m3fn, 2.0**-4),
        (torch.float8_e5m2, 2.0**-3),
    ],  # half an ulp: 3 / 2 mantissa bits
)
def test_fp8_block_scales_are_applied_and_never_analysed(tmp_path, dtype, relative):
    w1, w2 = dense(300, 200, 1), dense(256, 384, 2)  # 300 and 200: not multiples of 128
    q1, s1, back1 = fp8_blocks(w1, 128, dtype)
    q2, s2, back2 = fp8_blocks(w2, 128, dtype)
    embed = torch.from_numpy(dense(64, 32, 3)).bfloat16()
    tensors = {
        "model.embed_tokens.weight": embed,  # kept in bf16, as DeepSeek-V3 does
        "model.layers.0.mlp.up_proj.weight": q1,
        "model.layers.0.mlp.up_proj.weight_scale_inv": s1,
        "model.layers.0.mlp.down_proj.weight": q2,
        "model.layers.0.mlp.down_proj.weight_scale_inv": s2,
    }
    quant = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    analysis, rows = analysed(folder(tmp_path, tensors, quant))
    assert set(rows.index) == {
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    }
    assert rows.loc["model.layers.0.mlp.up_proj.weight", "shape"] == (300, 200)
    # entries move by at most half an ulp relative: ||W - W_q||_F <= relative * ||W||_F
    for name, back, w in (("up_proj", back1, w1), ("down_proj", back2, w2)):
        bound = relative * np.linalg.norm(w)
        check_spectrum(analysis, f"model.layers.0.mlp.{name}.weight", back, w, bound)
    skipped = {s.name: s.reason for s in analysis.skipped}
    assert skipped["model.layers.0.mlp.up_proj.weight_scale_inv"] == (
        "quantisation scales of model.layers.0.mlp.up_proj.weight"
    )
    note = analysis.summary["layout"]["quantisation"]
    assert "128x128 block scales" in note and "2 weights dequantised" in note


def test_fp8_per_tensor_and_per_channel_weight_scale(tmp_path):
    w1, w2 = dense(96, 64, 4), dense(80, 48, 5)
    s1 = np.float32(np.abs(w1).max() / E4M3_MAX)  # one scale for the tensor
    q1 = torch.from_numpy(w1 / s1).to(torch.float8_e4m3fn)
    s2 = (np.abs(w2).max(axis=1, keepdims=True) / E4M3_MAX).astype(np.float32)  # one per row
    q2 = torch.from_numpy(w2 / s2).to(torch.float8_e4m3fn)
    tensors = {
        "a.weight": q1,
        "a.weight_scale": torch.tensor([s1]),
        "a.input_scale": torch.tensor([1.0]),
        "b.weight": q2,
        "b.weight_scale": torch.from_numpy(s2),
    }
    quant = {"quant_method": "compressed-tensors", "format": "float-quantized"}
    analysis, rows = analysed(folder(tmp_path, tensors, quant))
    assert set(rows.index) == {"a.weight", "b.weight"}
    check_spectrum(analysis, "a.weight", q1.float().numpy() * s1, w1, 2**-4 * np.linalg.norm(w1))
    check_spectrum(analysis, "b.weight", q2.float().numpy() * s2, w2, 2**-4 * np.linalg.norm(w2))
    skipped = {s.name: s.reason for s in analysis.skipped}
    assert skipped == {"b.weight_scale": "quantisation scales of b.weight"}  # 1-element ones drop
    note = analysis.summary["layout"]["quantisation"]
    assert "per-tensor scale" in note and "per-channel scales" in note


def int8_per_channel(w: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Symmetric int8, one scale per output row: q = round(w / s), s = amax / 127."""
    s = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float32)
    return torch.from_numpy(np.round(w / s).astype(np.int8)), s


def test_int8_per_channel_with_weight_scale(tmp_path):
    w = dense(128, 96, 6)
    q, s = int8_per_channel(w)
    tensors = {"fc.weight": q, "fc.weight_scale": torch.from_numpy(s)}
    analysis, _ = analysed(folder(tmp_path, tensors, {"quant_method": "compressed-tensors"}))
    # rounding to the nearest step: |w - w_q| <= s / 2 per entry
    bound = float(np.sqrt(((s / 2) ** 2 * w.shape[1]).sum()))
    check_spectrum(analysis, "fc.weight", q.float().numpy() * s, w, bound)


# ---------------------------------------------------------------- GPTQ and AWQ


def quantise_groups(w: np.ndarray, bits: int, groups_of_rows: np.ndarray, n_groups: int):
    """Asymmetric min-max quantisation of W^T (in, out) per (group, output): returns
    q (in, out), scales (groups, out), zeros (groups, out) and the dequantised W^T."""
    wt = w.T.astype(np.float64)
    top = 2**bits - 1
    scales = np.zeros((n_groups, wt.shape[1]), dtype=np.float16)
    zeros = np.zeros((n_groups, wt.shape[1]), dtype=np.int64)
    for g in range(n_groups):
        rows = wt[groups_of_rows == g]
        lo, hi = np.minimum(rows.min(axis=0), 0), np.maximum(rows.max(axis=0), 0)
        scales[g] = ((hi - lo) / top).astype(np.float16)
        zeros[g] = np.clip(np.round(-lo / scales[g].astype(np.float64)), 0, top)
    s, z = scales.astype(np.float64)[groups_of_rows], zeros[groups_of_rows]
    q = np.clip(np.round(wt / s) + z, 0, top).astype(np.int64)
    return q, scales, zeros, ((q - z) * s).T


def pack(values: np.ndarray, bits: int, axis: int, order=None) -> torch.Tensor:
    """Pack unsigned ``bits``-bit values into int32 along ``axis``, element i of a word at
    bit ``bits * i`` (``order``: word element i holds source index ``order[i]``)."""
    per = 32 // bits
    v = np.moveaxis(values, axis, 0)
    words = np.zeros((v.shape[0] // per, *v.shape[1:]), dtype=np.uint64)
    for w in range(words.shape[0]):
        for i in range(per):
            source = w * per + (order[i] if order else i)
            words[w] |= (v[source] & (2**bits - 1)).astype(np.uint64) << np.uint64(bits * i)
    packed = np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)
    return torch.from_numpy(np.ascontiguousarray(packed))


def gptq_tensors(w, bits, group, act_order, seed):
    """AutoGPTQ format: qweight packs the input dim, qzeros the output dim, zero - 1 stored."""
    inp = w.shape[1]
    rank = np.arange(inp)
    if act_order:  # rows are quantised in a permuted order; g_idx says each row's group
        rank = np.argsort(np.random.default_rng(seed).permutation(inp))
    g_idx = rank // group
    q, scales, zeros, back = quantise_groups(w, bits, g_idx, inp // group)
    tensors = {
        "qweight": pack(q, bits, axis=0),
        "qzeros": pack(zeros - 1, bits, axis=1),
        "scales": torch.from_numpy(scales),
        "g_idx": torch.from_numpy(g_idx.astype(np.int32)),
    }
    return tensors, back, scales.astype(np.float64)[g_idx]


@pytest.mark.parametrize(("bits", "act_order"), [(4, False), (4, True), (8, True)])
def test_gptq(tmp_path, bits, act_order):
    w1, w2 = dense(96, 128, 7), dense(64, 256, 8)
    group = 32
    parts1, back1, step1 = gptq_tensors(w1, bits, group, act_order, seed=1)
    parts2, back2, step2 = gptq_tensors(w2, bits, group, act_order, seed=2)
    tensors = {f"model.layers.0.self_attn.q_proj.{k}": v for k, v in parts1.items()}
    tensors |= {f"model.layers.0.mlp.down_proj.{k}": v for k, v in parts2.items()}
    tensors["lm_head.weight"] = torch.from_numpy(dense(100, 96, 9)).half()
    quant = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order}
    analysis, rows = analysed(folder(tmp_path, tensors, quant))
    q_proj, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"
    assert set(rows.index) == {down, q_proj, "lm_head.weight"}
    assert rows.loc[q_proj, "shape"] == (96, 128) and rows.loc[down, "shape"] == (64, 256)
    # |w - w_q| <= step / 2 (min-max range, rounding to the nearest level; fp16 scales
    # add a relative 2^-11 of the range)
    for name, back, w, step in ((q_proj, back1, w1, step1), (down, back2, w2, step2)):
        bound = float(np.sqrt(((step * (0.5 + 2.0**-10 * 2**bits)) ** 2).sum()))
        check_spectrum(analysis, name, back, w, bound)
    skipped = {s.name: s.reason for s in analysis.skipped}
    assert skipped[f"{q_proj.removesuffix('weight')}scales"] == f"quantisation scales of {q_proj}"
    assert (
        skipped[f"{q_proj.removesuffix('weight')}qzeros"] == f"quantisation zero points of {q_proj}"
    )
    assert set(rows.index).isdisjoint(skipped)  # scale tensors never become rows
    assert f"gptq int{bits}" in analysis.summary["layout"]["quantisation"]


def test_awq_gemm(tmp_path):
    w = dense(128, 96, 10)  # out = 128 (16 words of 8), in = 96
    group = 32
    g_idx = np.arange(96) // group
    q, scales, zeros, back = quantise_groups(w, 4, g_idx, 3)
    tensors = {
        "mlp.up_proj.qweight": pack(q, 4, axis=1, order=AWQ_PACK_ORDER),
        "mlp.up_proj.qzeros": pack(zeros, 4, axis=1, order=AWQ_PACK_ORDER),
        "mlp.up_proj.scales": torch.from_numpy(scales),
    }
    quant = {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm"}
    analysis, rows = analysed(folder(tmp_path, tensors, quant))
    assert list(rows.index) == ["mlp.up_proj.weight"]
    step = scales.astype(np.float64)[g_idx]
    bound = float(np.sqrt(((step * (0.5 + 2.0**-10 * 16)) ** 2).sum()))
    check_spectrum(analysis, "mlp.up_proj.weight", back, w, bound)
    assert "awq int4" in analysis.summary["layout"]["quantisation"]


def test_packing_order_matters(tmp_path):
    """Read as GPTQ (no interleaving) the AWQ file gives a different matrix: the order is used."""
    w = dense(64, 64, 11)
    q, scales, zeros, back = quantise_groups(w, 4, np.arange(64) // 32, 2)
    tensors = {
        "m.qweight": pack(q, 4, axis=1, order=AWQ_PACK_ORDER),
        "m.qzeros": pack(zeros, 4, axis=1, order=AWQ_PACK_ORDER),
        "m.scales": torch.from_numpy(scales),
    }
    path = folder(tmp_path, tensors, {"quant_method": "awq", "bits": 4, "group_size": 32})
    with open_checkpoint(path) as ckpt:
        np.testing.assert_allclose(ckpt.load("m.weight").numpy(), back, rtol=0, atol=1e-6)
    tensors["m.qweight"] = pack(q, 4, axis=1)  # plain order: not what AWQ writes
    save_file(tensors, tmp_path / "model.safetensors")
    with open_checkpoint(path) as ckpt:
        assert np.abs(ckpt.load("m.weight").numpy() - back).max() > 0.01


def test_table_says_the_weights_were_dequantised(tmp_path):
    w = dense(64, 48, 12)
    q, s = int8_per_channel(w)
    path = folder(tmp_path, {"fc.weight": q, "fc.weight_scale": torch.from_numpy(s)}, None)
    result = CliRunner().invoke(main, ["analyze", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "quantisation: int8, per-channel scales; 1 weight dequantised to float32" in result.output
    )


@pytest.mark.parametrize(
    ("tensors", "quant", "scheme"),
    [
        (
            {"l.weight": torch.zeros(64, 1, dtype=torch.uint8), "l.weight.absmax": torch.ones(4)},
            {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
            "bitsandbytes nf4",
        ),
        (
            {"l.weight": torch.zeros(64, 1, dtype=torch.uint8), "l.weight.absmax": torch.ones(4)},
            None,
            "bitsandbytes 4-bit",
        ),
        ({"l.q_weight": torch.zeros(8, 8, dtype=torch.int32)}, None, "exl2"),
        ({"l.weight": torch.zeros(8, 8)}, {"quant_method": "hqq"}, "hqq"),
        (
            {"l.qweight": torch.zeros(8, 8, dtype=torch.int32)},
            {"quant_method": "gptq", "bits": 3},
            "3-bit packed weights",
        ),
    ],
)
def test_unsupported_schemes_exit_2_naming_them(tmp_path, tensors, quant, scheme):
    path = folder(tmp_path, tensors, quant)
    result = CliRunner().invoke(main, ["analyze", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"spectralyzer: error: {path}: quantised checkpoint ({scheme}), not supported"
    ]


def test_scales_that_do_not_tile_their_weight_are_an_input_error(tmp_path):
    tensors = {
        "a.weight": torch.zeros(300, 200, dtype=torch.float8_e4m3fn),
        "a.weight_scale_inv": torch.ones(301, 2),  # more scale rows than weight rows
    }
    with pytest.raises(InputError, match="do not tile"):
        open_checkpoint(folder(tmp_path, tensors, {"quant_method": "fp8"}))


def test_a_float_weight_with_a_scale_beside_it_is_not_dequantised(tmp_path):
    w = torch.from_numpy(dense(32, 16, 13))
    path = folder(tmp_path, {"x.weight": w, "x.weight_scale": torch.full((32, 1), 3.0)}, None)
    with open_checkpoint(path) as ckpt:
        assert torch.equal(ckpt.load("x.weight"), w)
        assert ckpt.notes() == {}


# ---------------------------------------------------------------- numerical zeros


def gaussian_round_trips(n: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """A square Gaussian (its smallest eigenvalues go down to 0) and its fp8, int8 and bf16
    round trips; square, so that a storage-epsilon floor would cut into the spectrum."""
    w = np.random.default_rng(seed).normal(size=(n, n)).astype(np.float32)
    q, s = int8_per_channel(w)
    base = torch.from_numpy(w)
    return {
        "float32": {"a.weight": base},
        "fp8": {"a.weight": base.to(torch.float8_e4m3fn)},
        "bf16": {"a.weight": base.bfloat16()},
        "int8": {"a.weight": torch.from_numpy(q.float().numpy() * s)},
    }


def test_quantisation_noise_is_not_rank_loss():
    trips = gaussian_round_trips(512, seed=14)
    reference, _ = spectralyzer.analyze(trips.pop("float32"))
    assert reference.loc[0, "rank_loss"] == 0
    for kind, tensors in trips.items():
        details, _ = spectralyzer.analyze(tensors)
        assert details.loc[0, "rank_loss"] == 0, kind
        assert details.loc[0, "phase"] == reference.loc[0, "phase"], kind


def test_gate_passes_quantisation_round_trips(tmp_path):
    """Heavy-tailed square layers (fp8 once made 9-26% of their eigenvalues "zeros" and the
    gate failed on "phase became rank-collapse"); int8 is stored with its scales."""
    base = {}
    for i in range(3):
        w = pareto_entries(512, 512, 2.5, seed=i)
        base[f"l{i}.weight"] = torch.from_numpy((w / np.abs(w).max() * 8).astype(np.float32))
    save_file(base, tmp_path / "base.safetensors")
    candidates = {
        "fp8": {k: v.to(torch.float8_e4m3fn) for k, v in base.items()},
        "bf16": {k: v.bfloat16() for k, v in base.items()},
        "int8": {},
    }
    for name, w in base.items():
        q, s = int8_per_channel(w.numpy())
        candidates["int8"] |= {name: q, f"{name}_scale": torch.from_numpy(s)}
    for kind, tensors in candidates.items():
        save_file(tensors, tmp_path / f"{kind}.safetensors")
        result = CliRunner().invoke(
            main,
            ["gate", str(tmp_path / "base.safetensors"), str(tmp_path / f"{kind}.safetensors")],
        )
        assert result.exit_code == 0, (kind, result.output)
        assert "PASS (0 of 3 layers failed)" in result.output


@pytest.mark.parametrize("cast", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_exact_rank_deficiency_is_still_rank_loss(cast):
    w = np.random.default_rng(16).normal(size=(300, 300)).astype(np.float32)
    w[:, 200:] = w[:, :100]  # 100 repeated columns stay repeated after any rounding
    details, _ = spectralyzer.analyze({"a.weight": torch.from_numpy(w).to(cast)})
    assert details.loc[0, "rank_loss"] == 100


def test_a_scaled_3d_fp8_tensor_is_skipped_with_its_reason(tmp_path):
    w = dense(64, 48, 17)
    tensors = {
        "experts.weight": torch.zeros(4, 64, 32, dtype=torch.float8_e4m3fn),
        "experts.weight_scale_inv": torch.ones(4, 1, 1),
        "fc.weight": torch.from_numpy(w).to(torch.float8_e4m3fn),
        "fc.weight_scale_inv": torch.ones(1, 1),
    }
    analysis, rows = analysed(folder(tmp_path, tensors, {"quant_method": "fp8"}))
    assert list(rows.index) == ["fc.weight"]
    skipped = {s.name: s.reason for s in analysis.skipped}
    assert skipped["experts.weight"] == (
        "float8_e4m3fn tensor of 3 dimensions with scales: not dequantised"
    )
    assert "experts.weight_scale_inv" in skipped  # as "not a layer weight matrix": 3-D, no .weight
