"""Train the tiny GPT-style language model of data/tiny_gpt/ deterministically (CPU, seeded).

Run from the repo root (about 5 minutes of two idle cores: 10 CPU-minutes):

    python data/train_tiny_gpt.py

A Llama-shaped decoder (RMSNorm, rotary positions, SwiGLU MLP, no biases, untied
head) with 4 blocks, width 128, 4 heads and context 128, over bytes (vocabulary
256), trained on the Python standard library's own source: the top-level
``*.py`` files of ``sysconfig.get_paths()["stdlib"]``, sorted by name; every
10th file (by that order) is held out for perplexity, the rest are training
text. Nothing is downloaded. The text depends on the Python version (recorded
in info.json), so the same torch and Python reproduce the same weights.

Parameter names follow Hugging Face's ``LlamaForCausalLM`` (``model.layers.0.
self_attn.q_proj.weight``, ..., ``lm_head.weight``) and ``config.json`` is a
Llama config, so the checkpoint doubles as a small, *trained* LLM-layout
checkpoint for tests. Writes ``tiny_gpt/model.safetensors``, ``config.json``
and ``info.json`` (held-out perplexity, split, steps, versions).
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import platform
import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

OUT = Path(__file__).parent / "tiny_gpt"
SEED = 0
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 256,  # bytes
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
}
CONTEXT = 128
STEPS = 360
BATCH = 16
LR = 3e-3
WARMUP = 30
HELD_OUT_EVERY = 10  # file i is held out when i % 10 == 9
EVAL_WINDOWS = 256  # held-out windows of CONTEXT + 1 bytes for the perplexity


def source_files() -> tuple[list[Path], list[Path]]:
    """The sorted top-level stdlib sources, split by file into training and held-out lists."""
    files = [
        Path(f) for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    ]
    held = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


def byte_stream(files: list[Path]) -> torch.Tensor:
    """The files' bytes, concatenated (int64 tokens 0..255)."""
    data = b"".join(f.read_bytes() for f in files)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def eval_windows(stream: torch.Tensor, count: int = EVAL_WINDOWS) -> torch.Tensor:
    """``count`` evenly spaced windows of CONTEXT + 1 tokens (input and shifted target)."""
    starts = torch.linspace(0, len(stream) - CONTEXT - 2, count).long()
    return torch.stack([stream[s : s + CONTEXT + 1] for s in starts.tolist()])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


@functools.lru_cache(maxsize=4)
def rotary_tables(t: int, d: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, ``(t, d)`` each (computed once per shape)."""
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding in Hugging Face Llama's convention (halves, not pairs)."""
    _, _, t, d = x.shape
    cos, sin = rotary_tables(t, d, theta)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, theta: float) -> None:
        super().__init__()
        self.heads, self.theta = heads, theta
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(dim, dim, bias=False) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = rotary(q, self.theta), rotary(k, self.theta)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        d = c["hidden_size"]
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.self_attn = Attention(d, c["num_attention_heads"], c["rope_theta"])
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.mlp = MLP(d, c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c: dict) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class TinyGPT(nn.Module):
    """``LlamaForCausalLM``'s layout: ``model.*`` and ``lm_head``."""

    def __init__(self, c: dict = CONFIG) -> None:
        super().__init__()
        self.model = Decoder(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(tokens))


def loss_on(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) over windows of CONTEXT + 1 tokens."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch: int = 64) -> float:
    """exp(mean cross-entropy) over the windows, in eval mode."""
    model.eval()
    total = sum(
        loss_on(model, windows[i : i + batch]).item() * len(windows[i : i + batch])
        for i in range(0, len(windows), batch)
    )
    return math.exp(total / len(windows))


def load(path: Path = OUT / "model.safetensors") -> TinyGPT:
    """The trained model from its safetensors file."""
    from safetensors.torch import load_file

    model = TinyGPT()
    model.load_state_dict(load_file(path))
    return model.eval()


def main() -> None:
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    train_files, held_files = source_files()
    train, held = byte_stream(train_files), byte_stream(held_files)
    held_windows = eval_windows(held)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS))
        ),
    )
    model.train()
    for step in range(1, STEPS + 1):
        starts = torch.randint(0, len(train) - CONTEXT - 1, (BATCH,), generator=generator)
        windows = torch.stack([train[s : s + CONTEXT + 1] for s in starts.tolist()])
        optimizer.zero_grad()
        loss = loss_on(model, windows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 40 == 0:
            print(f"step {step:4d}: training loss {loss.item():.3f}", flush=True)
    held_ppl = perplexity(model, held_windows)
    print(f"held-out perplexity (bytes): {held_ppl:.3f}")
    OUT.mkdir(exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / "model.safetensors", metadata={"format": "pt"})
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    info = {
        "model": "data/train_tiny_gpt.py:TinyGPT (Llama layout)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "top-level *.py of the Python standard library, sorted; every 10th file held out",
        "train_files": len(train_files),
        "held_out_files": len(held_files),
        "train_bytes": len(train),
        "held_out_bytes": len(held),
        "held_out_perplexity": held_ppl,
        "held_out_windows": f"{EVAL_WINDOWS} evenly spaced windows of {CONTEXT} + 1 bytes",
        "steps": STEPS,
        "batch": BATCH,
        "context": CONTEXT,
        "optimizer": f"AdamW(lr={LR}, betas=(0.9, 0.95), weight_decay=0.1), "
        f"warm-up {WARMUP} steps, cosine",
        "seed": SEED,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
    }
    (OUT / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
