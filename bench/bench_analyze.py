"""Time `analyze` on the MiniLM demo, per stage.  A benchmark, not a test: it prints figures.

    python bench/bench_analyze.py [--repeats 5] [--device cpu|cuda|auto] [--model PATH]

Reports (1) the whole `spectralyzer analyze --demo --randomize` process, cold start
included, (2) the import cost of the package and torch (cold start), and
(3) in-process runs: first call and the best of N, split into stages (open/plan,
load, eigenvalues, randomize, fits incl. the MP fit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def whole_process(model_args: list[str], device: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "spectralyzer.cli",
        "analyze",
        *model_args,
        "--randomize",
        "--device",
        device,
        "--format",
        "json",
        "-o",
        os.devnull,
        "-q",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def import_cost() -> float:
    code = "import time; t = time.perf_counter(); import spectralyzer.pipeline; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", help="checkpoint to time (default: the MiniLM demo)")
    args = parser.parse_args()

    import torch

    from spectralyzer.demo import demo_model_path
    from spectralyzer.pipeline import AnalysisOptions, run_analysis

    model = args.model or str(demo_model_path())
    model_args = [model] if args.model else ["--demo"]
    print(f"model: {model}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, device {args.device}"
    )
    print(f"whole process (cold start included): {whole_process(model_args, args.device):.3f} s")
    print(f"cold start (import spectralyzer + torch): {import_cost():.3f} s")

    for randomize in (False, True):
        options = AnalysisOptions(randomize=randomize, device=args.device)
        first = run_analysis(model, options)
        runs = [run_analysis(model, options) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r.timings["total"])
        totals = [r.timings["total"] for r in runs]
        stages = ", ".join(f"{k} {v:.3f}" for k, v in best.timings.items() if k != "total")
        label = "with --randomize" if randomize else "without randomize"
        print(f"\nin-process, {label}, {len(best.details)} layers (MP fit always on)")
        print(f"  first call: {first.timings['total']:.3f} s")
        print(
            f"  best of {args.repeats}: {min(totals):.3f} s, median {statistics.median(totals):.3f} s"
        )
        print(f"  stages of the best run (s): {stages}")


if __name__ == "__main__":
    main()
