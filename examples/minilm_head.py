"""all-MiniLM-L6-v2 with a 4-class linear head on its [CLS] output, for ``spectralyzer probe``.

A model as a user brings it: ``transformers``' ``BertModel`` built from the
demo checkpoint's ``config.json`` (default attention: PyTorch's fused
``scaled_dot_product_attention``) and a linear head, loaded by a factory::

    python examples/minilm_head.py minilm_head.safetensors batch.pt   # weights and a batch
    spectralyzer probe examples.minilm_head:factory --weights minilm_head.safetensors \\
        --data batch.pt --precision float32 --top-k 3 --steps 20

The weights are the demo's encoder and a seeded head (as after a fine-tune
that has not moved the encoder yet); the batch is 16 sequences of 32 token
ids (``[CLS]`` first, ``[SEP]`` last) with random labels.  Needs the ``hf``
extra (``transformers``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

CLASSES = 4
CLS, SEP = 101, 102  # the BERT uncased vocabulary's [CLS] and [SEP]


def demo_folder() -> Path:
    """The folder of the demo checkpoint (model.safetensors, config.json)."""
    from spectralyzer.demo import demo_model_path

    return Path(demo_model_path()).parent


class MiniLMHead(nn.Module):
    """``BertModel`` (MiniLM-L6-H384) and a linear head on the first token's hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig.from_json_file(str(demo_folder() / "config.json"))
        self.encoder = BertModel(config)
        self.head = nn.Linear(config.hidden_size, CLASSES)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids).last_hidden_state
        return self.head(hidden[:, 0])


def factory() -> MiniLMHead:
    """What ``spectralyzer probe examples.minilm_head:factory`` calls."""
    return MiniLMHead()


def write_weights(path: str | Path, seed: int = 0) -> None:
    """The demo encoder's weights and a head drawn from ``seed``, as one safetensors file."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    model = factory()
    encoder = load_file(str(demo_folder() / "model.safetensors"))
    wanted = model.encoder.state_dict()
    model.encoder.load_state_dict({k: v for k, v in encoder.items() if k in wanted})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_batch(path: str | Path, n: int = 16, length: int = 32, seed: int = 0) -> None:
    """``n`` sequences of ``length`` token ids and ``n`` labels in ``0..CLASSES-1`` (a .pt file)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, length), generator=gen)
    ids[:, 0], ids[:, -1] = CLS, SEP
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    torch.save({"inputs": ids, "targets": labels}, path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/minilm_head.py WEIGHTS.safetensors BATCH.pt")
    write_weights(sys.argv[1])
    write_batch(sys.argv[2])
