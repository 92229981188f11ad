"""One role vocabulary across architectures (docs: src/spectralyzer/roles.py)."""

from __future__ import annotations

import pytest

from spectralyzer.roles import FAMILIES, ROLES, family, matches, role_of

CASES = [
    # Llama / Mistral / Qwen
    ("model.embed_tokens.weight", "embedding", "embedding"),
    ("model.layers.0.self_attn.q_proj.weight", "linear", "attn-q"),
    ("model.layers.0.self_attn.k_proj.weight", "linear", "attn-k"),
    ("model.layers.0.self_attn.v_proj.weight", "linear", "attn-v"),
    ("model.layers.0.self_attn.o_proj.weight", "linear", "attn-o"),
    ("model.layers.0.mlp.gate_proj.weight", "linear", "mlp-gate"),
    ("model.layers.0.mlp.up_proj.weight", "linear", "mlp-up"),
    ("model.layers.0.mlp.down_proj.weight", "linear", "mlp-down"),
    ("lm_head.weight", "linear", "lm-head"),
    # Llama consolidated
    ("tok_embeddings.weight", "embedding", "embedding"),
    ("layers.3.attention.wq.weight", "linear", "attn-q"),
    ("layers.3.attention.wo.weight", "linear", "attn-o"),
    ("layers.3.feed_forward.w1.weight", "linear", "mlp-gate"),
    ("layers.3.feed_forward.w2.weight", "linear", "mlp-down"),
    ("layers.3.feed_forward.w3.weight", "linear", "mlp-up"),
    ("output.weight", "linear", "lm-head"),
    # GPT-2 (fused, then split parts)
    ("h.0.attn.c_attn.weight", "gpt2-conv1d", "attn-qkv"),
    ("h.0.attn.c_attn.weight:k", "gpt2-conv1d", "attn-k"),
    ("h.0.attn.c_proj.weight", "gpt2-conv1d", "attn-o"),
    ("h.0.mlp.c_fc.weight", "gpt2-conv1d", "mlp-up"),
    ("h.0.mlp.c_proj.weight", "gpt2-conv1d", "mlp-down"),
    ("wte.weight", "embedding", "embedding"),
    # GPT-NeoX / Pythia
    ("gpt_neox.layers.1.attention.query_key_value.weight", "linear", "attn-qkv"),
    ("gpt_neox.layers.1.attention.query_key_value.weight:v", "linear", "attn-v"),
    ("gpt_neox.layers.1.attention.dense.weight", "linear", "attn-o"),
    ("gpt_neox.layers.1.mlp.dense_h_to_4h.weight", "linear", "mlp-up"),
    ("gpt_neox.layers.1.mlp.dense_4h_to_h.weight", "linear", "mlp-down"),
    ("embed_out.weight", "embedding", "lm-head"),
    # BERT / MiniLM
    ("encoder.layer.0.attention.self.query.weight", "linear", "attn-q"),
    ("encoder.layer.0.attention.output.dense.weight", "linear", "attn-o"),
    ("encoder.layer.0.intermediate.dense.weight", "linear", "mlp-up"),
    ("encoder.layer.0.output.dense.weight", "linear", "mlp-down"),
    ("embeddings.word_embeddings.weight", "embedding", "embedding"),
    ("pooler.dense.weight", "linear", "other"),
    # Phi / Phi-3
    ("model.layers.0.self_attn.qkv_proj.weight", "linear", "attn-qkv"),
    ("model.layers.0.mlp.gate_up_proj.weight", "linear", "mlp-gate-up"),
    ("model.layers.0.mlp.gate_up_proj.weight:up", "linear", "mlp-up"),
    ("transformer.h.0.mixer.Wqkv.weight", "linear", "attn-qkv"),
    ("transformer.h.0.mixer.out_proj.weight", "linear", "attn-o"),
    ("model.layers.0.mlp.fc1.weight", "linear", "mlp-up"),
    ("model.layers.0.mlp.fc2.weight", "linear", "mlp-down"),
    # T5
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "linear", "attn-q"),
    ("encoder.block.0.layer.0.SelfAttention.o.weight", "linear", "attn-o"),
    ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", "linear", "mlp-gate"),
    ("encoder.block.0.layer.1.DenseReluDense.wo.weight", "linear", "mlp-down"),
    # MoE
    ("model.layers.0.block_sparse_moe.gate.weight", "linear", "router"),
    ("model.layers.0.block_sparse_moe.experts.3.w1.weight", "linear", "expert-gate"),
    ("model.layers.0.block_sparse_moe.experts.3.w2.weight", "linear", "expert-down"),
    ("model.layers.3.mlp.experts.gate_up_proj[5]", "linear", "expert-gate-up"),
    ("model.layers.3.mlp.experts.gate_up_proj[5]:gate", "linear", "expert-gate"),
    ("model.layers.3.mlp.experts.down_proj[0]", "linear", "expert-down"),
    ("model.layers.2.mlp.experts.weight[1]", "linear", "expert"),
    ("model.layers.0.mlp.gate.weight", "linear", "router"),
    # GPT-OSS, Granite-MoE / JetMoE, Llama-4 (3-D stacks cut per expert)
    ("model.layers.0.mlp.router.weight", "linear", "router"),
    ("model.layers.0.mlp.experts.gate_up_proj[2]:up", "linear", "expert-up"),
    ("model.layers.0.block_sparse_moe.router.layer.weight", "linear", "router"),
    ("model.layers.0.block_sparse_moe.input_linear.weight[1]:gate", "linear", "expert-gate"),
    ("model.layers.0.block_sparse_moe.input_linear.weight[1]", "linear", "expert-gate-up"),
    ("model.layers.0.block_sparse_moe.output_linear.weight[1]", "linear", "expert-down"),
    ("model.layers.0.self_attention.experts.input_linear.weight[1]", "linear", "expert"),
    ("language_model.model.layers.0.feed_forward.experts.down_proj[3]", "linear", "expert-down"),
    # nn.MultiheadAttention, conv, recurrent
    ("blocks.0.attn.in_proj_weight", "linear", "attn-qkv"),
    ("blocks.0.attn.out_proj.weight", "linear", "attn-o"),
    ("features.0.weight", "conv2d", "conv"),
    ("lstm.weight_hh_l0", "lstm", "recurrent"),
    ("dense5_1.weight", "linear", "other"),
]


@pytest.mark.parametrize(("name", "layer_type", "role"), CASES)
def test_role_of_names_each_architecture_alike(name, layer_type, role):
    assert role_of(name, layer_type) == role
    assert role in ROLES


def test_families_select_every_part():
    assert matches("attn-q", ("attn",))
    assert matches("expert-gate", ("expert",))
    assert not matches("mlp-gate", ("expert",))
    assert matches("lm-head", ("lm-head",))
    assert {family(r) for r in ROLES} <= set(FAMILIES)
