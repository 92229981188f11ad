"""Time the Hessian probes of `spectralyzer probe` on the demo.  A benchmark, not a test: it prints figures.

    python bench/bench_probe.py [--device auto|cpu|cuda] [--precision float64 float32]
                                [--batch N] [--repeats 10] [--probe-repeats 2]

On the probe demo (digits CNN, 9,818 parameters, 512-sample batch; `--batch N`
keeps the first N samples), per device and precision, it prints best and median
of `--repeats` runs (after a warm-up) of:

1. one forward+backward pass (``loss.backward()``, model in eval mode as the
   probe has it): the baseline every other figure is divided by ("x bwd");
2. building a HessianOperator (forward + gradient graph with create_graph) and
   a GGNOperator;
3. one Hessian-vector and one GGN-vector product;
4. best and median of `--probe-repeats` runs (no warm-up: the runs above warmed
   up) of each probe end to end (operator built, then the probe): top-5 by Lanczos
   (40 steps), Hutch++ trace (90 products), SLQ (4 vectors x 60 steps), for
   the Hessian and the GGN, with the products it used (counted) and the time
   per product (probe time without the construction / products, Lanczos
   re-orthogonalisation included); and ``run_probe`` with
   ``ProbeOptions(batch_sizes=(32, 128, 512))``, its own timings dict, the
   products and operator constructions of its batch-size part (sub-batches,
   so per-product figures there are for smaller batches).

``--device auto`` (the default) times the CPU, and CUDA too when torch sees it;
CUDA is synchronised around every timed call.  Threads: torch's default.

    python bench/bench_probe.py --minilm [--minilm-runs whole,micro,bf16] [--baseline-src DIR]

measures the issue-17 case instead: all-MiniLM-L6-v2 with a 4-class head on
[CLS] (``examples/minilm_head.py``, default SDPA attention), 16 sequences of
32 token ids, ``probe --precision float32 --top-k 3 --steps 20`` run as a
user would, each in its own process:

5. peak RSS (the kernel's ``ru_maxrss`` of the child, i.e. its VmHWM), wall
   time and lambda__1 for the whole batch's graph kept (``--hvp-batch 16``),
   micro-batches of 2 (``--hvp-batch 2``), and micro-batches with the Lanczos
   basis in bfloat16 or on disk; the probe's own memory estimate beside each
   (it leaves out the interpreter and libraries, about 0.5 GB here); with
   ``--baseline-src`` (e.g. the main checkout's ``src``) the same command on
   that code too (no micro-batching there);
6. in this process: one forward+backward pass, and one Hessian product by
   each route (whole-batch graph, micro-batches of 2, finite differences),
   as multiples of it;
7. the relative error of finite-difference products against the exact
   product computed in float64, in float32 and bfloat16, on the MiniLM case
   and on the probe demo (3 random vectors each).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch

from spectralyzer.demo import probe_demo
from spectralyzer.hessian.finite_difference import FiniteDifferenceHessian
from spectralyzer.hessian.ggn import GGNOperator
from spectralyzer.hessian.lanczos import top_eigenvalues
from spectralyzer.hessian.microbatch import MicroBatched
from spectralyzer.hessian.operator import HessianOperator
from spectralyzer.hessian.slq import slq
from spectralyzer.hessian.trace import hutch_plus_plus
from spectralyzer.io.runnable import load_batch, load_runnable
from spectralyzer.probe_pipeline import PRECISIONS, ProbeOptions, run_probe

LOSS = torch.nn.functional.cross_entropy
# the probe pipeline module (its functions are timed from outside)
probe_module = importlib.import_module("spectralyzer.probe_pipeline")
OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}
BATCH_SIZES = (32, 128, 512)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


class Counted:
    """A curvature operator counting its products; on CUDA it takes and returns CPU vectors
    if ``cpu_io``."""

    def __init__(self, op, cpu_io: bool = False) -> None:
        self.op, self.count = op, 0
        self.cpu_io = cpu_io and op.device.type != "cpu"
        self.dim, self.dtype = op.dim, op.dtype
        self.device = torch.device("cpu") if self.cpu_io else op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1
        if self.cpu_io:  # the trace estimators draw their vectors on the CPU
            return self.op.matvec(v.to(self.op.device)).cpu()
        return self.op.matvec(v)


def probes(op, generator: torch.Generator) -> dict[str, Callable[[], int]]:
    """Each probe as in run_probe's ``curvature``; each call returns the products it used."""

    def top5() -> int:
        mv = Counted(op)
        top_eigenvalues(mv, 5, 40, generator)
        return mv.count

    def trace() -> int:
        mv = Counted(op, cpu_io=True)
        hutch_plus_plus(mv, 90, generator)
        return mv.count

    def density() -> int:
        mv = Counted(op)
        slq(mv, 60, 4, generator)
        return mv.count

    return {"top-5 Lanczos 40": top5, "Hutch++ 90": trace, "SLQ 4x60": density}


