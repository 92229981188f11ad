"""data/tiny_gpt: the trained byte-level LM is a real Hugging Face Llama checkpoint, and
`allocate` reads its blocks and roles (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from spectralyzer.allocate_pipeline import allocate

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "data" / "tiny_gpt"


@pytest.fixture(scope="module")
def tiny_gpt():
    sys.path.insert(0, str(ROOT / "data"))
    try:
        import train_tiny_gpt
    finally:
        sys.path.remove(str(ROOT / "data"))
    return train_tiny_gpt


def test_transformers_llama_computes_the_same_logits(tiny_gpt):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(FOLDER).eval()
    tokens = torch.frombuffer(
        bytearray(b"def main() -> None:\n    return 42\n" * 3), dtype=torch.uint8
    )
    tokens = tokens.long()[None, :]
    with torch.no_grad():
        ours, theirs = tiny_gpt.load(FOLDER / "model.safetensors")(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_allocation_over_the_tiny_gpt_sees_four_blocks_of_seven_roles():
    table = allocate(FOLDER, "sparsity", 0.7).table
    inside = table[table["block"].notna()]
    assert sorted(set(inside["block"])) == [0, 1, 2, 3]
    assert sorted(set(inside["role"])) == sorted(
        ["attn-q", "attn-k", "attn-v", "attn-o", "mlp-gate", "mlp-up", "mlp-down"]
    )
    assert list(table["role"])[0] == "embedding" and list(table["role"])[-1] == "lm-head"
    for _, rows in inside.groupby("block"):
        assert rows["value"].nunique() == 1  # block-wise: one ratio per block
