"""Does the CUDA path give the CPU's numbers?  A check for a GPU machine; prints figures.

    python bench/cuda_check.py [--out DIR]

Runs each case on the CPU and on CUDA and prints the largest |difference| of alpha
(and of the probe's lambda_1):

- a synthetic heavy-tailed model (Student-t entries, MiniLM-like shapes, a planted
  trap), plain, ``--randomize``, ``--precision float32`` and ``--farms``;
- wider matrices (``M >= 768``, one tall) with planted traps and ``--randomize``: the
  block Krylov trap check on the device (traps and ``rand_distance`` compared too);
- the fused Mixtral and GPT-OSS layouts of ``tests/llm_layouts.py`` (expert stacks
  and q/k/v / gate/up cuts on the device);
- the probe demo (digits CNN, every probe) through the CLI with ``--hvp-batch 64``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spectralyzer.pipeline import make_options, run_analysis

ROOT = Path(__file__).resolve().parents[1]


def synthetic() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    student = torch.distributions.StudentT(torch.tensor(3.0))
    shapes = [(4000, 384), (512, 384)] + [(384, 384), (1536, 384), (384, 1536)] * 4
    out = {f"layers.{i}.weight": student.sample(s) / s[1] ** 0.5 for i, s in enumerate(shapes)}
    out["layers.0.weight"][5, 7] = 60.0  # a correlation trap
    return out


def wide() -> dict[str, torch.Tensor]:
    """Single matrices on the Krylov path of the trap check (theory 3.8), traps planted."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(1024, 1024), (2816, 1024), (1024, 2816), (16000, 1024), (2048, 768)]
    out = {}
    for i, (n, m) in enumerate(shapes):
        w = torch.randn(n, m, generator=gen) / m**0.5
        for j in range(i % 3):
            w[11 * j + 2, 13 * j + 3] = 8.0 + j  # outsized entries survive shuffling
        out[f"wide.{i}.weight"] = w.to(torch.bfloat16)
    return out


def largest(a, b, column: str = "alpha") -> float:
    x, y = np.asarray(a[column], float), np.asarray(b[column], float)
    assert list(a["name"]) == list(b["name"]), "the runs analysed different matrices"
    both = np.isfinite(x) & np.isfinite(y)
    assert (np.isfinite(x) == np.isfinite(y)).all(), "a fit failed on one device only"
    return float(np.abs(x[both] - y[both]).max(initial=0.0))


def compare(label: str, source, **options) -> None:
    times, results = {}, {}
    for device in ("cpu", "cuda"):
        tic = time.perf_counter()
        results[device] = run_analysis(source, make_options(device=device, **options))
        times[device] = time.perf_counter() - tic
    cpu, gpu = results["cpu"].details, results["cuda"].details
    line = f"{label:<28} max |alpha_gpu - alpha_cpu| {largest(cpu, gpu):.2e}"
    if "num_traps" in cpu and cpu["num_traps"].notna().any():
        same = (cpu["num_traps"].fillna(-1) == gpu["num_traps"].fillna(-1)).all()
        line += f", traps {'equal' if same else 'DIFFER'} ({int(gpu['num_traps'].sum())})"
        line += f", max |rand_distance diff| {largest(cpu, gpu, 'rand_distance'):.2e}"
    print(f"{line}, cpu {times['cpu']:.2f} s, cuda {times['cuda']:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    model = synthetic()
    compare("synthetic, plain", model)
    compare("synthetic, --randomize", model, randomize=True)
    compare("synthetic, float32", model, precision="float32")
    compare("synthetic, --farms (size 128)", model, farms=True, farms_size=128, farms_windows=3)
    compare("wide, --randomize (Krylov)", wide(), randomize=True)
    sys.path.insert(0, str(ROOT / "tests"))
    import llm_layouts

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mixtral_fused", "gpt_oss", "pythia"):
            written = getattr(llm_layouts, name)(Path(tmp) / name)
            compare(f"layout {name}", written.path)
    for device in ("cpu", "cuda"):  # the probe demo through the CLI, as a user runs it
        tic = time.perf_counter()
        out = (args.out or Path(tempfile.gettempdir())) / f"probe_{device}.json"
        command = [sys.executable, "-m", "spectralyzer.cli", "probe", "--demo", "-q"]
        command += ["--device", device, "--hvp-batch", "64", "--format", "json", "-o", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        lam = _first(json.loads(out.read_text()), "lambda_1") if done.returncode == 0 else None
        print(
            f"probe demo on {device}: exit {done.returncode}, lambda_1 {lam}, "
            f"{time.perf_counter() - tic:.1f} s {done.stderr.strip()[-300:]}",
            flush=True,
        )


def _first(document, key: str):
    """The first value under ``key`` anywhere in a JSON document."""
    if isinstance(document, dict):
        if key in document:
            return document[key]
        document = list(document.values())
    if isinstance(document, list):
        for item in document:
            found = _first(item, key)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    main()