def probe_end_to_end(build, name: str, repeats: int, device: torch.device):
    """(products, end-to-end seconds per run, probe-only seconds per run); no warm-up run."""
    totals, parts, products = [], [], 0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        op = build()
        sync(device)
        built = time.perf_counter()
        products = probes(op, torch.Generator().manual_seed(0))[name]()
        sync(device)
        end = time.perf_counter()
        del op
        totals.append(end - start)
        parts.append(end - built)
    return products, totals, parts


@contextlib.contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count HessianOperator products and constructions, in all and inside batch_scaling."""
    counts = {"products": 0, "built": 0, "bs_products": -1, "bs_built": -1}  # -1: not seen
    matvec, init = HessianOperator.matvec, HessianOperator.__init__
    scaling = getattr(probe_module, "batch_scaling", None)  # the batch-size part, if so named

    def counted_matvec(self, vector):
        counts["products"] += 1
        return matvec(self, vector)

    def counted_init(self, *args, **kwargs):
        counts["built"] += 1
        init(self, *args, **kwargs)

    def counted_scaling(*args, **kwargs):
        before = counts["products"], counts["built"]
        try:
            return scaling(*args, **kwargs)
        finally:
            counts["bs_products"] = counts["products"] - before[0]
            counts["bs_built"] = counts["built"] - before[1]

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(HessianOperator, "matvec", counted_matvec))
        stack.enter_context(mock.patch.object(HessianOperator, "__init__", counted_init))
        if scaling is not None:
            stack.enter_context(mock.patch.object(probe_module, "batch_scaling", counted_scaling))
        yield counts


def row(what: str, times: list[float], base: float, products: int | None = None, part=None):
    best, median = min(times), statistics.median(times)
    if products:  # per product: probe time without the construction
        per = min(part if part is not None else times) / products
        extra = f"{products:9d} {per * 1e3:10.3f} {per / base:8.2f}"
    else:
        extra = f"{'-':>9} {'-':>10} {best / base:8.2f}"
    print(f"  {what:<38} {best * 1e3:10.2f} {median * 1e3:10.2f} {extra}")


def bench(model0, inputs0, targets0, device, precision, args) -> None:
    dtype = PRECISIONS[precision]
    model = copy.deepcopy(model0).to(device=device, dtype=dtype).eval()
    inputs, targets = inputs0.to(device=device, dtype=dtype), targets0.to(device)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)

    def forward_backward() -> None:
        for p in params:
            p.grad = None
        LOSS(model(inputs), targets).backward()

    n_params = sum(p.numel() for p in params)
    print(f"\n{device.type}, {precision}: {n_params:,} parameters, batch {len(inputs)}")
    header = f"  {'':<38} {'best ms':>10} {'median ms':>10} {'products':>9} {'ms/product':>10} {'x bwd':>8}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    baseline = timed(forward_backward, args.repeats, device)
    base = min(baseline)
    for p in params:
        p.grad = None
    row("forward+backward (baseline)", baseline, base)

    builders = {
        name: (lambda kind=kind: kind(model, LOSS, inputs, targets))
        for name, kind in OPERATORS.items()
    }
    for name, build in builders.items():
        row(f"build {OPERATORS[name].__name__}", timed(build, args.repeats, device), base)
    for name, build in builders.items():
        op = build()
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        v = v.to(device=device, dtype=dtype)
        row(
            f"one {name} product",
            timed(lambda op=op, v=v: op.matvec(v), args.repeats, device),
            base,
        )
        del op
    for name, build in builders.items():
        for probe_name in probes(None, torch.Generator()):
            products, totals, parts = probe_end_to_end(
                build, probe_name, args.probe_repeats, device
            )
            row(f"{name} {probe_name} (end to end)", totals, base, products, parts)

    options = ProbeOptions(batch_sizes=BATCH_SIZES, device=device.type, precision=precision)
    runs = []
    for _ in range(args.probe_repeats):
        with counting() as counts:
            result = run_probe(copy.deepcopy(model0), inputs0, targets0, options)
        runs.append((result.timings, dict(counts)))
    timings, counts = min(runs, key=lambda r: r[0]["total"])
    print(f"  run_probe(batch_sizes={BATCH_SIZES}), best of {len(runs)} by total:")
    print(
        "    seconds: "
        + ", ".join(
            f"{k} {v:.3f} (median {statistics.median(r[0][k] for r in runs):.3f})"
            for k, v in timings.items()
        )
    )
    print(
        f"    {counts['products']} Hessian products, {counts['built']} operators built in all; "
        f"batch_sizes part: {counts['bs_products']} products on sub-batches, "
        f"{counts['bs_built']} operators built"
    )
    if "batch_sizes" in timings and counts["bs_products"] > 0:
        per = timings["batch_sizes"] / counts["bs_products"]
        print(
            f"    batch_sizes part per product (constructions included): {per * 1e3:.3f} ms, "
            f"{per / base:.2f} x bwd"
        )


ROOT = Path(__file__).resolve().parents[1]
PROBE_ARGS = ["--precision", "float32", "--top-k", "3", "--steps", "20", "-q", "--format", "json"]
MINILM_RUNS = {
    "whole": ["--hvp-batch", "16"],
    "micro": ["--hvp-batch", "2"],
    "bf16": ["--hvp-batch", "2", "--lanczos-basis", "bfloat16"],
    "disk": ["--hvp-batch", "2", "--lanczos-basis", "disk"],
}


def minilm_files(folder: Path) -> tuple[Path, Path]:
    """The example's weights and a 16 x 32 token-id batch, written into ``folder``."""
    sys.path.insert(0, str(ROOT))
    from examples.minilm_head import write_batch, write_weights

    weights, batch = folder / "minilm_head.safetensors", folder / "batch.pt"
    write_weights(weights)
    write_batch(batch, n=16, length=32)
    return weights, batch


