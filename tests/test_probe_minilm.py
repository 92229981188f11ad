"""Issue 17: MiniLM with a 4-class head, run as a user would (factory, weights, token ids).

``examples/minilm_head.py`` builds transformers' ``BertModel`` from the demo
checkpoint's config (default SDPA attention) and a linear head on [CLS]; the
probe loads it by ``package.module:factory`` with ``--weights`` and a batch of
token ids.  The batch is kept small here (4 x 16 tokens, 3 Lanczos steps);
``bench/bench_probe.py`` runs the 16 x 32 case.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spectralyzer.cli import main
from spectralyzer.hessian.attention import NOTE

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    try:
        from examples.minilm_head import write_batch, write_weights
    finally:
        sys.path.remove(str(ROOT))
    folder = tmp_path_factory.mktemp("minilm")
    write_weights(folder / "minilm_head.safetensors")
    write_batch(folder / "batch.pt", n=4, length=16)
    return folder


@pytest.mark.slow
def test_minilm_with_head_probes_from_the_command_line(files, monkeypatch):
    monkeypatch.chdir(ROOT)  # as a user in the repository: examples.minilm_head is importable
    args = [
        "probe", "examples.minilm_head:factory",
        "--weights", str(files / "minilm_head.safetensors"),
        "--data", str(files / "batch.pt"),
        "--precision", "float32", "--top-k", "1", "--steps", "3", "--hvp-batch", "2",
        "--format", "json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["parameters"] == 22_714_756 and out["samples"] == 4
    assert out["attention"] == NOTE  # BertModel's default SDPA attention, run on the math backend
    assert out["memory"]["micro_batches"] == 2 and out["memory"]["hvp_batch"] == 2
    lambda_1 = out["curvatures"]["hessian"]["lambda_1"]
    assert math.isfinite(lambda_1) and lambda_1 > 0
    assert 0 < out["loss"] < 10
