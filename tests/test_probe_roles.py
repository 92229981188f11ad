"""Issue 17: ``--per-layer`` on a transformer groups the Hessian blocks by role, as analyze names them."""

from __future__ import annotations

import pytest
import torch

import spectralyzer
from spectralyzer.roles import role_of

transformers = pytest.importorskip("transformers")


class Classifier(torch.nn.Module):
    """A two-layer BERT with a linear head on [CLS]."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=40,
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=12,
            max_position_embeddings=16,
        )
        self.encoder = transformers.BertModel(config, add_pooling_layer=False)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=ids).last_hidden_state[:, 0])


def test_per_layer_rows_are_grouped_by_role():
    torch.manual_seed(0)
    model = Classifier()
    gen = torch.Generator().manual_seed(1)
    ids, labels = (
        torch.randint(0, 40, (6, 5), generator=gen),
        torch.randint(0, 3, (6,), generator=gen),
    )
    result = spectralyzer.probe(model, ids, labels, top_k=1, steps=4, per_layer=True,
                                layer_steps=4, layer_trace_matvecs=3)  # fmt: skip
    table = result.layers
    pairs = zip(table["name"], table["layer_type"], strict=True)
    assert list(table["role"]) == [role_of(n, t) for n, t in pairs]
    roles = list(table["role"])
    # each role's rows are contiguous (grouped), in depth order inside the group
    groups = [r for i, r in enumerate(roles) if i == 0 or roles[i - 1] != r]
    assert len(groups) == len(set(groups))
    for role in ("attn-q", "attn-k", "attn-v", "attn-o", "mlp-up", "mlp-down"):
        names = list(table.loc[table["role"] == role, "name"])
        assert [n.split(".")[3] for n in names] == ["0", "1"], (role, names)
    assert groups.index("attn-q") < groups.index("attn-o") < groups.index("mlp-up")
    assert table["hessian_lambda_1"].notna().all() and table["alpha"].notna().any()
