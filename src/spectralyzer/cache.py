"""A resumable cache of ESDs, keyed by what was analysed, one entry per layer.

An entry holds a layer's eigenvalues (and the top of its randomised copy's spectrum,
:class:`~.fit.traps.ShuffledTop`); the fits
are recomputed from them on every run (cheap next to the eigendecomposition), so
the fit options need not be part of the key.  The key is a BLAKE2b digest of

* the tensor's bytes as loaded (its stored dtype: one pass of ``hashlib`` over
  the buffer), its shape and dtype, and the matrix view (``LayerSpec.view``,
  ``N``, ``M``, slices) -- not its name: the same matrix in two checkpoints is one
  entry;
* every field of the analysis options except :data:`EXCLUDED`, read from the
  dataclass fields, so a new option changes the key unless it is added there;
* the tool version.

Entries are written atomically (a temporary sibling renamed into place) as each
batch finishes, so a killed run resumes where it stopped.  An entry is used only
when its checksum, key and lengths all agree; anything else (truncated, garbled,
written by another version) is recomputed and overwritten, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, interrupts
from .engine import ESD, LayerSpectra, spectra_with
from .fit.traps import ShuffledTop
from .io.base import Checkpoint
from .layers import LayerSpec
from .outputs import Inputs, write_file

#: Option fields that do not change a layer's eigenvalues: where it runs
#: (device, threads, trust), which layers are chosen (the selection's filters), and
#: what is done with the eigenvalues afterwards (the fits, recomputed every run).
EXCLUDED = frozenset(
    {
        "device",
        "threads",
        "trust_pickle",
        "layers",
        "exclude",
        "types",
        "min_evals",
        "max_evals",
        "normalize",
        "fix_fingers",
        "tail_tests",
    }
)
#: 3: the shuffled copy is its spectrum's top; 4: permutations of more than 2^23 entries are
#: drawn in two levels, so a seed's shuffle of such a layer differs (docs/theory.md 3.8);
#: 5: their buckets are shuffled from seeds of their own, so it differs again
MAGIC = b"spectralyzer-esd-5\n"
DIGEST = 32  # bytes of every BLAKE2b digest here
#: Matrix entries read per group before its misses are computed (one engine batch).
GROUP_ELEMENTS = 2**25
_LENGTH = struct.Struct("<Q")
_NOTHING = Inputs(frozenset(), frozenset(), frozenset(), frozenset())


def default_folder() -> Path:
    """``$XDG_CACHE_HOME/spectralyzer``, else ``~/.cache/spectralyzer``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectralyzer"


def option_fields(options: Any) -> dict[str, Any]:
    """The options' fields that change eigenvalues, nested records flattened (``a.b``)."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if item.name in EXCLUDED:
            continue
        if dataclasses.is_dataclass(value):
            out.update({f"{item.name}.{k}": v for k, v in option_fields(value).items()})
        else:
            out[item.name] = list(value) if isinstance(value, tuple) else value
    return out


def _blake(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=DIGEST)
    for part in parts:
        digest.update(part)
    return digest.digest()


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """BLAKE2b of a tensor's bytes in its stored dtype, with its shape and dtype."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    header = json.dumps([list(tensor.shape), str(tensor.dtype)]).encode()
    return _blake(header, flat.view(torch.uint8).numpy().data)


