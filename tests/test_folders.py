"""Which files form the model, aliases analysed once, skipped tensors visible (issue 13).

Every folder is written here with known tensors, so each test knows exactly which
rows the analysis must give: the names, their count, and the spectra of the
tensors it wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from helpers import esd
from spectralyzer.cli import main
from spectralyzer.pipeline import AnalysisOptions, run_analysis


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def llama_like(layers: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small Llama-named state dict: q/k/v/o projections per block, in HF names."""
    g = torch.Generator().manual_seed(seed)
    return {
        f"model.layers.{i}.self_attn.{p}.weight": torch.randn(24, 24, generator=g)
        for i in range(layers)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }


def consolidated(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under Mistral's original names (``layers.0.attention.wq.weight``)."""
    rename = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
    out = {}
    for name, tensor in state.items():
        block, proj = name.split(".")[2], name.split(".")[4]
        out[f"layers.{block}.attention.{rename[proj]}.weight"] = tensor.clone()
    return out


def names(path, **options) -> list[str]:
    result = run_analysis(path, AnalysisOptions(**options))
    return sorted(result.details["name"])


# ----------------------------------------------------------------------------- which files


def test_stray_consolidated_file_is_ignored_not_read_twice(tmp_path):
    state = llama_like()
    save_file(state, tmp_path / "model.safetensors")
    save_file(consolidated(state), tmp_path / "consolidated.safetensors")
    result = run_analysis(tmp_path)
    assert sorted(result.details["name"]) == sorted(state)  # 16 rows, not 32
    assert result.summary["layout"]["ignored_files"] == ["consolidated.safetensors"]
    table = run("analyze", tmp_path, "-q")
    assert table.exit_code == 0, table.output
    assert "ignored files (not part of the model): consolidated.safetensors" in table.stdout


def test_pytorch_model_bin_is_read_before_another_safetensors_file(tmp_path):
    """Hugging Face reads pytorch_model.bin when there is no model.safetensors."""
    state = llama_like(layers=2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    save_file(consolidated(state), tmp_path / "consolidated.safetensors")
    assert names(tmp_path) == sorted(state)
    notes = run_analysis(tmp_path).summary["layout"]
    assert notes["ignored_files"] == ["consolidated.safetensors"]


def test_safetensors_beside_bin_reads_only_the_safetensors(tmp_path):
    state = llama_like(layers=2)
    save_file(state, tmp_path / "model.safetensors")
    torch.save({k: v * 2 for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    result = run_analysis(tmp_path)
    assert sorted(result.details["name"]) == sorted(state)
    assert result.summary["layout"]["ignored_files"] == ["pytorch_model.bin"]
    name = "model.layers.1.self_attn.v_proj.weight"
    expected = esd(state[name].double().numpy())  # the safetensors values, not twice them
    np.testing.assert_allclose(result.spectra[name].esd.evals, expected, rtol=1e-10)


def test_the_one_checkpoint_file_of_a_folder_is_read(tmp_path):
    state = llama_like(layers=1)
    torch.save(state, tmp_path / "weights.pt")
    torch.save({"lr": torch.tensor(0.1)}, tmp_path / "training_args.bin")
    result = run_analysis(tmp_path)
    assert sorted(result.details["name"]) == sorted(state)
    assert result.summary["layout"]["ignored_files"] == ["training_args.bin"]


def test_complete_shards_without_index_are_read_and_a_stray_file_ignored(tmp_path):
    state = llama_like(layers=2)
    items = sorted(state.items())
    save_file(dict(items[:4]), tmp_path / "model-00001-of-00002.safetensors")
    save_file(dict(items[4:]), tmp_path / "model-00002-of-00002.safetensors")
    save_file({"extra.weight": torch.ones(24, 24)}, tmp_path / "extra.safetensors")
    result = run_analysis(tmp_path)
    assert sorted(result.details["name"]) == sorted(state)
    assert result.summary["layout"]["ignored_files"] == ["extra.safetensors"]


def test_several_candidates_and_no_rule_exit_2_naming_them(tmp_path):
    save_file(llama_like(1), tmp_path / "a.safetensors")
    save_file(llama_like(1, seed=1), tmp_path / "b.safetensors")
    line = error_line(run("analyze", tmp_path))
    assert line.startswith("spectralyzer: error: ")
    assert "a.safetensors, b.safetensors" in line and "give the path of the one" in line


def test_incomplete_shard_set_is_not_a_rule(tmp_path):
    save_file(llama_like(1), tmp_path / "model-00001-of-00003.safetensors")
    save_file(llama_like(1, seed=1), tmp_path / "model-00002-of-00003.safetensors")
    assert "several checkpoint files" in error_line(run("analyze", tmp_path))


def test_adapter_beside_a_model_is_not_mixed_in(tmp_path):
    state = llama_like(layers=1)
    save_file(state, tmp_path / "model.safetensors")
    lora = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 24)}
    save_file(lora, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    result = run_analysis(tmp_path)
    assert sorted(result.details["name"]) == sorted(state)
    assert result.summary["format"] == "hf-folder"
    assert result.summary["layout"]["ignored_files"] == ["adapter_model.safetensors"]


# ----------------------------------------------------------------------------- aliases


def tied_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Embedding tied to the output head (one tensor under two names), and two layers."""
    g = torch.Generator().manual_seed(seed)
    embedding = torch.randn(40, 16, generator=g)
    return {
        "model.embed_tokens.weight": embedding,
        "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=g),
        "model.layers.1.mlp.up_proj.weight": torch.randn(32, 16, generator=g),
        "lm_head.weight": embedding,
    }


def test_tied_weights_in_a_torch_file_are_analysed_once(tmp_path):
    state = tied_state()
    torch.save(state, tmp_path / "tied.pt")
    result = run_analysis(tmp_path / "tied.pt")
    rows = list(result.details["name"])
    assert "lm_head.weight" not in rows and len(rows) == 3
    assert result.summary["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert result.summary["num_layers"] == 3
    # the means are over the three distinct matrices, the embedding counted once
    assert result.summary["log_norm"] == pytest.approx(result.details["log_norm"].mean())
    text = run("analyze", tmp_path / "tied.pt", "-q").stdout
    assert "aliases (same data, analysed once under the second name): " in text
    assert "lm_head.weight = model.embed_tokens.weight" in text


def test_equal_values_in_separate_torch_storages_are_not_aliases(tmp_path):
    """In a torch file only shared storage makes an alias: an equal copy is a second tensor."""
    state = tied_state()
    state["lm_head.weight"] = state["lm_head.weight"].clone()
    torch.save(state, tmp_path / "copies.pt")
    result = run_analysis(tmp_path / "copies.pt")
    assert "aliases" not in result.summary and result.summary["num_layers"] == 4


def test_identical_bytes_in_safetensors_are_aliases(tmp_path):
    state = {k: v.clone() for k, v in tied_state().items()}  # safetensors cannot share
    save_file(state, tmp_path / "tied.safetensors")
    result = run_analysis(tmp_path / "tied.safetensors")
    aliases = result.summary["aliases"]
    assert len(aliases) == 1 and result.summary["num_layers"] == 3
    [(alias, canonical)] = aliases.items()
    assert {alias, canonical} == {"lm_head.weight", "model.embed_tokens.weight"}


def test_same_leading_bytes_but_different_tensors_are_not_aliases(tmp_path):
    """The byte sample agrees (first 4096 bytes), the full comparison does not."""
    a = torch.zeros(64, 64)
    b = a.clone()
    b[-1, -1] = 1.0
    a[0], b[0] = torch.arange(64.0), torch.arange(64.0)
    save_file({"a.weight": a, "b.weight": b}, tmp_path / "m.safetensors")
    result = run_analysis(tmp_path / "m.safetensors")
    assert "aliases" not in result.summary and result.summary["num_layers"] == 2


def test_same_bytes_different_shape_are_not_aliases(tmp_path):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 16, generator=g)
    save_file({"a.weight": w, "b.weight": w.reshape(16, 32).clone()}, tmp_path / "m.safetensors")
    assert run_analysis(tmp_path / "m.safetensors").summary["num_layers"] == 2


def test_tied_weights_across_sharded_folder(tmp_path):
    state = {k: v.clone() for k, v in tied_state().items()}
    first = {
        k: state[k] for k in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight")
    }
    second = {k: state[k] for k in ("model.layers.1.mlp.up_proj.weight", "lm_head.weight")}
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    summary = run_analysis(tmp_path).summary
    assert summary["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}


# ----------------------------------------------------------------------------- skipped listing


@pytest.fixture
def with_skips(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_file(
        {
            "enc.weight": torch.randn(32, 16, generator=g),
            "ids": torch.zeros(4, 8, dtype=torch.int64),
            "pos": torch.zeros(2, 8, dtype=torch.int64),
            "tiny.weight": torch.randn(16, 3, generator=g),
            "scale.weight": torch.randn(4, 4, 4, 4, 4, 4, generator=g),
        },
        path,
    )
    return path


def test_table_ends_with_skipped_tensors_grouped_by_reason(with_skips):
    text = run("analyze", with_skips, "-q").stdout
    lines = text.rstrip("\n").splitlines()
    assert lines[-4:] == [
        "skipped 2: int64 tensor, not floating point",
        "skipped 1: 6-D tensor of unknown layout (neither a convolution kernel nor a known "
        "expert stack): not analysed",
        "skipped 1: 3 eigenvalues per matrix, fewer than min_evals 8",
        "(-v lists each skipped tensor)",
    ]


def test_verbose_lists_each_skipped_tensor(with_skips):
    text = run("analyze", with_skips, "-q", "-v").stdout
    assert "skipped ids (4x8): int64 tensor, not floating point" in text
    assert "skipped pos (2x8): int64 tensor, not floating point" in text
    assert (
        "skipped scale.weight (4x4x4x4x4x4): 6-D tensor of unknown layout (neither a "
        "convolution kernel nor a known expert stack): not analysed" in text
    )
    assert "skipped tiny.weight (16x3): 3 eigenvalues per matrix" in text


def test_markdown_groups_skipped_the_same_way(with_skips):
    text = run("analyze", with_skips, "-q", "--format", "markdown").stdout
    assert "- skipped 2: int64 tensor, not floating point" in text


def test_json_keeps_the_full_list(with_skips):
    data = json.loads(run("analyze", with_skips, "-q", "--format", "json").stdout)
    skipped = {s["name"]: s for s in data["summary"]["skipped"]}
    assert sorted(skipped) == ["ids", "pos", "scale.weight", "tiny.weight"]
    assert skipped["ids"]["shape"] == [4, 8]
