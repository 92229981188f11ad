"""LoRA / PEFT adapters: each update analysed as s * B @ A, merged rows as W + dW (issue 13).

The adapters are written here in PEFT's layout (``base_model.model.<module>.lora_A.weight``,
``adapter_config.json``); every spectrum is checked against numpy's SVD of the dense
matrix the test forms itself from the factors it wrote, to 1e-10 relative.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from spectralyzer.cli import main
from spectralyzer.pipeline import AnalysisOptions, run_analysis
from spectralyzer.roles import role_of
from spectralyzer.variants import variant_of

OUT, IN, VOCAB = 48, 40, 60
MODULES = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {f"{m}.weight": torch.randn(OUT, IN, generator=g) for m in MODULES}
    state["model.embed_tokens.weight"] = torch.randn(VOCAB, IN, generator=g)
    state["score.weight"] = torch.randn(10, IN, generator=g)
    return state


def write_adapter(
    folder: Path, r: int, alpha: float, seed: int = 1, *, embedding: bool = False, **config
) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter on MODULES (and the embedding); returns what it saved."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    ranks = config.get("rank_pattern", {})
    tensors = {}
    for m in MODULES:
        rank = next((v for k, v in ranks.items() if m.endswith(k)), r)
        tensors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(rank, IN, generator=g)
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(OUT, rank, generator=g)
    if embedding:
        prefix = "base_model.model.model.embed_tokens"
        tensors[f"{prefix}.lora_embedding_A"] = torch.randn(r, VOCAB, generator=g)
        tensors[f"{prefix}.lora_embedding_B"] = torch.randn(IN, r, generator=g)
    save_file(tensors, folder / "adapter_model.safetensors")
    settings = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, **config}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return tensors


def factors(tensors: dict[str, torch.Tensor], module: str) -> tuple[np.ndarray, np.ndarray]:
    a = tensors[f"base_model.model.{module}.lora_A.weight"].double().numpy()
    b = tensors[f"base_model.model.{module}.lora_B.weight"].double().numpy()
    return a, b


def singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(matrix, compute_uv=False))[::-1]


def assert_row_spectrum(result, name: str, dense: np.ndarray) -> None:
    """The row's eigenvalues are the squared non-zero singular values of ``dense``."""
    evals = result.spectra[name].esd.evals
    got = np.sort(np.sqrt(evals))[::-1]
    want = singular_values(dense)
    np.testing.assert_allclose(got, want[: got.size], rtol=0, atol=1e-10 * want[0])
    assert got.size == want.size or want[got.size :].max() <= 1e-10 * want[0]  # the rest: zeros


@pytest.mark.parametrize(
    ("r", "alpha", "rslora"),
    [(4, 8, False), (16, 32, False), (16, 32, True)],
    ids=["r4", "r16", "rslora"],
)
def test_delta_rows_have_the_spectrum_of_s_B_A(tmp_path, r, alpha, rslora):
    tensors = write_adapter(tmp_path / "ad", r, alpha, use_rslora=rslora)
    result = run_analysis(tmp_path / "ad")
    s = alpha / (math.sqrt(r) if rslora else r)
    assert sorted(result.details["name"]) == sorted(f"{m}.weight@lora" for m in MODULES)
    for m in MODULES:
        a, b = factors(tensors, m)
        assert_row_spectrum(result, f"{m}.weight@lora", s * b @ a)
        assert result.spectra[f"{m}.weight@lora"].esd.evals.size == r  # the whole spectrum


def test_adapter_saved_as_bin(tmp_path):
    tensors = write_adapter(tmp_path / "ad", 4, 8)
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    torch.save(tensors, tmp_path / "ad" / "adapter_model.bin")
    result = run_analysis(tmp_path / "ad")
    a, b = factors(tensors, MODULES[0])
    assert_row_spectrum(result, f"{MODULES[0]}.weight@lora", 2.0 * b @ a)


def test_rank_4_is_analysed_with_the_fit_not_applicable(tmp_path):
    write_adapter(tmp_path / "ad", 4, 8)
    result = run_analysis(tmp_path / "ad")  # default min_evals 8 > r: analysed all the same
    details, summary = result.details, result.summary
    assert len(details) == len(MODULES) and not summary["skipped"]
    assert set(details["layer_type"]) == {"lora"} and set(details["variant"]) == {"lora-delta"}
    assert set(details["phase"]) == {"low-rank"}
    assert set(details["warning"]) == {"fit-not-applicable"}
    # every fitted column is undefined, including those added after the LoRA rows were
    assert details["erg_gap"].isna().all() and (details["num_small_outliers"] == 0).all()
    assert details["alpha"].isna().all() and np.isfinite(details["log_norm"]).all()
    assert summary["num_fit_failed"] == 0
    assert summary["num_fit_not_applicable"] == len(MODULES)
    assert summary["warnings"]["fit-not-applicable"] == len(MODULES)


