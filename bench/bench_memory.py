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
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 2**20


def write_safetensors(path: Path, count: int, rows: int, cols: int) -> None:
    """``count`` float32 matrices (copies of one random matrix) in a safetensors file."""
    block = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32).tobytes()
    header = {
        f"layers.{i}.weight": {
            "dtype": "F32",
            "shape": [rows, cols],
            "data_offsets": [i * len(block), (i + 1) * len(block)],
        }
        for i in range(count)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(count):
            f.write(block)


def _status(pid: int) -> dict[str, int]:
    """Memory fields of /proc/PID/status in bytes (empty where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(args: list[str]) -> dict[str, float]:
    """Run a command to completion; its exact peak RSS, polled peaks and wall time."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        peaks: dict[str, int] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for key, value in _status(proc.pid).items():
                peaks[key] = max(peaks.get(key, 0), value)
            time.sleep(0.001)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{args} failed ({proc.returncode}):\n{err.read().decode(errors='replace')}")
    return {
        "maxrss": usage.ru_maxrss * 1024,
        "anon": peaks.get("RssAnon", float("nan")),
        "file": peaks.get("RssFile", float("nan")),
        "wall": wall,
    }


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
