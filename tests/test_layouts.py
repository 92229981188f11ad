"""Expert stacks, fused projections, roles and natural order on LLM-shaped folders (issue 13).

Every row is checked against the dense matrix the generator (tests/llm_layouts.py)
cut by hand from the tensors it wrote: same set of rows, same (out, in) shape,
and eigenvalues equal to the squared singular values of that matrix to 1e-10
of the largest (weights stored float32, computed in float64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import llm_layouts
from llm_layouts import EXPERTS, HIDDEN, INTER, LAYOUTS, write_hf_folder
from spectralyzer.cli import main
from spectralyzer.errors import InputError, OptionError
from spectralyzer.io import open_checkpoint
from spectralyzer.layers import Selection, natural_key, plan
from spectralyzer.pipeline import AnalysisOptions, make_options, run_analysis

TOL = 1e-10


def analyse(path, **options):
    return run_analysis(path, make_options(device="cpu", **options))


def check_against_dense(result, expected):
    """Rows == expected rows; shapes and spectra those of the dense matrices."""
    rows = list(result.details["name"])
    assert sorted(rows) == sorted(expected)
    for name, shape in zip(rows, result.details["shape"], strict=True):
        dense = expected[name].numpy()
        assert tuple(shape) == dense.shape, name
        want = np.sort(np.linalg.svd(dense, compute_uv=False) ** 2)
        got = result.spectra[name].esd.evals
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= TOL * want.max(), name


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_matrix_of_every_layout_is_the_dense_part(tmp_path, layout):
    written = LAYOUTS[layout](tmp_path / layout)
    result = analyse(written.path)
    check_against_dense(result, written.expected)


def test_gpt_oss_interleaving_is_not_halves(tmp_path):
    """The interleaved gate (columns 0::2) differs from the first half: the test can tell."""
    written = llm_layouts.gpt_oss(tmp_path / "oss")
    stack = written.tensors["model.layers.0.mlp.experts.gate_up_proj"][0].double()
    interleaved = np.linalg.svd(stack[:, ::2].numpy(), compute_uv=False)
    halves = np.linalg.svd(stack[:, :INTER].numpy(), compute_uv=False)
    assert np.abs(interleaved - halves).max() > 0.1
    result = analyse(written.path)
    row = result.spectra["model.layers.0.mlp.experts.gate_up_proj[0]:gate"].esd.evals
    assert np.allclose(np.sort(row), np.sort(interleaved**2), rtol=1e-10)


def test_expert_counts_and_roles(tmp_path):
    written = llm_layouts.mixtral_fused(tmp_path / "mx")
    result = analyse(written.path)
    details = result.details.set_index("name")
    assert result.summary["num_expert_matrices"] == 2 * EXPERTS * 3
    assert details.loc["model.layers.1.mlp.experts.gate_up_proj[3]:up", "role"] == "expert-up"
    assert details.loc["model.layers.1.mlp.experts.down_proj[0]", "role"] == "expert-down"
    assert set(details["layer_type"]) == {"linear"}  # never conv1d
    lines = "\n".join(result.summary_lines())
    assert f"expert matrices in the means and phase counts: {2 * EXPERTS * 3}" in lines


def test_granite_expert_stacks_are_no_convolutions(tmp_path):
    result = analyse(llm_layouts.granite(tmp_path / "g").path)
    assert "conv1d" not in set(result.details["layer_type"])
    assert (result.details["num_slices"] == 1).all()


def test_no_split_keeps_fused_projections_whole(tmp_path):
    written = llm_layouts.phi3(tmp_path / "phi3")
    result = analyse(written.path, split=False)
    details = result.details.set_index("name")
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert details.loc[qkv, "role"] == "attn-qkv"
    assert tuple(details.loc[qkv, "shape"]) == (64, HIDDEN)
    assert details.loc["model.layers.0.mlp.gate_up_proj.weight", "role"] == "mlp-gate-up"
    assert not any(":" in name for name in details.index)
    expected = {name: torch.tensor(t.double().numpy()) for name, t in written.tensors.items()}
    check_against_dense(result, expected)


def test_no_split_still_cuts_experts_apart(tmp_path):
    written = llm_layouts.mixtral_fused(tmp_path / "mx")
    result = analyse(written.path, split=False)
    names = set(result.details["name"])
    assert "model.layers.0.mlp.experts.gate_up_proj[2]" in names
    gate_up = written.tensors["model.layers.0.mlp.experts.gate_up_proj"][2].double().numpy()
    want = np.sort(np.linalg.svd(gate_up, compute_uv=False) ** 2)
    got = result.spectra["model.layers.0.mlp.experts.gate_up_proj[2]"].esd.evals
    assert np.abs(got - want).max() <= TOL * want.max()


def test_experts_mean_gives_one_row_per_group(tmp_path):
    path = llm_layouts.mixtral_fused(tmp_path / "mx").path
    each = analyse(path).details.set_index("name")
    mean = analyse(path, expert_rows="mean")
    details = mean.details.set_index("name")
    group = "model.layers.1.mlp.experts.gate_up_proj[*]:gate"
    members = [f"model.layers.1.mlp.experts.gate_up_proj[{x}]:gate" for x in range(EXPERTS)]
    assert details.loc[group, "num_experts"] == EXPERTS
    for column in ("alpha", "log_norm", "stable_rank", "lambda_max"):
        assert details.loc[group, column] == pytest.approx(each.loc[members, column].mean())
    assert len(details) == 2 * 3  # 2 layers x (gate, up, down)
    assert mean.summary["num_expert_matrices"] == 2 * EXPERTS * 3
    assert mean.summary["num_expert_groups"] == 6
    assert mean.summary["num_layers"] == 6
    assert mean.summary["alpha"] == pytest.approx(details["alpha"].mean())


def test_experts_mean_groups_per_expert_modules_too(tmp_path):
    path = llm_layouts.mixtral_per_expert(tmp_path / "m").path
    details = analyse(path, expert_rows="mean").details.set_index("name")
    assert details.loc["model.layers.0.block_sparse_moe.experts.*.w2.weight", "num_experts"] == 4


def test_experts_skip_of_an_all_expert_model_says_why(tmp_path):
    written = llm_layouts.gpt_oss(tmp_path / "oss")
    with pytest.raises(InputError, match=r"expert matrix, left out \(--expert-rows skip\)"):
        analyse(written.path, expert_rows="skip")


def test_experts_skip_leaves_the_rest(tmp_path):
    tensors = dict(llm_layouts.mixtral_fused(tmp_path / "mx").tensors)
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.randn(HIDDEN, HIDDEN)
    path = write_hf_folder(tmp_path / "mixed", tensors, {"model_type": "mixtral"})
    result = analyse(path, expert_rows="skip")
    assert list(result.details["name"]) == ["model.layers.0.self_attn.q_proj.weight"]
    reasons = {s["name"]: s["reason"] for s in result.summary["skipped"]}
    assert reasons["model.layers.1.mlp.experts.down_proj"].startswith("expert matrix, left out")
    assert result.summary["num_expert_matrices"] == 0


def test_roles_select_a_family(tmp_path):
    path = llm_layouts.llama(tmp_path / "l").path
    result = analyse(path, roles=("attn",))
    assert set(result.details["role"]) == {"attn-q", "attn-k", "attn-v", "attn-o"}
    assert len(result.details) == 8
    only_down = analyse(path, roles=("mlp-down",))
    assert list(only_down.details["name"]) == [
        f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)
    ]


def test_roles_select_split_parts(tmp_path):
    path = llm_layouts.pythia(tmp_path / "p").path
    result = analyse(path, roles=("attn-k", "lm-head"))
    assert list(result.details["name"]) == [  # natural order: "embed_out" < "gpt_neox"
        "embed_out.weight",
        "gpt_neox.layers.0.attention.query_key_value.weight:k",
        "gpt_neox.layers.1.attention.query_key_value.weight:k",
    ]


def test_output_head_has_one_role_across_architectures(tmp_path):
    llama = analyse(llm_layouts.llama(tmp_path / "l").path).details.set_index("name")
    neox = analyse(llm_layouts.pythia(tmp_path / "p").path).details.set_index("name")
    assert llama.loc["lm_head.weight", "role"] == neox.loc["embed_out.weight", "role"] == "lm-head"


def test_unknown_roles_are_refused():
    with pytest.raises(OptionError, match="roles"):
        Selection(roles=("attention",))
    with pytest.raises(OptionError, match="expert_rows"):
        AnalysisOptions(expert_rows="median")


def test_rows_come_in_natural_order(tmp_path):
    llama = llm_layouts.llama(tmp_path / "l", layers=11)
    mixtral = llm_layouts.mixtral_fused(tmp_path / "m", experts=12)
    for written in (llama, mixtral):
        result = analyse(written.path)
        names = list(result.details["name"])
        assert names == sorted(names, key=natural_key)
        document = json.loads(json.dumps(result.document(), default=str))
        assert [row["name"] for row in document["layers"]] == names
    names = list(analyse(llama.path).details["name"])
    assert names.index("model.layers.2.mlp.down_proj.weight") < names.index(
        "model.layers.10.mlp.down_proj.weight"
    )
    names = list(analyse(mixtral.path).details["name"])
    assert names.index("model.layers.0.mlp.experts.down_proj[2]") < names.index(
        "model.layers.0.mlp.experts.down_proj[10]"
    )
    # parts keep the tensor's order: q, k, v; gate before up
    names = list(analyse(llm_layouts.phi3(tmp_path / "phi3").path).details["name"])
    qkv = [n.rsplit(":", 1)[1] for n in names if "layers.0.self_attn.qkv_proj" in n]
    assert qkv == ["q", "k", "v"]


def test_natural_key():
    names = ["h.10.w", "h.2.w", "h.1.w", "e[10]", "e[2]", "a"]
    assert sorted(names, key=natural_key) == ["a", "e[2]", "e[10]", "h.1.w", "h.2.w", "h.10.w"]


def test_unknown_3d_layout_is_skipped_not_sliced(tmp_path):
    tensors = {
        "model.layers.0.mlp.experts.scales": torch.randn(4, 16, 16),
        "model.layers.0.mlp.experts.extra.weight": torch.randn(4, 16, 16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16),
    }
    path = write_hf_folder(tmp_path / "odd", tensors, {"model_type": "mixtral"})
    result = analyse(path)
    assert list(result.details["name"]) == ["model.layers.0.self_attn.q_proj.weight"]
    reasons = {s["name"]: s["reason"] for s in result.summary["skipped"]}
    for name in ("model.layers.0.mlp.experts.scales", "model.layers.0.mlp.experts.extra.weight"):
        assert reasons[name].startswith("3-D tensor of unknown layout"), reasons


def test_conv1d_kernels_are_still_convolutions(tmp_path):
    path = write_hf_folder(tmp_path / "c", {"encoder.conv.weight": torch.randn(16, 8, 3)}, None)
    result = analyse(path)
    assert list(result.details["layer_type"]) == ["conv1d"]


def test_without_config_split_follows_the_shape(tmp_path):
    gpt2 = llm_layouts.gpt2(tmp_path / "gpt2", config=False)  # out == 3 in: unambiguous
    check_against_dense(analyse(gpt2.path), gpt2.expected)
    mixtral = llm_layouts.mixtral_fused(tmp_path / "mx", config=False)  # down_proj tells
    check_against_dense(analyse(mixtral.path), mixtral.expected)


def test_without_config_ambiguous_fusions_stay_whole_with_a_note(tmp_path):
    pythia = analyse(llm_layouts.pythia(tmp_path / "p", config=False).path)
    whole = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert whole in set(pythia.details["name"])
    assert "per head" in pythia.summary["layout"]["notes"][whole]
    assert any(line.startswith(f"layout note: {whole}: ") for line in pythia.summary_lines())
    phi3 = analyse(llm_layouts.phi3(tmp_path / "phi3", config=False).path)  # GQA: sizes unknown
    assert "model.layers.0.self_attn.qkv_proj.weight" in set(phi3.details["name"])
    assert "model.layers.0.mlp.gate_up_proj.weight:gate" in set(phi3.details["name"])
    oss = llm_layouts.gpt_oss(tmp_path / "oss", config=False)  # interleaving unknown
    result = analyse(oss.path)
    assert "model.layers.0.mlp.experts.gate_up_proj[1]" in set(result.details["name"])
    note = result.summary["layout"]["notes"]["model.layers.0.mlp.experts.gate_up_proj"]
    assert "config.json" in note
    # the down_proj is still right: oriented [E, in, out] from the pair's shapes
    down = result.details.set_index("name").loc["model.layers.0.mlp.experts.down_proj[1]"]
    assert tuple(down["shape"]) == (HIDDEN, INTER)


def test_each_source_tensor_is_loaded_once(tmp_path, monkeypatch):
    path = llm_layouts.mixtral_fused(tmp_path / "mx").path
    loads: list[str] = []
    with open_checkpoint(path) as checkpoint:
        original = checkpoint.load

        def counting(name):
            loads.append(name)
            return original(name)

        monkeypatch.setattr(checkpoint, "load", counting)
        specs, _ = plan(checkpoint.tensors(), Selection(), config=checkpoint.config())
        from spectralyzer.engine import compute_spectra

        for batch_elements in (2**25, 1):  # one window, and a window per tensor
            loads.clear()
            spectra = compute_spectra(checkpoint, specs, batch_elements=batch_elements)
            assert len(spectra) == len(specs) == 2 * EXPERTS * 3
            assert sorted(loads) == sorted({spec.source for spec in specs})


def test_malformed_config_is_an_input_error(tmp_path):
    written = llm_layouts.llama(tmp_path / "l")
    (written.path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        analyse(written.path)
    result = CliRunner().invoke(main, ["analyze", str(written.path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("spectralyzer: error: ")
    assert "config.json" in result.output and "Traceback" not in result.output


def test_cli_flags(tmp_path):
    path = llm_layouts.pythia(tmp_path / "p").path
    run = CliRunner().invoke(main, ["analyze", str(path), "--format", "json", "-q"])
    assert run.exit_code == 0, run.output
    names = [row["name"] for row in json.loads(run.output)["layers"]]
    assert "gpt_neox.layers.0.attention.query_key_value.weight:q" in names
    args = ["analyze", str(path), "--no-split", "--roles", "attn", "--format", "json", "-q"]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    layers = json.loads(run.output)["layers"]
    assert {row["role"] for row in layers} == {"attn-qkv", "attn-o"}
    run = CliRunner().invoke(main, ["analyze", str(path), "--roles", "attention"])
    assert run.exit_code == 2 and "--roles" in run.output
    run = CliRunner().invoke(main, ["analyze", str(path), "-q"])
    header = run.output.splitlines()[0].split()
    assert header[:2] == ["name", "role"]
