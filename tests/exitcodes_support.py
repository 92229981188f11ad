"""Tiny inputs and result checks shared by the exit-code, policy and fuzz tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from safetensors.numpy import save_file

from spectralyzer.cli import main

#: A module with factories for ``probe``: a good one and ones that fail as user code does.
FACTORY_SOURCE = """
import sys

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, fail=None):
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.fail = fail

    def forward(self, x):
        if self.fail == "assert":
            assert x.shape[1] == 99, "the model expects 99 features"
        if self.fail == "key":
            raise KeyError("no_such_head")
        if self.fail == "exit":
            sys.exit(0)
        return self.layer(x)


def good():
    return Net()


def asserting():
    return Net("assert")


def keying():
    return Net("key")


def exiting_forward():
    return Net("exit")


def exits_zero():
    raise SystemExit(0)
"""


def write_checkpoint(path: Path, layers: dict[str, np.ndarray]) -> Path:
    """A safetensors file of float32 matrices."""
    save_file({name: np.ascontiguousarray(w, dtype=np.float32) for name, w in layers.items()}, path)
    return path


def gaussian_layers(seed: int = 0, names: tuple[str, ...] = ("a.weight", "b.weight")) -> dict:
    """Random-like 24 x 48 matrices: their alpha lies far above the default band [2, 6]."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(24, 48)) for name in names}


def write_factory(folder: Path) -> str:
    """Write the factory module into ``folder`` under a name unique to it; return the name.

    A unique name keeps ``sys.modules`` from handing one test another's module.
    """
    name = "ec_models_" + "".join(ch if ch.isalnum() else "_" for ch in folder.name)
    (folder / f"{name}.py").write_text(FACTORY_SOURCE)
    sys.modules.pop(name, None)
    return name


def write_batch(path: Path, n: int = 16) -> Path:
    """``{'inputs': (n, 4), 'targets': (n,)}`` for the factory's Net (3 classes)."""
    g = torch.Generator().manual_seed(0)
    batch = {
        "inputs": torch.randn(n, 4, generator=g),
        "targets": torch.randint(0, 3, (n,), generator=g),
    }
    torch.save(batch, path)
    return path


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result: Result, code: int = 2) -> str:
    """The one stderr line of a failed command, checked: exit ``code``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    prefix = "spectralyzer: internal error:" if code == 3 else "spectralyzer: error:"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]
