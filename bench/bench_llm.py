"""Time `analyze` on LLM-sized synthetic Hugging Face folders.  A benchmark, not a test.

    python bench/bench_llm.py [--sizes 167m,7b-layer,7b] [--repeats 1] [--device cpu|cuda|auto]
                              [--precisions float64,float32] [--modes plain,randomize]
                              [--no-floor] [--compare-cpu] [--cache DIR] [--threads N]

Builds once (cached outside the repo, default ``~/.cache/spectralyzer-bench/``) sharded
bf16 folders -- safetensors shards plus ``model.safetensors.index.json`` -- with random
Gaussian weights under real Llama names and shapes:

- ``167m``: hidden 1024, intermediate 2816, 8 layers, vocab 32000;
- ``7b-layer``: ONE decoder layer at 7B shapes (hidden 4096, intermediate 11008) plus the
  32000x4096 embedding and lm_head.

Then runs the CLI as a user would, in a subprocess (``python -m spectralyzer.cli analyze
FOLDER --format json -q -o out.json``, with and without ``--randomize``), reads the JSON
summary's per-stage ``timings`` and the child's peak RSS, and times the float64 floor
in-process (per matrix: float64 Gram + ``torch.linalg.eigvalsh``, nothing else).  For
``7b-layer`` it also prints the time per matrix shape and the extrapolated 7B total
(32 x the layer's matrices + embedding + lm_head).

Ready for a GPU machine: ``python bench/bench_llm.py --device cuda`` passes ``--device cuda``
to the CLI and computes the floor on the GPU too (the folders are generated on that
machine's disk on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VOCAB = 32000
CHUNK_ROWS = 1024  # rows generated at once: float32 scratch stays <= 1024 x 11008 x 4 B


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int
    intermediate: int
    layers: int


SIZES = {
    "167m": Size("167m", 1024, 2816, 8),
    "7b-layer": Size("7b-layer", 4096, 11008, 1),
    "7b": Size("7b", 4096, 11008, 32),  # 6.7e9 parameters, 13.5 GB of bf16: for a GPU machine
    "tiny": Size("tiny", 128, 256, 2),  # a smoke run of the script itself
}
LAYERS_7B = 32


def layer_shapes(size: Size, i: int) -> dict[str, tuple[int, int]]:
    h, f, p = size.hidden, size.intermediate, f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": (h, h),
        p + "self_attn.k_proj.weight": (h, h),
        p + "self_attn.v_proj.weight": (h, h),
        p + "self_attn.o_proj.weight": (h, h),
        p + "mlp.gate_proj.weight": (f, h),
        p + "mlp.up_proj.weight": (f, h),
        p + "mlp.down_proj.weight": (h, f),
    }


def gaussian_bf16(shape: tuple[int, int], gen):
    """A bf16 N(0, 1/cols) matrix, generated CHUNK_ROWS rows at a time (bounded memory),
    on the generator's device (a GPU makes the 7B folder in seconds)."""
    import torch

    out = torch.empty(shape, dtype=torch.bfloat16)
    scale = shape[1] ** -0.5
    for start in range(0, shape[0], CHUNK_ROWS):
        rows = min(CHUNK_ROWS, shape[0] - start)
        chunk = torch.randn((rows, shape[1]), generator=gen, device=gen.device)
        out[start : start + rows] = (chunk * scale).to(torch.bfloat16).cpu()
    return out


