"""Fan-out figures: `compare` over 32 small generated checkpoints and the MiniLM-sized case,
serially, on ``--workers 2`` and on a local Ray cluster.  A benchmark, not a test.

    python bench/bench_fanout.py [--workers 2] [--models 32] [--no-ray] [--quick]

Prints, per case and way of running: wall time, speed-up over the serial run, the
pool's start-up (first trivial task) and the overhead per task,
``(workers * wall - serial) / tasks``: CPU-seconds the pool spends per unit beyond
the work itself (start-up, shipping results, idle workers at the end).  Every run
has the cache off (``--no-cache``): it measures analysis, not reuse.  ``--quick``:
4 tiny checkpoints and one MiniLM copy, to see that it runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from spectralyzer.demo import demo_model_path
from spectralyzer.fanout import FanOut
from spectralyzer.pipeline import make_options, run_analysis
from spectralyzer.series import compare
from spectralyzer.workers import LocalPool, threads_per_worker


def small_models(folder: Path, count: int, width: int) -> list[Path]:
    """``count`` checkpoints of six ``width x width`` and two ``4 width x width`` layers."""
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        tensors = {f"layer{i}.weight": torch.randn(width, width) for i in range(6)}
        tensors.update({f"mlp{i}.weight": torch.randn(4 * width, width) for i in range(2)})
        path = folder / f"step{seed:03d}.safetensors"
        save_file(tensors, path)
        paths.append(path)
    return paths


def minilm_copies(folder: Path, count: int) -> list[Path]:
    """Copies of the demo model under distinct names (a series of MiniLM-sized checkpoints)."""
    paths = [folder / f"minilm{i}.safetensors" for i in range(count)]
    for path in paths:
        shutil.copyfile(demo_model_path(), path)
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def startup(pool) -> float:
    """Seconds until a fresh pool has run one trivial task (its processes started)."""
    return timed(lambda: pool.run(abs, [-1], ["warm-up"]))


def case(name: str, models: list[Path], pools: dict, serial_threads: int) -> None:
    options = make_options(threads=serial_threads)
    run_analysis(models[0], options)  # warm-up: first-call costs are not the serial run's
    serial = timed(lambda: compare(models, options=options, runner=FanOut().runner))
    print(f"\n{name}: compare over {len(models)} checkpoints")
    print(f"  serial ({serial_threads} threads): {serial:.2f} s")
    for label, pool in pools.items():
        wall = timed(lambda pool=pool: compare(models, options=options, runner=FanOut(pool).runner))
        overhead = (pool.workers * wall - serial) / len(models)
        print(
            f"  {label}: {wall:.2f} s, speed-up {serial / wall:.2f}x, "
            f"overhead {overhead:.3f} s per task"
        )
    minilm = [m for m in models if "minilm" in m.name][:1]
    for label, pool in pools.items() if minilm else ():
        one = timed(lambda: run_analysis(minilm[0], options))
        wall = timed(
            lambda pool=pool: run_analysis(minilm[0], options, spectra=FanOut(pool).spectra)
        )
        print(f"  analyze one, {label} (matrix units): {wall:.2f} s vs {one:.2f} s serial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray cluster")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    count, width, copies = (4, 32, 1) if args.quick else (args.models, args.width, 4)
    threads = threads_per_worker(args.workers)
    pools: dict = {}
    local = LocalPool(args.workers, threads)
    print(f"--workers {args.workers}: start-up {startup(local):.2f} s ({threads} threads each)")
    pools[f"--workers {args.workers}"] = local
    if not args.no_ray:
        from spectralyzer.ray_runner import RayPool

        tic = time.perf_counter()
        ray_pool = RayPool("local", args.workers, threads)
        print(f"--ray (local): start-up {time.perf_counter() - tic + startup(ray_pool):.2f} s")
        pools["--ray local"] = ray_pool
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        case("small", small_models(folder, count, width), pools, threads * args.workers)
        case("MiniLM-sized", minilm_copies(folder, copies), pools, threads * args.workers)
    for pool in pools.values():
        pool.close()


if __name__ == "__main__":
    main()
