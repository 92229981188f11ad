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
import sys
from pathlib import Path

import pytest

from memprobe import run_measured, write_safetensors

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