def build(size: Size, folder: Path) -> Path:
    """Write the folder unless its index already exists (one shard per decoder layer)."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        return folder
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device).manual_seed(1234)
    groups = [{"model.embed_tokens.weight": (VOCAB, size.hidden)}]
    groups += [layer_shapes(size, i) for i in range(size.layers)]
    groups += [{"lm_head.weight": (VOCAB, size.hidden)}]
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: gaussian_bf16(shape, gen) for name, shape in group.items()}
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        for name, tensor in tensors.items():
            weight_map[name] = shard
            total += tensor.numel() * 2
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)  # the index last: its presence marks a complete folder
    return folder


def run_cli(
    folder: Path, device: str, randomize: bool, threads: int | None, precision: str = "float64"
) -> dict:
    """One CLI process: its summary timings, wall time, peak RSS (MiB) and alphas by layer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "spectralyzer.cli", "analyze", str(folder)]
        cmd += ["--format", "json", "-q", "-o", str(out), "--device", device]
        cmd += ["--precision", precision, "--no-cache"]  # analysis, not reuse
        if randomize:
            cmd.append("--randomize")
        if threads is not None:
            cmd += ["--threads", str(threads)]
        code = (
            "import resource, subprocess, sys;"
            "subprocess.run(sys.argv[1:], check=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        start = time.perf_counter()
        # A wrapper process per run, so RUSAGE_CHILDREN is this run's peak alone.
        done = subprocess.run(
            [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        document = json.loads(out.read_text())
    summary = document["summary"]
    alphas = {row["name"]: row["alpha"] for row in document["layers"]}
    rss_mib = int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    return {"wall": wall, "timings": summary.get("timings", {}), "rss": rss_mib, "alphas": alphas}


def max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """Largest |alpha_a - alpha_b| over the layers of both runs (NaN pairs agree)."""
    assert a.keys() == b.keys(), "the runs analysed different layers"
    diffs = [abs(a[k] - b[k]) for k in a if not (a[k] != a[k] and b[k] != b[k])]
    return max(diffs, default=0.0)


def matrix_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shapes = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def floor(folder: Path, device: str) -> dict[str, float]:
    """Seconds per matrix of the float64 floor: Gram (the smaller side) + eigvalsh."""
    import torch
    from safetensors import safe_open

    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    seconds = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt") as f:
            for name in f.keys():
                w = f.get_tensor(name)
                if dev == "cuda":
                    torch.cuda.synchronize()
                tic = time.perf_counter()
                w64 = w.to(dev, torch.float64)
                gram = w64.T @ w64 if w64.shape[0] >= w64.shape[1] else w64 @ w64.T
                torch.linalg.eigvalsh(gram)
                if dev == "cuda":
                    torch.cuda.synchronize()
                seconds[name] = time.perf_counter() - tic
                del w, w64, gram
    return seconds


def fmt_stages(timings: dict) -> str:
    keys = ("open", "load", "eigenvalues", "randomize", "fits", "total")
    return " ".join(f"{k}={timings[k]:.1f}" for k in keys if k in timings)


def report_7b(shapes: dict[str, tuple[int, int]], per_matrix: dict[str, float], label: str):
    """Seconds per shape and the 7B extrapolation: 32 x the layer + embedding + lm_head."""
    by_shape: dict[tuple[int, int], list[float]] = {}
    for name, secs in per_matrix.items():
        by_shape.setdefault(shapes[name], []).append(secs)
    for shape, secs in sorted(by_shape.items()):
        print(f"  {label} {shape[0]}x{shape[1]}: {sum(secs) / len(secs):.2f} s per matrix")
    layer = sum(s for n, s in per_matrix.items() if n.startswith("model.layers."))
    rest = sum(s for n, s in per_matrix.items() if not n.startswith("model.layers."))
    return LAYERS_7B * layer + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="167m,7b-layer", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, help="pass --threads N to the CLI")
    parser.add_argument("--precisions", default="float64", help="e.g. float64,float32")
    parser.add_argument("--modes", default="plain,randomize", help="plain and/or randomize")
    parser.add_argument("--no-floor", action="store_true", help="skip the in-process floor")
    parser.add_argument(
        "--compare-cpu",
        action="store_true",
        help="also run the CLI with --device cpu and print the largest alpha difference",
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "spectralyzer-bench")
    args = parser.parse_args()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the floor runs with the CLI's thread count
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, GPU {gpu}, device {args.device}, repeats {args.repeats}"
    )
    precisions = [p for p in args.precisions.split(",") if p]
    modes = [m == "randomize" for m in args.modes.split(",") if m]
    rows = []
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        size = SIZES[name]
        tic = time.perf_counter()
        folder = build(size, args.cache / name)
        print(f"[{name}] folder {folder} ready in {time.perf_counter() - tic:.1f} s", flush=True)
        runs = {}
        for precision in precisions:
            for randomize in modes:
                best = None
                for _ in range(args.repeats):
                    res = run_cli(folder, args.device, randomize, args.threads, precision)
                    if best is None or res["timings"]["total"] < best["timings"]["total"]:
                        best = res
                runs[precision, randomize] = best
                flag = "--randomize" if randomize else "plain"
                print(
                    f"[{name}] {precision} {flag}: wall {best['wall']:.1f} s, peak RSS "
                    f"{best['rss']:.0f} MiB, {fmt_stages(best['timings'])}",
                    flush=True,
                )
                if args.compare_cpu and args.device != "cpu":
                    cpu = run_cli(folder, "cpu", randomize, args.threads, precision)
                    print(
                        f"[{name}] {precision} {flag}: --device cpu wall {cpu['wall']:.1f} s; "
                        f"largest |alpha_gpu - alpha_cpu| = "
                        f"{max_difference(best['alphas'], cpu['alphas']):.2e}",
                        flush=True,
                    )
        if args.no_floor:
            continue
        per_matrix = min(
            (floor(folder, args.device) for _ in range(args.repeats)), key=lambda d: sum(d.values())
        )
        total_floor = sum(per_matrix.values())
        print(
            f"[{name}] float64 floor {total_floor:.1f} s over {len(per_matrix)} matrices",
            flush=True,
        )
        for (precision, randomize), res in runs.items():
            rows.append((name, precision, randomize, res["timings"]["total"], total_floor))
        if name == "7b-layer" and (precisions[0], False) in runs:
            plain = runs[precisions[0], False]["timings"]["total"]
            shapes = matrix_shapes(folder)
            est = report_7b(shapes, per_matrix, "floor")
            print(
                f"  extrapolated 7B ({LAYERS_7B} layers): floor {est / 60:.1f} min; "
                f"{precisions[0]} analyze ~{est * plain / total_floor / 60:.1f} min "
                f"(scaled by this folder's ratio)"
            )
    print()
    print("| case | precision | mode | analyze | floor | ratio to floor |")
    print("|---|---|---|---|---|---|")
    for name, precision, randomize, total, fl in rows:
        mode = "--randomize" if randomize else "plain"
        print(f"| {name} | {precision} | {mode} | {total:.1f} s | {fl:.1f} s | {total / fl:.2f} |")


if __name__ == "__main__":
    main()
