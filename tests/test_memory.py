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
  baseline's by less than ``BOUND`` (which is far below the file size);
* shows that the limit bites (the negative control): the same child, made to
  hold a private copy of every tensor before the engine runs, as an engine
  holding the model would, fails to allocate under the same limit.

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
from typing import NamedTuple

import pytest

from memprobe import run_measured, write_safetensors

ROWS, COLS = 4096, 128  # float32: 2 MiB per layer, cheap eigenvalues (128 x 128 Gram)
LAYERS = 300  # 600 MiB file
BATCH_ELEMENTS = 2**20  # 4 MiB of float32 per batch (2 layers)
MIB = 2**20
BOUND = 128 * MIB  # allowed growth of private memory over the one-layer run

CHILD = """
import functools, sys
import spectralyzer.engine as engine
from spectralyzer import cli
from spectralyzer.engine import compute_spectra
engine.compute_spectra = functools.partial(compute_spectra, batch_elements=int(sys.argv[1]))
cli.main(["analyze", sys.argv[2], "--format", "json", "-o", sys.argv[3], "-q"])
"""

#: The negative control: the CLI of CHILD, but every tensor is first copied into private
#: memory and kept (an engine holding the model). Exits HELD_EXIT, naming how many tensors
#: it held, when an allocation fails (in torch, or as ENOMEM, "Cannot allocate memory",
#: wherever the limit is met first).
HELD_EXIT = 99
HOLDING_CHILD = """
import os, sys
import spectralyzer.engine as engine
from spectralyzer import cli
from spectralyzer.engine import compute_spectra

def holding(checkpoint, specs, **kwargs):
    held = []
    try:
        for spec in specs:
            held.append(checkpoint.load(spec.name).clone())
    except Exception as error:  # torch's RuntimeError, or ENOMEM from the loader's mmap
        if isinstance(error, MemoryError) or "allocate" in str(error).lower():
            sys.stderr.write(f"held {len(held)} of {len(specs)} tensors\\n")
            sys.stderr.flush()
            os._exit(HELD_EXIT)
        raise
    return compute_spectra(checkpoint, specs, batch_elements=int(sys.argv[1]), **kwargs)

engine.compute_spectra = holding
cli.main(["analyze", sys.argv[2], "--format", "json", "-o", sys.argv[3], "-q"])
""".replace("HELD_EXIT", str(HELD_EXIT))

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(os, "wait4"),
    reason="needs Linux /proc and os.wait4",
)


class Setup(NamedTuple):
    big: Path
    size: int
    base: dict[str, float]  # the one-layer run's peaks
    limit: int  # RLIMIT_DATA of the big runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    """The 600 MiB file, the one-layer baseline and the limit derived from it."""
    folder = tmp_path_factory.mktemp("memory")
    small, big = folder / "one.safetensors", folder / "big.safetensors"
    write_safetensors(small, 1, ROWS, COLS)
    write_safetensors(big, LAYERS, ROWS, COLS)
    size = big.stat().st_size
    assert size >= 4 * BOUND
    code, err, base = run_measured(
        [sys.executable, "-c", CHILD, str(BATCH_ELEMENTS), str(small), str(folder / "r.json")]
    )
    assert code == 0, err
    return Setup(big, size, base, int(base["VmData"] + size + BOUND))


def test_peak_memory_does_not_grow_with_the_file(setup: Setup, tmp_path: Path) -> None:
    """A 600 MiB file is analysed with less than BOUND (128 MiB) more memory than one layer."""
    big, size, base, limit, report = *setup, tmp_path / "r"
    child = [sys.executable, "-c", CHILD, str(BATCH_ELEMENTS)]
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


def test_the_limit_stops_a_child_that_holds_the_model(setup: Setup, tmp_path: Path) -> None:
    """Negative control: under the same RLIMIT_DATA, holding every tensor fails to allocate
    part way (so the limit above is one an engine holding the model would exceed)."""
    child = [sys.executable, "-c", HOLDING_CHILD, str(BATCH_ELEMENTS)]
    code, err, _ = run_measured([*child, str(setup.big), str(tmp_path / "r")], setup.limit)
    assert code == HELD_EXIT, f"exit {code} under RLIMIT_DATA = {setup.limit / MIB:.0f} MiB:\n{err}"
    held = int(err.split("held ")[1].split(" of ")[0])
    assert 0 < held < LAYERS, err  # it got going, then the limit stopped it
    assert not (tmp_path / "r").exists()
