"""Peak memory of a child process, and synthetic checkpoints to measure it on.

Shared by ``bench/bench_memory.py`` and ``tests/test_memory.py``.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def write_safetensors(path: Path, layers: int, rows: int, cols: int) -> None:
    """A safetensors file of ``layers`` copies of one random float32 matrix, written in blocks.

    Each copy gets its own first entry: identical copies would be aliases, analysed once.
    """
    block = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32).tobytes()
    header = {
        f"layer{i}.weight": {
            "dtype": "F32",
            "shape": [rows, cols],
            "data_offsets": [i * len(block), (i + 1) * len(block)],
        }
        for i in range(layers)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i in range(layers):
            f.write(struct.pack("<f", float(i)) + block[4:])


def _status(pid: int) -> dict[str, int]:
    """Memory fields of /proc/PID/status, in bytes (empty once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def run_measured(
    args: list[str], data_limit: int | None = None
) -> tuple[int, str, dict[str, float]]:
    """Run a command; return (exit code, stderr, peaks).

    Peaks of the /proc/PID/status fields (RssAnon, RssFile, VmData, ...) are
    polled every millisecond; ``maxrss`` is the kernel's exact peak resident set
    of this one child (``wait4``), ``wall`` its wall time in seconds.
    ``data_limit`` sets ``RLIMIT_DATA`` in the child.
    """

    def limit() -> None:
        if data_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit)
        peaks: dict[str, float] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for key, value in _status(proc.pid).items():
                peaks[key] = max(peaks.get(key, 0), value)
            time.sleep(0.001)
        peaks["wall"] = time.perf_counter() - start
        peaks["maxrss"] = usage.ru_maxrss * 1024
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read().decode(errors="replace"), peaks