def test_rank_and_alpha_patterns_are_honoured(tmp_path):
    config = {"rank_pattern": {"v_proj": 8}, "alpha_pattern": {r"layers\.1\.self_attn\.q_proj": 64}}
    tensors = write_adapter(tmp_path / "ad", 4, 8, **config)
    result = run_analysis(tmp_path / "ad")
    for m in MODULES:
        rank = 8 if m.endswith("v_proj") else 4
        alpha = 64 if m == "model.layers.1.self_attn.q_proj" else 8
        a, b = factors(tensors, m)
        assert_row_spectrum(result, f"{m}.weight@lora", (alpha / rank) * b @ a)


def test_embedding_lora(tmp_path):
    tensors = write_adapter(tmp_path / "ad", 4, 16, embedding=True)
    result = run_analysis(tmp_path / "ad")
    prefix = "base_model.model.model.embed_tokens"
    a = tensors[f"{prefix}.lora_embedding_A"].double().numpy()
    b = tensors[f"{prefix}.lora_embedding_B"].double().numpy()
    name = "model.embed_tokens.weight@lora"
    assert_row_spectrum(result, name, (4.0 * b @ a).T)
    row = result.details.set_index("name").loc[name]
    assert row["layer_type"] == "lora" and role_of(name, "lora") == "embedding"


def test_with_base_rows_are_base_delta_and_merged(tmp_path):
    base = base_state()
    save_file(base, tmp_path / "base.safetensors")
    tensors = write_adapter(tmp_path / "ad", 4, 8)
    options = AnalysisOptions(adapter=tmp_path / "ad")
    result = run_analysis(tmp_path / "base.safetensors", options)
    variants = dict(zip(result.details["name"], result.details["variant"], strict=True))
    assert result.summary["variants"] == {"base": 6, "lora-delta": 4, "merged": 4}
    for m in MODULES:
        w = base[f"{m}.weight"].double().numpy()
        a, b = factors(tensors, m)
        assert variants[f"{m}.weight"] == "base"
        assert_row_spectrum(result, f"{m}.weight", w)
        assert_row_spectrum(result, f"{m}.weight@lora", 2.0 * b @ a)
        assert_row_spectrum(result, f"{m}.weight@merged", w + 2.0 * b @ a)
    assert role_of("model.layers.0.self_attn.q_proj.weight@lora", "lora") == "attn-q"
    assert variant_of("x.weight@merged") == "merged"
    # each weight's rows together, base first
    q = "model.layers.0.self_attn.q_proj.weight"
    rows = list(result.details["name"])
    assert rows[rows.index(q) : rows.index(q) + 3] == [q, q + "@lora", q + "@merged"]
    # the model means mix base and merged rows; each variant's own means are there too
    by = result.summary["means_by_variant"]
    for variant in ("base", "merged"):
        alphas = result.details.loc[result.details["variant"] == variant, "alpha"]
        assert by[variant]["alpha"] == pytest.approx(alphas.mean(), rel=1e-12)
    assert math.isnan(by["lora-delta"]["alpha"])


def test_adapter_option_on_the_command_line(tmp_path):
    save_file(base_state(), tmp_path / "base.safetensors")
    write_adapter(tmp_path / "ad", 16, 16)
    result = run("analyze", tmp_path / "base.safetensors", "--adapter", tmp_path / "ad", "-q")
    assert result.exit_code == 0, result.output
    assert "variant" in result.stdout.splitlines()[0]
    assert "variants: base 6, lora-delta 4, merged 4" in result.stdout
    assert "fit not applicable (low-rank updates, left out of means): 4" in result.stdout
    data = json.loads(
        run(
            "analyze",
            tmp_path / "base.safetensors",
            "--adapter",
            tmp_path / "ad",
            "-q",
            "--format",
            "json",
            "--types",
            "lora",
        ).stdout
    )
    assert {layer["variant"] for layer in data["layers"]} == {"lora-delta"}


