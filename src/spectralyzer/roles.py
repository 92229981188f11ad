"""What a weight matrix does in its model, from its name: one vocabulary for every architecture.

Rows of Llama, GPT-2, BERT, Pythia, Phi, Mixtral and conv nets name the same
kind of matrix differently (``q_proj``, ``query``, ``c_attn:q``, ``wq``); the
role puts them side by side. Roles are ``family`` or ``family-part``:

==============  ===========================================================
role            typical names
==============  ===========================================================
embedding       embed_tokens, wte, wpe, word_embeddings, tok_embeddings
lm-head         lm_head, embed_out, output (Llama consolidated)
attn-q/k/v/o    q_proj, query, wq, k_proj, ..., o_proj, out_proj, attention.output.dense
attn-qkv        fused query_key_value, Wqkv, qkv_proj, c_attn, in_proj (when not split)
mlp-gate/up     gate_proj, w1, wi_0 / up_proj, w3, wi_1, fc1, c_fc, intermediate.dense
mlp-down        down_proj, w2, wo, fc2, mlp.c_proj, output.dense (BERT), output_linear
mlp-gate-up     fused gate_up_proj, MoE input_linear (when not split)
expert-<part>   any of the mlp parts inside ``experts`` (``expert`` when the part is unknown)
router          the MoE gate: block_sparse_moe.gate, mlp.gate, router, router.layer
conv            convolution kernels
recurrent       LSTM / GRU / RNN gate matrices
other           anything else
==============  ===========================================================

``--roles attn`` selects a whole family (:func:`matches`).
"""

from __future__ import annotations

import re

from .variants import target_of

#: In the order of a forward pass through a block (tables grouped by role follow it).
ROLES = (
    "embedding",
    "attn-q",
    "attn-k",
    "attn-v",
    "attn-o",
    "attn-qkv",
    "mlp-gate",
    "mlp-up",
    "mlp-down",
    "mlp-gate-up",
    "expert",
    "expert-gate",
    "expert-up",
    "expert-down",
    "expert-gate-up",
    "router",
    "conv",
    "recurrent",
    "lora",
    "lm-head",
    "other",
)
FAMILIES = (
    "embedding",
    "lm-head",
    "attn",
    "mlp",
    "expert",
    "router",
    "conv",
    "recurrent",
    "lora",
    "other",
)

# suffixes added when a fused tensor is split: "<tensor>:q"
_PART_ROLES = {"q": "attn-q", "k": "attn-k", "v": "attn-v", "gate": "mlp-gate", "up": "mlp-up"}
_EXPERT_INDEX = re.compile(r"\[\d+\]$")

# (pattern searched in the dotted name without the trailing ".weight", role); first match wins
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), role)
    for pattern, role in (
        (r"(^|\.)(lm_head|embed_out)$|^output$|(^|\.)cls\.predictions\.decoder$", "lm-head"),
        (r"embed|(^|\.)(wte|wpe)$|(^|\.)shared$", "embedding"),
        (r"(^|\.)(query_key_value|wqkv|qkv_proj|qkv|c_attn|in_proj|in_proj_weight)$", "attn-qkv"),
        (r"(^|\.)(q_proj|query|wq|q_lin|q)$", "attn-q"),
        (r"(^|\.)(k_proj|key|wk|k_lin|k)$", "attn-k"),
        (r"(^|\.)(v_proj|value|wv|v_lin|v)$", "attn-v"),
        (r"(DenseReluDense|mlp|ffn|feed_forward)\.wo$", "mlp-down"),
        (r"(^|\.)(o_proj|out_proj|wo|out_lin|o)$", "attn-o"),
        (r"(attention|attn)\.(output\.)?(dense|c_proj|proj)$", "attn-o"),
        (r"(^|\.)gate_up_proj$|(mlp|block_sparse_moe|moe)\.input_linear$", "mlp-gate-up"),
        (r"(^|\.)(gate_proj|w1|wi_0)$", "mlp-gate"),
        (r"(^|\.)(up_proj|w3|wi_1|wi|fc1|c_fc|lin1|dense_h_to_4h|fc_in)$", "mlp-up"),
        (r"intermediate\.dense$", "mlp-up"),
        (r"(^|\.)(down_proj|w2|fc2|lin2|dense_4h_to_h|fc_out)$", "mlp-down"),
        (r"(mlp|ffn|feed_forward)\.(c_proj|wo|proj)$|(^|\.)output\.dense$", "mlp-down"),
        (r"(mlp|block_sparse_moe|moe)\.output_linear$", "mlp-down"),
        (r"(^|\.)(router|gate|block_sparse_moe\.gate)$|(^|\.)router\.layer$", "router"),
    )
)
_WEIGHT_SUFFIX = re.compile(r"\.(weight|weight_ih\w*|weight_hh\w*|kernel)$")


def role_of(name: str, layer_type: str) -> str:
    """The role of the matrix named ``name`` (a parameter name, maybe with ``[e]`` or ``:part``)."""
    if layer_type.startswith("conv") and layer_type != "gpt2-conv1d":
        return "conv"
    if layer_type in ("lstm", "gru", "rnn"):
        return "recurrent"
    name = target_of(name)  # a LoRA update plays the role of the weight it updates
    base, _, part = name.partition(":")
    expert = bool(_EXPERT_INDEX.search(base)) or ".experts." in f".{base}."
    base = _WEIGHT_SUFFIX.sub("", _EXPERT_INDEX.sub("", base))
    role = _PART_ROLES.get(part) or next(
        (role for pattern, role in _RULES if pattern.search(base)), "other"
    )
    if layer_type == "embedding" and role not in ("lm-head",):
        role = "embedding"
    if expert:
        if role.startswith("mlp-"):
            return "expert-" + role[4:]
        return "expert"
    return role


def family(role: str) -> str:
    """``attn`` for ``attn-q``; a role without a part is its own family."""
    return role.split("-", 1)[0] if role not in ("lm-head",) else role


def matches(role: str, wanted: tuple[str, ...]) -> bool:
    """Whether ``role`` is one of ``wanted``, each a role or a family."""
    return role in wanted or family(role) in wanted
