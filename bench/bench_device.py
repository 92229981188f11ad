"""CPU versus CUDA: same numbers, and how long each takes.  A benchmark: it prints figures.

    python bench/bench_device.py [--layers 12] [--size 4096] [--model PATH]

Writes a synthetic checkpoint (MiniLM shapes plus `--layers` square matrices of
`--size`, Student-t entries so the ESDs are heavy-tailed) unless `--model` is
given, analyses it on the CPU and on CUDA with `--randomize`, and prints the
largest relative difference of every metric and the time per stage.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from spectralyzer.pipeline import AnalysisOptions, run_analysis

MINILM_SHAPES = [(30522, 384), (512, 384)] + [(384, 384)] * 4 * 6 + [(1536, 384), (384, 1536)] * 6


def synthetic_model(path: Path, layers: int, size: int) -> Path:
    g = torch.Generator().manual_seed(0)
    shapes = MINILM_SHAPES + [(size, size)] * layers
    student = torch.distributions.StudentT(torch.tensor(3.0))
    torch.manual_seed(0)
    tensors = {f"layer{i}.weight": student.sample(s) * 0.02 for i, s in enumerate(shapes)}
    tensors["bias"] = torch.randn(16, generator=g)
    save_file(tensors, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or synthetic_model(
            Path(tmp) / "synthetic.safetensors", args.layers, args.size
        )
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        results = {}
        for device in devices:
            options = AnalysisOptions(randomize=True, device=device)
            run_analysis(model, options)  # warm-up (CUDA context, kernels)
            results[device] = run = run_analysis(model, options)
            stages = ", ".join(f"{k} {v:.3f}" for k, v in run.timings.items())
            print(f"{device}: {len(run.details)} layers; seconds: {stages}")
    if "cuda" in results:
        cpu, gpu = results["cpu"].details, results["cuda"].details
        for column in [
            "lambda_max",
            "alpha",
            "xmin",
            "log_norm",
            "stable_rank",
            "sigma_mp",
            "rand_distance",
        ]:
            a, b = cpu[column].to_numpy(float), gpu[column].to_numpy(float)
            rel = np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))
            print(f"  max relative difference cpu vs cuda, {column}: {rel:.2e}")
        same = (cpu["phase"] == gpu["phase"]).mean()
        print(
            f"  same phase on {same:.0%} of layers; num_traps equal on {(cpu['num_traps'] == gpu['num_traps']).mean():.0%}"
        )


if __name__ == "__main__":
    main()