def test_modules_to_save_are_ordinary_layers(tmp_path):
    base = base_state()
    save_file(base, tmp_path / "base.safetensors")
    write_adapter(tmp_path / "ad", 4, 8)
    saved = torch.randn(10, IN, generator=torch.Generator().manual_seed(9))
    tensors = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    tensors["base_model.model.score.modules_to_save.default.weight"] = saved
    save_file(tensors, tmp_path / "ad" / "adapter_model.safetensors")
    result = run_analysis(tmp_path / "base.safetensors", AnalysisOptions(adapter=tmp_path / "ad"))
    rows = result.details.set_index("name")
    assert rows.loc["score.weight@merged", "layer_type"] == "linear"
    assert rows.loc["score.weight@merged", "variant"] == "merged"
    assert rows.loc["score.weight", "variant"] == "base"
    assert_row_spectrum(result, "score.weight@merged", saved.double().numpy())
    assert_row_spectrum(result, "score.weight", base["score.weight"].double().numpy())


def test_adapter_in_memory_on_a_state_dict(tmp_path):
    base = base_state()
    tensors = write_adapter(tmp_path / "ad", 4, 4)
    result = run_analysis(base, AnalysisOptions(adapter=tmp_path / "ad"))
    m = MODULES[0]
    a, b = factors(tensors, m)
    assert_row_spectrum(result, f"{m}.weight@merged", base[f"{m}.weight"].double().numpy() + b @ a)


# ----------------------------------------------------------------------------- exit 2


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_adapter_that_is_not_an_adapter_folder(tmp_path):
    save_file(base_state(), tmp_path / "base.safetensors")
    (tmp_path / "empty").mkdir()
    line = error_line(
        run("analyze", tmp_path / "base.safetensors", "--adapter", tmp_path / "empty")
    )
    assert "empty" in line


def test_adapter_targets_a_module_the_base_lacks(tmp_path):
    base = {k: v for k, v in base_state().items() if "layers.1.self_attn.v_proj" not in k}
    save_file(base, tmp_path / "base.safetensors")
    write_adapter(tmp_path / "ad", 4, 8)
    line = error_line(run("analyze", tmp_path / "base.safetensors", "--adapter", tmp_path / "ad"))
    assert "adapter targets model.layers.1.self_attn.v_proj.weight" in line


def test_rank_that_disagrees_with_the_config(tmp_path):
    write_adapter(tmp_path / "ad", 4, 8)
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    config["r"] = 8
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(config))
    assert "do not have rank 8" in error_line(run("analyze", tmp_path / "ad"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA adapter"),
        ({"peft_type": "IA3"}, "PEFT adapter type IA3 not supported"),
        ({"r": 0}, "r and lora_alpha must be positive"),
        ({"rank_pattern": {"(": 4}}, "not a regular expression"),
    ],
)
def test_unsupported_or_bad_config(tmp_path, change, message):
    write_adapter(tmp_path / "ad", 4, 8)
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**config, **change}))
    assert message in error_line(run("analyze", tmp_path / "ad"))


def test_adapter_folder_given_as_the_base(tmp_path):
    write_adapter(tmp_path / "ad", 4, 8)
    line = error_line(run("analyze", tmp_path / "ad", "--adapter", tmp_path / "ad"))
    assert "is itself an adapter folder" in line


def test_fan_in_fan_out_update_is_transposed_onto_a_gpt2_conv1d(tmp_path):
    """GPT-2's Conv1D stores (in, out); PEFT's fan_in_fan_out adds (B @ A)^T to it."""
    g = torch.Generator().manual_seed(4)
    base = {"h.0.attn.c_attn.weight": torch.randn(IN, 3 * IN, generator=g)}
    save_file(base, tmp_path / "gpt2.safetensors")
    a, b = torch.randn(4, IN, generator=g), torch.randn(3 * IN, 4, generator=g)
    (tmp_path / "ad").mkdir()
    save_file(
        {
            "base_model.model.h.0.attn.c_attn.lora_A.weight": a,
            "base_model.model.h.0.attn.c_attn.lora_B.weight": b,
        },
        tmp_path / "ad" / "adapter_model.safetensors",
    )
    config = {"r": 4, "lora_alpha": 4, "fan_in_fan_out": True}
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(config))
    result = run_analysis(tmp_path / "gpt2.safetensors", AnalysisOptions(adapter=tmp_path / "ad"))
    w, delta = base["h.0.attn.c_attn.weight"].double().numpy(), (b.double() @ a.double()).numpy()
    assert_row_spectrum(result, "h.0.attn.c_attn.weight@merged", w + delta.T)
    assert result.details.set_index("name").loc["h.0.attn.c_attn.weight@merged", "layer_type"] == (
        "gpt2-conv1d"
    )
