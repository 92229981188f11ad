"""Issue 17: probing models with fused attention, and operations without a double backward.

PyTorch's fused ``scaled_dot_product_attention`` kernels have no second
derivative; the probe builds its graphs on the math backend and says so.  An
operation that has no double backward at all is reported in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.func import functional_call

import spectralyzer
from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.hessian.attention import NOTE


class Attention(nn.Module):
    """One self-attention layer and a linear head on the mean over the sequence."""

    def __init__(self, embed: int = 8, heads: int = 2, classes: int = 3, fused: bool = True):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(embed, 3 * embed)
        self.out = nn.Linear(embed, embed)
        self.head = nn.Linear(embed, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-1, -2) / (e // self.heads) ** 0.5
            a = torch.softmax(scores, dim=-1) @ v
        return self.head(self.out(a.transpose(1, 2).reshape(b, t, e)).mean(dim=1))


def pair(embed: int = 8) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    fused = Attention(embed).double()
    explicit = Attention(embed, fused=False).double()
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


def batch(embed: int, n: int = 5, seq: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, seq, embed, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def test_fused_attention_has_no_double_backward_in_plain_pytorch():
    """The failure the probe works around (if PyTorch gains the derivative, this tells us)."""
    fused, _ = pair()
    x, y = batch(8)
    loss = F.cross_entropy(fused(x), y)
    grads = torch.autograd.grad(loss, list(fused.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
        torch.autograd.grad(sum((g * g).sum() for g in grads), list(fused.parameters()))


def test_sdpa_model_probes_like_explicit_softmax_attention():
    fused, explicit = pair()
    x, y = batch(8)
    a = spectralyzer.probe(fused, x, y, top_k=2, steps=30, ggn=True)
    b = spectralyzer.probe(explicit, x, y, top_k=2, steps=30, ggn=True)
    for ca, cb in zip(a.curvatures, b.curvatures, strict=True):
        assert ca.lambda_1 == pytest.approx(cb.lambda_1, rel=1e-8, abs=1e-12)
    assert a.attention == NOTE and a.document()["attention"] == NOTE
    assert NOTE in a.summary_lines()
    assert b.attention is None and NOTE not in b.summary_lines()


@pytest.mark.filterwarnings("ignore")  # torch.jit.trace's deprecation and tracer warnings
def test_traced_sdpa_model_probes_like_explicit_attention_and_says_so():
    fused, explicit = pair()
    x, y = batch(8)
    traced = torch.jit.trace(fused, (x,))
    a = spectralyzer.probe(traced, x, y, top_k=1, steps=30)
    b = spectralyzer.probe(explicit, x, y, top_k=1, steps=30)
    assert a.curvatures[0].lambda_1 == pytest.approx(b.curvatures[0].lambda_1, rel=1e-8)
    assert a.attention == NOTE


def test_sdpa_model_lambda_1_matches_the_exact_hessian():
    fused, explicit = pair(embed=4)
    x, y = batch(4, n=4, seq=3)
    names = [n for n, _ in explicit.named_parameters()]
    shapes = [p.shape for p in explicit.parameters()]
    sizes = [p.numel() for p in explicit.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in explicit.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = [t.view(s) for t, s in zip(w.split(sizes), shapes, strict=True)]
        out = functional_call(explicit, dict(zip(names, parts, strict=True)), (x,))
        return F.cross_entropy(out, y)

    exact = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())[-1]
    result = spectralyzer.probe(fused, x, y, top_k=1, steps=flat.numel())
    assert result.curvatures[0].lambda_1 == pytest.approx(exact, rel=1e-6)
    assert result.attention == NOTE


class Distances(nn.Module):
    """``torch.cdist``: its backward has no derivative (PyTorch raises in the first product)."""

    def __init__(self):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(3, 8, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.mean(dim=1), self.centres)


def test_aten_op_without_double_backward_is_an_input_error_naming_it():
    x, y = batch(8)
    with pytest.raises(InputError, match="_cdist_backward has no double backward") as info:
        spectralyzer.probe(Distances(), x, y, top_k=1, steps=5)
    assert "use an implementation of _cdist_backward with a double backward" in str(info.value)


FACTORY = """\
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        b, t, e = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.head(a.transpose(1, 2).reshape(b, t, e).mean(dim=1))


class CubeOnce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class Cubic(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(CubeOnce.apply(self.first(x.mean(dim=1))))


def attention():
    torch.manual_seed(0)
    return Attention()


def cubic():
    torch.manual_seed(0)
    return Cubic()
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "attn_factory_mod").mkdir()
    (tmp_path / "attn_factory_mod" / "__init__.py").write_text("")
    (tmp_path / "attn_factory_mod" / "models.py").write_text(FACTORY)
    x, y = batch(8)
    torch.save({"inputs": x.float(), "targets": y}, tmp_path / "batch.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def probe_cli(*args: str):
    return CliRunner().invoke(main, ["probe", *args, "--data", "batch.pt", "--steps", "10"])


def test_cli_probes_an_sdpa_factory_model(factory):
    result = probe_cli("attn_factory_mod.models:attention", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert NOTE in result.stdout


def test_operation_without_double_backward_is_one_line_exit_2(factory):
    result = probe_cli("attn_factory_mod.models:cubic")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("spectralyzer: error: attn_factory_mod.models:cubic: "), line
    assert "CubeOnce" in line and "double backward" in line, line
