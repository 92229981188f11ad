"""Peak memory of `spectralyzer analyze` against checkpoint size.  A benchmark: it prints figures.

    python bench/bench_memory.py [--counts 8 32 64] [--shape 1024x1024] [--keep-dir DIR]

Writes synthetic safetensors files of COUNT float32 matrices each (default 8, 32
and 64 matrices of 1024 x 1024: 32, 128 and 256 MiB) and runs
``python -m spectralyzer.cli analyze FILE --format json -o REPORT -q`` on each in
a fresh child process, then prints per file:

* ``maxrss``: the child's peak resident set, exact (``os.wait4`` of that one
  child, so no maximum over earlier children);
* ``anon`` / ``file``: peaks of ``RssAnon`` (memory the process allocated) and
  ``RssFile`` (file-backed pages: libraries and the memory-mapped checkpoint,
  reclaimable page cache), polled from /proc every millisecond;
* wall time of the child, and the number of layers in its JSON report.

The first row is the baseline: a child that only imports torch and spectralyzer.
The engine streams (tensors loaded one at a time, batches of at most 2^25
entries), so ``anon`` should level off once a file holds more than one batch
(32 matrices of 1024 x 1024), while ``file`` and hence ``maxrss`` grow with
the pages of the mapped file that were read.

The report goes to a temporary file (``-o /dev/null`` also works: a target
that is not a regular file is written in place, not renamed over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from memprobe import run_measured, write_safetensors

MIB = 2**20


def measure(args: list[str]) -> dict[str, float]:
    """Run a command to completion; its exact peak RSS, polled peaks and wall time."""
    code, err, peaks = run_measured(args)
    if code:
        sys.exit(f"{args} failed ({code}):\n{err}")
    nan = float("nan")
    return {"maxrss": peaks["maxrss"], "anon": peaks.get("RssAnon", nan),
            "file": peaks.get("RssFile", nan), "wall": peaks["wall"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--shape", default="1024x1024", help="ROWSxCOLS of each matrix")
    parser.add_argument("--keep-dir", help="write the files here instead of a temporary folder")
    args = parser.parse_args()
    rows, cols = map(int, args.shape.lower().split("x"))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, matrices {rows}x{cols} float32")
    header = (
        f"{'file MiB':>9} {'layers':>7} {'maxrss MiB':>11} {'anon MiB':>9} {'file-backed':>12}"
        f" {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    base = measure([sys.executable, "-c", "import torch, spectralyzer.cli, spectralyzer.pipeline"])
    print(_row("import", "-", base))

    with tempfile.TemporaryDirectory(dir=args.keep_dir) as folder:
        for count in args.counts:
            path = Path(folder) / f"synthetic-{count}.safetensors"
            report = Path(folder) / "report.json"
            write_safetensors(path, count, rows, cols)
            cli = [sys.executable, "-m", "spectralyzer.cli", "analyze", str(path)]
            result = measure([*cli, "--format", "json", "-o", str(report), "-q"])
            layers = json.loads(report.read_text())["summary"]["num_layers"]
            print(_row(f"{path.stat().st_size / MIB:.0f}", str(layers), result))
            path.unlink()


def _row(size: str, layers: str, m: dict[str, float]) -> str:
    return (
        f"{size:>9} {layers:>7} {m['maxrss'] / MIB:>11.0f} {m['anon'] / MIB:>9.0f}"
        f" {m['file'] / MIB:>12.0f} {m['wall']:>7.1f}"
    )


if __name__ == "__main__":
    main()
