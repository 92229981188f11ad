"""Tiny Hugging Face folders shaped like today's LLM checkpoints, with the dense matrices they hold.

Each builder writes float32 safetensors shards (two, with a
``model.safetensors.index.json``) and a ``config.json`` into a folder, and
returns a :class:`Written`: for every matrix the tool should report, its row
name and the dense ``(out, in)`` matrix cut by hand here, independently of
:mod:`spectralyzer.layouts` (slicing written out per architecture from the
transformers source). Usable by every issue-13 test module.

Sizes: hidden 32, 4 heads of 8 (GQA: 2 kv heads), intermediate 48, 4 experts.
Routers have 4 rows (fewer than min_evals 8), so they are skipped as too small.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, EXPERTS, VOCAB = 32, 4, 2, 8, 48, 4, 64


@dataclass
class Written:
    """A folder written by a builder and what analysing it must give."""

    path: Path
    expected: dict[str, torch.Tensor] = field(default_factory=dict)  # row -> (out, in) float64
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # as stored


def write_hf_folder(
    path: Path, tensors: dict[str, torch.Tensor], config: dict | None, shards: int = 2
) -> Path:
    """``tensors`` as ``shards`` safetensors files with an index, and ``config.json``."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        if not part:
            continue
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(path / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


class _Random:
    """Seeded float32 Gaussian tensors."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=torch.float32)


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.double().clone()


def _finish(path: Path, tensors: dict, expected: dict, config: dict | None) -> Written:
    write_hf_folder(path, tensors, config)
    return Written(path, expected, tensors)


def llama(path: Path, gqa: bool = False, layers: int = 2, config: bool = True) -> Written:
    """Llama / Mistral: separate q, k, v, o, gate, up, down; embed_tokens and lm_head."""
    rnd, t, e = _Random(1), {}, {}
    kv = (KV_HEADS if gqa else HEADS) * HEAD_DIM
    shapes = {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (kv, HIDDEN),
        "self_attn.v_proj": (kv, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (INTER, HIDDEN),
        "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER),
    }
    for layer in range(layers):
        for key, shape in shapes.items():
            name = f"model.layers.{layer}.{key}.weight"
            t[name] = rnd(*shape)
            e[name] = _dense(t[name])
        t[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(HIDDEN)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t[name] = rnd(VOCAB, HIDDEN)
        e[name] = _dense(t[name])
    cfg = {
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS if gqa else HEADS,
    }
    return _finish(path, t, e, cfg if config else None)


def gpt2(path: Path, config: bool = True) -> Written:
    """GPT-2: Conv1D weights stored (in, out); c_attn holds q|k|v on its columns."""
    rnd, t, e = _Random(2), {}, {}
    for layer in range(2):
        pre = f"h.{layer}"
        c_attn = rnd(HIDDEN, 3 * HIDDEN)
        t[f"{pre}.attn.c_attn.weight"] = c_attn
        for i, part in enumerate("qkv"):
            block = c_attn[:, i * HIDDEN : (i + 1) * HIDDEN]
            e[f"{pre}.attn.c_attn.weight:{part}"] = _dense(block.T)
        for key, shape in {
            "attn.c_proj": (HIDDEN, HIDDEN),
            "mlp.c_fc": (HIDDEN, 4 * HIDDEN),
            "mlp.c_proj": (4 * HIDDEN, HIDDEN),
        }.items():
            t[f"{pre}.{key}.weight"] = rnd(*shape)
            e[f"{pre}.{key}.weight"] = _dense(t[f"{pre}.{key}.weight"])  # shown as stored
    t["wte.weight"], t["wpe.weight"] = rnd(VOCAB, HIDDEN), rnd(VOCAB, HIDDEN)
    e["wte.weight"], e["wpe.weight"] = _dense(t["wte.weight"]), _dense(t["wpe.weight"])
    cfg = {"model_type": "gpt2", "n_embd": HIDDEN, "n_head": HEADS}
    return _finish(path, t, e, cfg if config else None)


def pythia(path: Path, config: bool = True) -> Written:
    """GPT-NeoX / Pythia: query_key_value rows ordered [heads, 3, head_dim]; embed_out."""
    rnd, t, e = _Random(3), {}, {}
    for layer in range(2):
        pre = f"gpt_neox.layers.{layer}"
        qkv = rnd(3 * HIDDEN, HIDDEN)
        t[f"{pre}.attention.query_key_value.weight"] = qkv
        per_head = qkv.reshape(HEADS, 3, HEAD_DIM, HIDDEN)
        for i, part in enumerate("qkv"):
            matrix = per_head[:, i].reshape(HEADS * HEAD_DIM, HIDDEN)
            e[f"{pre}.attention.query_key_value.weight:{part}"] = _dense(matrix)
        for key, shape in {
            "attention.dense": (HIDDEN, HIDDEN),
            "mlp.dense_h_to_4h": (4 * HIDDEN, HIDDEN),
            "mlp.dense_4h_to_h": (HIDDEN, 4 * HIDDEN),
        }.items():
            t[f"{pre}.{key}.weight"] = rnd(*shape)
            e[f"{pre}.{key}.weight"] = _dense(t[f"{pre}.{key}.weight"])
    for name in ("gpt_neox.embed_in.weight", "embed_out.weight"):
        t[name] = rnd(VOCAB, HIDDEN)
        e[name] = _dense(t[name])
    cfg = {"model_type": "gpt_neox", "hidden_size": HIDDEN, "num_attention_heads": HEADS}
    return _finish(path, t, e, cfg if config else None)


def phi(path: Path) -> Written:
    """Phi-1/2 (MixFormer): Wqkv holds q|k|v contiguous on the out dim."""
    rnd, t, e = _Random(4), {}, {}
    for layer in range(2):
        pre = f"transformer.h.{layer}"
        wqkv = rnd(3 * HIDDEN, HIDDEN)
        t[f"{pre}.mixer.Wqkv.weight"] = wqkv
        for i, part in enumerate("qkv"):
            block = wqkv[i * HIDDEN : (i + 1) * HIDDEN]
            e[f"{pre}.mixer.Wqkv.weight:{part}"] = _dense(block)
        for key, shape in {
            "mixer.out_proj": (HIDDEN, HIDDEN),
            "mlp.fc1": (INTER, HIDDEN),
            "mlp.fc2": (HIDDEN, INTER),
        }.items():
            t[f"{pre}.{key}.weight"] = rnd(*shape)
            e[f"{pre}.{key}.weight"] = _dense(t[f"{pre}.{key}.weight"])
    cfg = {"model_type": "phi-msft", "n_embd": HIDDEN, "n_head": HEADS}
    return _finish(path, t, e, cfg)


def phi3(path: Path, config: bool = True) -> Written:
    """Phi-3: GQA qkv_proj [q + 2 kv, h] contiguous; gate_up_proj [2i, h], gate first."""
    rnd, t, e = _Random(5), {}, {}
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for layer in range(2):
        pre = f"model.layers.{layer}"
        qkv = rnd(q + 2 * kv, HIDDEN)
        t[f"{pre}.self_attn.qkv_proj.weight"] = qkv
        for part, rows in (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, None))):
            e[f"{pre}.self_attn.qkv_proj.weight:{part}"] = _dense(qkv[rows])
        gate_up = rnd(2 * INTER, HIDDEN)
        t[f"{pre}.mlp.gate_up_proj.weight"] = gate_up
        e[f"{pre}.mlp.gate_up_proj.weight:gate"] = _dense(gate_up[:INTER])
        e[f"{pre}.mlp.gate_up_proj.weight:up"] = _dense(gate_up[INTER:])
        for key, shape in {
            "self_attn.o_proj": (HIDDEN, q),
            "mlp.down_proj": (HIDDEN, INTER),
        }.items():
            t[f"{pre}.{key}.weight"] = rnd(*shape)
            e[f"{pre}.{key}.weight"] = _dense(t[f"{pre}.{key}.weight"])
    cfg = {
        "model_type": "phi3",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
    }
    return _finish(path, t, e, cfg if config else None)


def mixtral_per_expert(path: Path) -> Written:
    """Mixtral as shipped (transformers 4): one w1/w2/w3 matrix per expert; a 4-row router."""
    rnd, t, e = _Random(6), {}, {}
    for layer in range(2):
        pre = f"model.layers.{layer}.block_sparse_moe"
        t[f"{pre}.gate.weight"] = rnd(EXPERTS, HIDDEN)  # 4 eigenvalues: skipped (min_evals)
        for x in range(EXPERTS):
            for w, shape in {
                "w1": (INTER, HIDDEN),
                "w2": (HIDDEN, INTER),
                "w3": (INTER, HIDDEN),
            }.items():
                name = f"{pre}.experts.{x}.{w}.weight"
                t[name] = rnd(*shape)
                e[name] = _dense(t[name])
    cfg = {"model_type": "mixtral", "hidden_size": HIDDEN, "num_attention_heads": HEADS}
    return _finish(path, t, e, cfg)


def mixtral_fused(path: Path, config: bool = True, experts: int = EXPERTS) -> Written:
    """transformers 5 Mixtral/Qwen-MoE: gate_up_proj [E, 2i, h] (gate first), down_proj [E, h, i]."""
    rnd, t, e = _Random(7), {}, {}
    for layer in range(2):
        pre = f"model.layers.{layer}.mlp"
        t[f"{pre}.gate.weight"] = rnd(experts, HIDDEN)
        gate_up, down = rnd(experts, 2 * INTER, HIDDEN), rnd(experts, HIDDEN, INTER)
        t[f"{pre}.experts.gate_up_proj"], t[f"{pre}.experts.down_proj"] = gate_up, down
        for x in range(experts):
            e[f"{pre}.experts.gate_up_proj[{x}]:gate"] = _dense(gate_up[x, :INTER])
            e[f"{pre}.experts.gate_up_proj[{x}]:up"] = _dense(gate_up[x, INTER:])
            e[f"{pre}.experts.down_proj[{x}]"] = _dense(down[x])
    cfg = {"model_type": "mixtral", "hidden_size": HIDDEN, "num_attention_heads": HEADS}
    return _finish(path, t, e, cfg if config else None)


def gpt_oss(path: Path, config: bool = True) -> Written:
    """GPT-OSS: gate_up_proj [E, h, 2i] with gate/up interleaved on the last dim
    (``gate_up[..., ::2]``, ``gate_up[..., 1::2]``), down_proj [E, i, h] (x @ W), 2-D biases."""
    rnd, t, e = _Random(8), {}, {}
    for layer in range(2):
        pre = f"model.layers.{layer}.mlp"
        t[f"{pre}.router.weight"] = rnd(EXPERTS, HIDDEN)
        gate_up, down = rnd(EXPERTS, HIDDEN, 2 * INTER), rnd(EXPERTS, INTER, HIDDEN)
        t[f"{pre}.experts.gate_up_proj"], t[f"{pre}.experts.down_proj"] = gate_up, down
        t[f"{pre}.experts.gate_up_proj_bias"] = rnd(EXPERTS, 2 * INTER)
        t[f"{pre}.experts.down_proj_bias"] = rnd(EXPERTS, HIDDEN)
        for x in range(EXPERTS):
            e[f"{pre}.experts.gate_up_proj[{x}]:gate"] = _dense(gate_up[x][:, ::2].T)
            e[f"{pre}.experts.gate_up_proj[{x}]:up"] = _dense(gate_up[x][:, 1::2].T)
            e[f"{pre}.experts.down_proj[{x}]"] = _dense(down[x].T)
    cfg = {"model_type": "gpt_oss", "hidden_size": HIDDEN, "num_attention_heads": HEADS}
    return _finish(path, t, e, cfg if config else None)


def llama4(path: Path) -> Written:
    """Llama-4: gate_up_proj [E, h, 2i] (halves, gate first), down_proj [E, i, h]."""
    rnd, t, e = _Random(9), {}, {}
    for layer in range(2):
        pre = f"language_model.model.layers.{layer}.feed_forward"
        gate_up, down = rnd(EXPERTS, HIDDEN, 2 * INTER), rnd(EXPERTS, INTER, HIDDEN)
        t[f"{pre}.experts.gate_up_proj"], t[f"{pre}.experts.down_proj"] = gate_up, down
        for x in range(EXPERTS):
            e[f"{pre}.experts.gate_up_proj[{x}]:gate"] = _dense(gate_up[x][:, :INTER].T)
            e[f"{pre}.experts.gate_up_proj[{x}]:up"] = _dense(gate_up[x][:, INTER:].T)
            e[f"{pre}.experts.down_proj[{x}]"] = _dense(down[x].T)
    cfg = {
        "model_type": "llama4",
        "text_config": {
            "model_type": "llama4_text",
            "hidden_size": HIDDEN,
            "num_attention_heads": HEADS,
        },
    }
    return _finish(path, t, e, cfg)


def granite(path: Path) -> Written:
    """Granite-MoE / JetMoE as shipped: input_linear [E, 2i, h] (gate first), output_linear
    [E, h, i]; a JetMoE-style ``experts.weight`` [E, out, in] stack."""
    rnd, t, e = _Random(10), {}, {}
    for layer in range(2):
        pre = f"model.layers.{layer}.block_sparse_moe"
        t[f"{pre}.router.layer.weight"] = rnd(EXPERTS, HIDDEN)
        inp, out = rnd(EXPERTS, 2 * INTER, HIDDEN), rnd(EXPERTS, HIDDEN, INTER)
        t[f"{pre}.input_linear.weight"], t[f"{pre}.output_linear.weight"] = inp, out
        stack = rnd(EXPERTS, INTER, HIDDEN)
        t[f"model.layers.{layer}.moe.experts.weight"] = stack
        for x in range(EXPERTS):
            e[f"{pre}.input_linear.weight[{x}]:gate"] = _dense(inp[x, :INTER])
            e[f"{pre}.input_linear.weight[{x}]:up"] = _dense(inp[x, INTER:])
            e[f"{pre}.output_linear.weight[{x}]"] = _dense(out[x])
            e[f"model.layers.{layer}.moe.experts.weight[{x}]"] = _dense(stack[x])
    cfg = {"model_type": "granitemoe", "hidden_size": HIDDEN, "num_attention_heads": HEADS}
    return _finish(path, t, e, cfg)


#: Every builder, by the layout's name.
LAYOUTS: dict[str, Callable[[Path], Written]] = {
    "llama": llama,
    "llama-gqa": lambda path: llama(path, gqa=True),
    "gpt2": gpt2,
    "pythia": pythia,
    "phi": phi,
    "phi3": phi3,
    "mixtral-per-expert": mixtral_per_expert,
    "mixtral-fused": mixtral_fused,
    "gpt-oss": gpt_oss,
    "llama4": llama4,
    "granite": granite,
}
