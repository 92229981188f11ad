"""Memory: how much this process may still use, and how much one weight matrix needs.

Why: a small file can describe a huge tensor (``--max-evals 0`` with a 20000^2
matrix asks for about 8 GB), and running out of memory half way gives a
traceback or the OOM killer, never a useful answer.  So the need of every matrix
is estimated from its shape and dtype *before* anything is read, and a matrix
whose need exceeds what is available is skipped with both numbers as the reason.

The estimate follows what :mod:`spectralyzer.engine` allocates for one layer of
``S`` matrices ``N x M`` (``N >= M``) stored with ``b`` bytes per entry:

* the tensor as loaded: ``S*N*M*b`` (counted even when memory-mapped);
* the float64 Gram matrices and the eigensolver's copy of them: ``2 * 8*S*M^2``;
* one converted chunk of rows (:data:`CHUNK_ELEMENTS` entries, at least one row
  per matrix) and its temporaries: ``20`` bytes per chunk entry;
* with ``--randomize``: the permutation, or for a CPU copy above 2^23 entries the
  first level of its two-level shuffle (4 bytes per entry, 8 above 2^31 entries,
  and while it is drawn one bucket label per entry), the
  flattened tensor (a copy when it is a transposed view), the
  shuffled copy (float32 for the Krylov path, float64 for a whole spectrum: 8
  bytes per entry at most; a batch's float32 Krylov copies are held until its
  spaces run, at most 4 bytes per entry of the batch's limit, 128 MiB) and, for a
  whole spectrum, its float64 Gram matrices
  with their copy (``2 * 8*S*M^2``; the Krylov basis is far smaller), and the
  permutation of the next batch's shape when it is drawn ahead (at most
  :data:`AHEAD_ENTRIES` entries of 5 bytes).

Available memory is the smallest of ``MemAvailable`` (Linux), the cgroup's
``memory.max`` less its ``memory.current``, and the headroom under the soft
``RLIMIT_DATA`` / ``RLIMIT_AS`` limits; None when none of these can be read
(then nothing is skipped for memory).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

#: Entries of one converted chunk of rows (32 MiB of float64): the engine never
#: converts more of a tensor than this at once.
CHUNK_ELEMENTS = 2**22

#: Entries of the largest permutation drawn a batch ahead, with ``--randomize`` (64 MiB)
AHEAD_ENTRIES = 2**24
#: The engine's default limit on a batch's matrix entries
BATCH_ENTRIES = 2**25

_CHUNK_BYTES_PER_ENTRY = 8 + 8 + 4  # float64 copy, its scaled/abs temporary, a float32 copy
_MEMINFO = Path("/proc/meminfo")
_STATUS = Path("/proc/self/status")
_CGROUP = Path("/sys/fs/cgroup")


def matrix_need(N: int, M: int, slices: int, itemsize: int, randomize: bool = False) -> int:
    """Estimated peak bytes the engine allocates for one layer (see the module docstring)."""
    entries = slices * N * M
    stored = entries * itemsize
    chunk = min(entries, max(CHUNK_ELEMENTS, slices * M))
    need = stored + 2 * 8 * slices * M * M + _CHUNK_BYTES_PER_ENTRY * chunk
    if randomize:
        label = 1  # a bucket label while the order is drawn (shuffle.two_level_shuffle)
        order = (4 if entries < 2**31 else 8) + label
        need += entries * order + stored + 8 * entries + 2 * 8 * slices * M * M + 5 * AHEAD_ENTRIES
        need += 4 * BATCH_ENTRIES  # the other float32 Krylov copies of its batch
    return need


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None when unknown (module docstring)."""
    limits = [_meminfo_available(), _cgroup_headroom(), *_rlimit_headroom()]
    known = [limit for limit in limits if limit is not None]
    return max(0, min(known)) if known else None


def format_bytes(size: float) -> str:
    """``6442450944`` -> ``"6.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _meminfo_available() -> int | None:
    fields = _kib_fields(_MEMINFO)
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 limit less usage, for a process that sees its own cgroup at the root."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def _rlimit_headroom() -> list[int | None]:
    """Headroom under the soft data-segment and address-space limits."""
    status = _kib_fields(_STATUS)
    out: list[int | None] = []
    for which, field in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
        soft, _ = resource.getrlimit(which)
        if soft == resource.RLIM_INFINITY or field not in status:
            out.append(None)
        else:
            out.append(soft - status[field])
    return out


def _kib_fields(path: Path) -> dict[str, int]:
    """``Name: 123 kB`` lines of a /proc file, in bytes (empty when unreadable)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out
