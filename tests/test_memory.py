"""The engine streams: the memory an analysis needs does not grow with the checkpoint.

What is measured, and why.  ``SafetensorsCheckpoint`` maps the whole file
copy-on-write (a private ``rw-p`` mapping), so the file counts in full towards
both ``RLIMIT_AS`` (address space) and ``RLIMIT_DATA`` (private writable
memory), and the pages it reads stay in the resident set as file-backed pages
(``RssFile``, reclaimable page cache).  None of those three can be held below
the file size, whatever the engine does.  What streaming bounds is the memory
the analysis allocates for itself: anonymous memory (``RssAnon``) and private
writable memory other than the file mapping.  The test therefore

* runs the CLI once on a one-layer file (the baseline: same code path, same
  imports and threads) and once on a file of ``LAYERS`` such layers
  (``LAYERS`` x 2 MiB, many times the bound below);
* limits the big run with ``RLIMIT_DATA`` = the file size + the baseline's
  private memory + ``BOUND``, a hard limit: a loader or engine that kept every
  tensor, or a growing share of them, in its own memory would fail to allocate;
* asserts that the big run's peak ``RssAnon`` (polled from /proc) exceeds the
  baseline's by less than ``BOUND`` (which is far below the file size).

The engine's batch is scaled down from its default 2^25 entries (128 MiB of
float32) to 2^20, through a wrapper in the child, so that a file many times
the batch stays quick to analyse; ``bench/bench_memory.py`` measures the CLI
as shipped.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROWS, COLS = 4096, 128  # float32: 2 MiB per layer, cheap eigenvalues (128 x 128 Gram)
LAYERS = 300  # 600 MiB file
BATCH_ELEMENTS = 2**20  # 4 MiB of float32 per batch (2 layers)
MIB = 2**20
BOUND = 128 * MIB  # allowed growth of private memory over the one-layer run

CHILD = """
import functools, sys
import spectralyzer.pipeline as pipeline
from spectralyzer import cli
from spectralyzer.engine import compute_spectra
pipeline.compute_spectra = functools.partial(compute_spectra, batch_elements=int(sys.argv[1]))
cli.main(["analyze", sys.argv[2], "--format", "json", "-o", sys.argv[3], "-q"])
"""

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(os, "wait4"),
    reason="needs Linux /proc and os.wait4",
)


def write_safetensors(path: Path, layers: int, rows: int, cols: int) -> None:
    """A safetensors file of ``layers`` copies of one random float32 matrix, written in blocks."""
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
        for _ in range(layers):
            f.write(block)


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


def run_measured(args: list[str], data_limit: int | None = None) -> tuple[int, str, dict[str, int]]:
    """Run a command; return (exit code, stderr, peak memory fields in bytes).

    Peaks of RssAnon, RssFile, VmData are polled every millisecond; ``maxrss`` is
    the kernel's exact peak resident set of this child (``wait4``).
    """

    def limit() -> None:
        if data_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit)
        peaks: dict[str, int] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for key, value in _status(proc.pid).items():
                peaks[key] = max(peaks.get(key, 0), value)
            time.sleep(0.001)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peaks["maxrss"] = usage.ru_maxrss * 1024
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), peaks


def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """A 600 MiB file is analysed with less than BOUND (128 MiB) more memory than one layer."""
    small, big, report = tmp_path / "one.safetensors", tmp_path / "big.safetensors", tmp_path / "r"
    write_safetensors(small, 1, ROWS, COLS)
    write_safetensors(big, LAYERS, ROWS, COLS)
    size = big.stat().st_size
    assert size >= 4 * BOUND
    child = [sys.executable, "-c", CHILD, str(BATCH_ELEMENTS)]

    code, err, base = run_measured([*child, str(small), str(report)])
    assert code == 0, err
    limit = base["VmData"] + size + BOUND
    code, err, peak = run_measured([*child, str(big), str(report)], data_limit=limit)
    assert code == 0, f"failed under RLIMIT_DATA = {limit / MIB:.0f} MiB:\n{err}"

    result = json.loads(report.read_text())
    assert result["summary"]["num_layers"] == len(result["layers"]) == LAYERS
    growth = peak["RssAnon"] - base["RssAnon"]
    assert growth < BOUND, (
        f"anonymous memory grew by {growth / MIB:.0f} MiB for a {size / MIB:.0f} MiB file "
        f"(one layer: {base['RssAnon'] / MIB:.0f} MiB, {LAYERS} layers: "
        f"{peak['RssAnon'] / MIB:.0f} MiB)"
    )