def minilm_runs(weights: Path, batch: Path, folder: Path, runs: list[str], baseline: str | None):
    """Item 5: each configuration of the probe in its own process, with its peak RSS."""
    sys.path.insert(0, str(Path(__file__).parent))
    from memprobe import run_measured

    base = ["examples.minilm_head:factory", "--weights", str(weights), "--data", str(batch)]
    cases = [(name, MINILM_RUNS[name], str(ROOT / "src")) for name in runs]
    if baseline:
        cases.append(("baseline", [], baseline))
    print(f"\nMiniLM + head, 16 x 32 tokens, probe {' '.join(PROBE_ARGS)}, one process each:")
    print(f"  {'run':<9} {'peak RSS':>9} {'estimate':>9} {'wall s':>7} {'lambda_1':>12}  options")
    reference = None
    for name, extra, src in cases:
        out = folder / f"{name}.json"
        env = {**os.environ, "PYTHONPATH": src}
        command = [sys.executable, "-m", "spectralyzer.cli", "probe", *base, *PROBE_ARGS]
        with contextlib.chdir(ROOT):
            old = os.environ.copy()
            os.environ.update(env)
            try:
                code, err, peaks = run_measured([*command, *extra, "-o", str(out)])
            finally:
                os.environ.clear()
                os.environ.update(old)
        if code != 0:
            print(f"  {name:<9} exit {code}: {err.strip().splitlines()[-1] if err.strip() else ''}")
            continue
        doc = json.loads(out.read_text())
        lam = doc["curvatures"]["hessian"]["lambda_1"]
        reference = lam if reference is None else reference
        memory = doc.get("memory") or {}
        estimate = f"{memory['total'] / 2**30:.2f}G" if memory else "-"
        print(
            f"  {name:<9} {peaks['maxrss'] / 2**30:8.2f}G {estimate:>9} {peaks['wall']:7.1f} "
            f"{lam:12.6f}  {' '.join(extra) or '(as the code chooses)'}; "
            f"relative change of lambda_1 {abs(lam - reference) / abs(reference):.1e}"
        )


def relative_errors(make, inputs, targets, dtype, count: int = 3) -> list[float]:
    """Item 7: |FD - exact64| / |exact64| for ``count`` random vectors, FD in ``dtype``."""
    model64 = make().double().eval()
    x64 = inputs.double() if inputs.is_floating_point() else inputs
    exact = HessianOperator(model64, LOSS, x64, targets)
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(exact.dim, generator=gen, dtype=torch.float64) for _ in range(count)]
    want = [exact.matvec(v) for v in vectors]
    del exact, model64
    model = make().to(dtype).eval()
    x = inputs.to(dtype) if inputs.is_floating_point() else inputs
    fd = FiniteDifferenceHessian(model, LOSS, x, targets, micro_batch=4)
    errors = []
    for v, w in zip(vectors, want, strict=True):
        got = fd.matvec(v.to(dtype)).double()
        errors.append(float((got - w).norm() / w.norm()))
    return errors