class Cache:
    """ESD entries in ``folder`` for one set of options (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], options: Any) -> None:
        self.folder = Path(folder)
        record = {"version": __version__, "options": option_fields(options)}
        self.salt = _blake(json.dumps(record, sort_keys=True, default=repr).encode())

    def key(self, spec: LayerSpec, source: torch.Tensor | bytes) -> str:
        """The entry name of ``spec``'s matrices cut from its source tensor (or the
        :func:`tensor_digest` of it): the cut (an expert, a q/k/v part) is in the key."""
        digest = source if isinstance(source, bytes) else tensor_digest(source)
        view = json.dumps([spec.view, spec.N, spec.M, spec.num_slices, repr(spec.part)]).encode()
        return _blake(self.salt, view, digest).hex()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.esd"

    def get(self, key: str, spec: LayerSpec) -> LayerSpectra | None:
        """The cached spectra of ``spec``, or None (absent, unreadable, corrupt, mismatched)."""
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        try:
            return _decode(data, key, spec)
        except (ValueError, KeyError, TypeError, struct.error):
            return None  # never trusted: recomputed and overwritten

    def put(self, key: str, spectra: LayerSpectra) -> None:
        """Write one entry atomically; a cache that cannot be written only costs time."""
        try:
            write_file(_encode(key, spectra), self.path(key), _NOTHING)
        except OSError:
            pass


def _encode(key: str, spectra: LayerSpectra) -> bytes:
    esd, rand = spectra.esd, spectra.randomized
    header = {
        "key": key,
        "esd": [esd.evals.size, esd.finite, esd.overflow, esd.eps],
        "rand": None
        if rand is None
        else [rand.top.size, rand.total, rand.count, rand.size, rand.error, rand.finite],
    }
    text = json.dumps(header).encode()
    arrays = [esd.evals] + ([rand.top] if rand is not None else [])
    data = b"".join(np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays)
    body = _LENGTH.pack(len(text)) + text + data
    return MAGIC + _blake(body) + body


def _decode(data: bytes, key: str, spec: LayerSpec) -> LayerSpectra:
    """The spectra in an entry; ValueError unless checksum, key and sizes all agree."""
    start = len(MAGIC) + DIGEST
    body = data[start:]
    if data[: len(MAGIC)] != MAGIC or data[len(MAGIC) : start] != _blake(body):
        raise ValueError("not an entry, or its checksum disagrees")
    (length,) = _LENGTH.unpack_from(body)
    header = json.loads(body[_LENGTH.size : _LENGTH.size + length])
    if header["key"] != key:
        raise ValueError("entry of another key")
    offset = _LENGTH.size + length

    def floats(size: int) -> np.ndarray:
        nonlocal offset
        values = np.frombuffer(body, dtype="<f8", count=size, offset=offset).astype(np.float64)
        offset += 8 * size
        return values

    size, finite, overflow, eps = header["esd"]
    esd = ESD(floats(size), finite=bool(finite), overflow=bool(overflow), eps=float(eps))
    rand = None
    if header["rand"] is not None:
        size, total, count, slices_m, error, finite = header["rand"]
        top = floats(size)
        rand = ShuffledTop(top, float(total), int(count), int(slices_m), float(error), bool(finite))
    if offset != len(body):
        raise ValueError("entry sizes disagree")
    return LayerSpectra(spec, esd, rand)


def groups(specs: list[LayerSpec], elements: int = GROUP_ELEMENTS) -> Iterator[list[LayerSpec]]:
    """Same-shaped specs in groups of at most ``elements`` entries (one more when larger):
    the batches the engine would form, so a group's misses cost one batched call."""
    by_shape: dict[tuple[int, int], list[LayerSpec]] = defaultdict(list)
    for spec in specs:
        by_shape[(spec.N, spec.M)].append(spec)
    for same in by_shape.values():
        group: list[LayerSpec] = []
        for spec in same:
            entries = sum(s.num_slices * s.N * s.M for s in group)
            if group and entries + spec.num_slices * spec.N * spec.M > elements:
                yield group
                group = []
            group.append(spec)
        yield group


def cached_spectra(
    cache: Cache,
    checkpoint: Checkpoint,
    specs: list[LayerSpec],
    options: Any,
    device: torch.device,
    finished: Callable[[list[LayerSpec]], None] | None,
    timings: dict[str, float],
) -> Mapping[str, LayerSpectra]:
    """A :data:`~spectralyzer.pipeline.SpectraFn`: cached ESDs where the cache has them,
    the rest computed group by group and stored as each group finishes.

    A group's tensors are read once to hash them and once more to compute the
    misses (right after: the second read comes from the page cache); the seconds
    spent reading, hashing and looking up go to ``timings["cache"]``.
    """
    result: dict[str, LayerSpectra] = {}
    for group in groups(specs):
        keys: dict[str, str] = {}
        tic = time.perf_counter()
        digests: dict[str, bytes] = {}  # one hash per source tensor, however many cuts
        for spec in group:
            interrupts.check()
            if spec.source not in digests:
                digests[spec.source] = tensor_digest(checkpoint.load(spec.source))
            key = keys[spec.name] = cache.key(spec, digests[spec.source])
            hit = cache.get(key, spec)
            if hit is not None:
                result[spec.name] = hit
        timings["cache"] = timings.get("cache", 0.0) + time.perf_counter() - tic  # read, hash
        misses = [s for s in group if s.name not in result]
        if finished and len(misses) < len(group):
            finished([s for s in group if s.name in result])
        if not misses:
            continue
        fresh = spectra_with(checkpoint, misses, options, device, finished, timings)
        for spec in misses:
            cache.put(keys[spec.name], fresh[spec.name])
            result[spec.name] = fresh[spec.name]
    return result