def minilm_products(weights: Path, batch: Path) -> None:
    """Item 6: one product by each route against one forward+backward pass (float32)."""
    model = load_runnable("examples.minilm_head:factory", weights)
    inputs, targets = load_batch(batch)
    params = [p.requires_grad_(True) for p in model.parameters()]

    def forward_backward() -> None:
        for p in params:
            p.grad = None
        LOSS(model(inputs), targets).backward()

    cpu = torch.device("cpu")
    base = min(timed(forward_backward, 2, cpu))
    print(f"\nMiniLM + head, 16 x 32, float32: one forward+backward {base:.2f} s; one product:")
    routes = {
        "exact, whole-batch graph kept": lambda: HessianOperator(model, LOSS, inputs, targets),
        "exact, micro-batches of 2": lambda: MicroBatched(
            lambda idx: HessianOperator(model, LOSS, inputs[idx], targets[idx]), len(inputs), 2
        ),
        "finite differences, micro-batches of 4": lambda: FiniteDifferenceHessian(
            model, LOSS, inputs, targets, micro_batch=4
        ),
    }
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))
    for name, build in routes.items():
        op = build()
        seconds = min(timed(lambda op=op: op.matvec(v), 2, cpu))
        print(f"  {name:<44} {seconds:7.2f} s  {seconds / base:6.2f} x fwd+bwd")
        del op


def fd_errors(weights: Path, batch: Path) -> None:
    inputs, targets = load_batch(batch)
    factory, demo_weights, demo_batch, _ = probe_demo()
    demo_x, demo_y = load_batch(demo_batch)
    cases = {
        "MiniLM + head, 16 x 32": (
            lambda: load_runnable("examples.minilm_head:factory", weights),
            inputs,
            targets,
        ),
        "probe demo (digits CNN), 64 samples": (
            lambda: load_runnable(factory, demo_weights),
            demo_x[:64],
            demo_y[:64],
        ),
    }
    print("\nfinite-difference products, relative error against the exact float64 product:")
    for name, (make, x, y) in cases.items():
        for dtype in (torch.float32, torch.bfloat16):
            errors = relative_errors(make, x, y, dtype)
            eps = torch.finfo(dtype).eps
            print(
                f"  {name:<36} {str(dtype)[6:]:<9} "
                + ", ".join(f"{e:.2e}" for e in errors)
                + f"  (eps^(2/3) = {eps ** (2 / 3):.1e})"
            )


def minilm(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(ROOT):
        weights, batch = minilm_files(Path(tmp))
        runs = [r for r in args.minilm_runs.split(",") if r]
        minilm_runs(weights, batch, Path(tmp), runs, args.baseline_src)
        minilm_products(weights, batch)
        fd_errors(weights, batch)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: the CPU, and CUDA too when available",
    )
    parser.add_argument(
        "--precision", nargs="+", default=["float64", "float32"], choices=list(PRECISIONS)
    )
    parser.add_argument("--batch", type=int, help="keep the first N samples (default: all 512)")
    parser.add_argument("--repeats", type=int, default=10, help="runs of the single passes")
    parser.add_argument("--probe-repeats", type=int, default=2, help="runs of each probe")
    parser.add_argument("--minilm", action="store_true", help="the MiniLM + head case instead")
    parser.add_argument(
        "--minilm-runs", default="whole,micro,bf16,disk", help="which runs of item 5"
    )
    parser.add_argument("--baseline-src", help="also run item 5 on this src folder (e.g. main's)")
    args = parser.parse_args()
    if args.minilm:
        minilm(args)
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]

    factory, weights, batch, _ = probe_demo()
    model = load_runnable(factory, weights)
    inputs, targets = load_batch(batch)
    if args.batch is not None:
        if not 2 <= args.batch <= len(inputs):
            parser.error(f"--batch must be between 2 and {len(inputs)}")
        inputs, targets = inputs[: args.batch], targets[: args.batch]

    print(f"model: {factory} with {weights.name}; batch {batch.name}, {len(inputs)} samples")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"devices {', '.join(d.type for d in devices)}; repeats {args.repeats} "
        f"(after one warm-up), probe repeats {args.probe_repeats} (no warm-up)"
    )
    print(
        "x bwd: best time (per product for probes) / best forward+backward; "
        "probe rows: end to end incl. building the operator, ms/product without it"
    )
    clock = time.perf_counter()
    for device in devices:
        for precision in args.precision:
            bench(model, inputs, targets, device, precision, args)
    print(f"\nbench wall time {time.perf_counter() - clock:.1f} s")


if __name__ == "__main__":
    main()
