"""Small files must not ask for huge memory or hang (issue 11, item 6).

Every size is checked from headers, shapes and strides before anything is
allocated; nothing here allocates the sizes it guards against.  The two tests
that run the CLI in a child process limit its ``RLIMIT_DATA``, so that code
which did allocate would fail there, not exhaust the machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spectralyzer import engine
from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.io.base import TensorInfo
from spectralyzer.io.hf_folder import find_shards
from spectralyzer.io.memory import MemoryCheckpoint
from spectralyzer.io.npz_file import NpzCheckpoint
from spectralyzer.io.torch_file import TorchCheckpoint
from spectralyzer.layers import Selection, plan

GIB = 2**30
linux_only = pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not hasattr(os, "wait4"),
    reason="needs Linux /proc and os.wait4",
)


def run(*args: object):
    return CliRunner().invoke(main, list(map(str, args)))


def one_error_line(result) -> str:
    """The single ``spectralyzer: error:`` line of a failed run (and no traceback)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("spectralyzer: error: "), result.output
    return lines[0]


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after ``seconds``: turns a hang into a failure."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def good_layer() -> torch.Tensor:
    return torch.randn(64, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- torch files


def test_zero_stride_view_is_skipped_from_its_strides_without_reading_it(tmp_path):
    # 1.6 KB of pickle and storage on disk; 2^24 x 1024 float32 = 64 GiB once copied
    path = tmp_path / "expanded.pt"
    torch.save({"big.weight": torch.zeros(1).expand(2**24, 1024), "ok.weight": good_layer()}, path)
    with TorchCheckpoint(path) as ckpt:
        specs, skipped = plan(ckpt.tensors(), Selection())
    assert [spec.name for spec in specs] == ["ok.weight"]
    assert [(s.name, s.reason) for s in skipped] == [
        ("big.weight", "overlapping view: 17179869184 elements over a storage of 4 bytes")
    ]


def test_3000_deep_dict_is_one_line_error(tmp_path):
    nested: dict = {"w.weight": good_layer()}
    for _ in range(3000):
        nested = {"k": nested}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # torch.save itself recurses
    try:
        torch.save(nested, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    line = one_error_line(run("analyze", tmp_path / "deep.pt"))
    assert "nested deeper than 100 levels" in line


def test_40_level_dict_dag_is_walked_once_per_object(tmp_path):
    # each level holds two keys pointing at the same child: 2^40 paths, 41 objects
    child: dict = {"w.weight": good_layer()}
    for _ in range(40):
        child = {"a": child, "b": child}
    path = tmp_path / "dag.pt"
    torch.save(child, path)
    assert path.stat().st_size < 64 * 1024
    with deadline(30), TorchCheckpoint(path) as ckpt:
        names = [info.name for info in ckpt.tensors()]
    assert names == ["a." * 40 + "w.weight"]  # reached again = an alias, listed once


# ---------------------------------------------------------------- .npz archives


def write_zeros_npz(path: Path, shape: tuple[int, ...], *, compressed: bool, data_bytes=None):
    """An .npz of one float64 array of zeros, streamed (never held in memory).

    ``data_bytes`` writes fewer bytes than the header's shape promises.
    """
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        with archive.open("emb.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(member, header)
            left = math.prod(shape) * 8 if data_bytes is None else data_bytes
            block = bytes(2**22)
            while left > 0:
                member.write(block[: min(left, len(block))])
                left -= len(block)


def test_npz_compression_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    write_zeros_npz(path, (32768, 1024), compressed=True)  # 256 MiB of zeros in 0.25 MiB
    assert path.stat().st_size < 2**20
    with pytest.raises(InputError, match=r"expands 10\d\dx, from .* to 256.0 MiB"):
        NpzCheckpoint(path)


def test_npz_header_promising_more_than_the_member_holds_is_refused(tmp_path):
    # numpy would allocate the header's 8 GiB before finding the data missing
    path = tmp_path / "liar.npz"
    write_zeros_npz(path, (2**20, 1024), compressed=False, data_bytes=4096)
    with pytest.raises(InputError, match=r"header says shape \(1048576, 1024\).*holds 4096 bytes"):
        NpzCheckpoint(path)


def test_npz_array_beyond_available_memory_is_refused_before_loading(tmp_path, monkeypatch):
    stored, packed = tmp_path / "stored.npz", tmp_path / "packed.npz"
    weight = np.random.default_rng(0).standard_normal((1024, 512))  # 4 MiB of float64
    np.savez(stored, emb=weight)
    np.savez_compressed(packed, emb=weight)
    from spectralyzer import budget

    monkeypatch.setattr(budget, "available_memory", lambda: 2**20)
    with pytest.raises(InputError, match=r"'emb.npy' expands .* more than the 1.0 MiB"):
        NpzCheckpoint(packed)
    with NpzCheckpoint(stored) as ckpt:
        _, skipped = plan(ckpt.tensors(), Selection())
        assert "more than the 1.0 MiB available" in skipped[0].reason
        with pytest.raises(InputError, match=r"array 'emb' needs 4.0 MiB of memory"):
            ckpt.load("emb")


def test_compressed_torch_zip_member_beyond_available_memory_is_refused(tmp_path, monkeypatch):
    # torch stores members uncompressed and maps them; a deflated member is expanded in
    # memory when the file cannot be mapped (a torch zip named *.safetensors is read unmapped)
    plain, packed = tmp_path / "plain.pt", tmp_path / "packed.safetensors"
    torch.save({"w.weight": torch.zeros(512, 512)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    from spectralyzer import budget

    monkeypatch.setattr(budget, "available_memory", lambda: 2**19)
    with pytest.raises(InputError, match=r"expands from .* to 1.0 MiB, more than the 512.0 KiB"):
        TorchCheckpoint(packed)
    with TorchCheckpoint(plain) as ckpt:  # stored members are memory-mapped, not expanded
        assert [info.name for info in ckpt.tensors()] == ["w.weight"]


# ---------------------------------------------------------------- Hugging Face indexes


def test_oversized_hf_index_is_refused_before_reading(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"")
    with (folder / "model.safetensors.index.json").open("wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: takes no disk space
    with pytest.raises(InputError, match=r"index file is 64.0 MiB, larger than the 64.0 MiB"):
        find_shards(folder)


# ---------------------------------------------------------------- memory need per matrix


def test_matrix_beyond_available_memory_is_skipped_with_its_need():
    infos = [
        TensorInfo("big.weight", (20000, 20000), "float32"),
        TensorInfo("ok.weight", (64, 32), "float32"),
    ]
    no_cap = Selection(max_evals=None)
    specs, skipped = plan(infos, no_cap, available=GIB)
    assert [spec.name for spec in specs] == ["ok.weight"]
    # 1.5 GiB of data + 2 float64 Gram matrices of 3.0 GiB + one 80 MiB chunk
    assert skipped[0].reason == (
        "needs about 7.5 GiB of memory (data and float64 20000x20000 Gram matrix), "
        "more than the 1.0 GiB available"
    )
    specs, _ = plan(infos, no_cap, available=8 * GIB)
    assert [spec.name for spec in specs] == ["big.weight", "ok.weight"]
    # --randomize adds a permutation, the flattened tensor and an 8-byte shuffled copy
    _, skipped = plan(infos, no_cap, randomize=True, available=8 * GIB)
    assert [s.name for s in skipped] == ["big.weight"]


def write_sparse_safetensors(path: Path, tensors: dict[str, tuple[int, int]]) -> None:
    """A float32 safetensors file of zeros whose data section is a hole (no disk space)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


DATA_LIMIT_CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
from spectralyzer.cli import main
main(sys.argv[2:])
"""


@linux_only
def test_max_evals_0_with_a_20000_square_matrix_skips_it_under_a_memory_limit(tmp_path):
    # no cap on M: today's engine converted the 1.5 GiB tensor to float64 (3 GiB) and
    # died with a traceback; the child's RLIMIT_DATA (file mapping + 2 GiB) keeps a
    # failure here from touching the machine's memory
    path, out = tmp_path / "square.safetensors", tmp_path / "out.json"
    write_sparse_safetensors(path, {"big.weight": (20000, 20000), "ok.weight": (64, 32)})
    limit = path.stat().st_size + 2 * GIB + 512 * 2**20
    args = ["analyze", path, "--max-evals", "0", "--format", "json", "-o", out, "-q"]
    child = [sys.executable, "-c", DATA_LIMIT_CHILD, str(limit), *map(str, args)]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["num_layers"] == 1
    (skip,) = summary["skipped"]
    assert skip["name"] == "big.weight" and skip["reason"].startswith("needs about 7.5 GiB")


# ---------------------------------------------------------------- conversion in chunks

EMBEDDING_CHILD = """
import json, sys
import torch
from spectralyzer.engine import compute_spectra
from spectralyzer.io.safetensors_file import SafetensorsCheckpoint
from spectralyzer.layers import Selection, plan

def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

with SafetensorsCheckpoint(sys.argv[1]) as ckpt:
    specs, _ = plan(ckpt.tensors(), Selection())
    torch.zeros(1).double() @ torch.zeros(1).double()  # warm up allocators and BLAS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set, to the current one
    before = peak_rss()
    spectra = compute_spectra(ckpt, specs)
    peak = peak_rss()
print(json.dumps({"before": before, "peak": peak, "evals": len(spectra[specs[0].name].esd.evals)}))
"""


def write_bf16_safetensors(path: Path, rows: int, cols: int) -> int:
    """One random bf16 ``embed_tokens.weight``, written in blocks; returns its data size."""
    raw = json.dumps(
        {
            "embed_tokens.weight": {
                "dtype": "BF16",
                "shape": [rows, cols],
                "data_offsets": [0, rows * cols * 2],
            }
        }
    ).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(0)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(0, rows, 8192):
            block = torch.randn(8192, cols, generator=generator).bfloat16()
            f.write(block.view(torch.int16).numpy().tobytes())
    return rows * cols * 2


@linux_only
def test_tall_bf16_embedding_is_converted_in_chunks(tmp_path):
    """Peak resident memory of one bf16 layer grows by less than twice its stored size.

    131072 x 512 bf16 = 128 MiB stored (the file mapping, resident as it is
    read).  Converting the whole tensor to float32 and float64 grew the peak by
    about 6x; the chunked Gram adds 2 x 2 MiB of Gram matrices and a 32 MiB
    chunk (measured: 1.6x).  The peak is the kernel's VmHWM, reset just before.
    """
    path = tmp_path / "embedding.safetensors"
    stored = write_bf16_safetensors(path, 131072, 512)
    child = [sys.executable, "-c", EMBEDDING_CHILD, str(path)]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["evals"] == 512
    growth = result["peak"] - result["before"]
    assert growth < 2 * stored, f"peak grew by {growth / stored:.1f}x the stored size"


def test_chunked_gram_gives_the_numbers_of_the_whole_product(monkeypatch):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "tall.weight": torch.randn(3000, 40, generator=g).bfloat16(),
        "wide.weight": torch.randn(40, 3000, generator=g, dtype=torch.float64),
        "conv.weight": torch.randn(24, 16, 3, 3, generator=g).half(),
    }
    copies = {name: t.clone() for name, t in tensors.items()}
    ckpt = MemoryCheckpoint(tensors)
    specs, _ = plan(ckpt.tensors(), Selection())
    whole = engine.compute_spectra(ckpt, specs, randomize=True)
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 1000)  # 25 rows of 40 columns per chunk
    chunked = engine.compute_spectra(ckpt, specs, randomize=True)
    for spec in specs:
        ref, got = whole[spec.name], chunked[spec.name]
        top = ref.esd.evals[-1]
        np.testing.assert_allclose(got.esd.evals, ref.esd.evals, rtol=1e-12, atol=1e-13 * top)
        rand, rand_ref = got.randomized, ref.randomized
        np.testing.assert_allclose(rand.top, rand_ref.top, rtol=1e-10, atol=1e-12 * top)
        assert (rand.total, rand.count) == (rand_ref.total, rand_ref.count)
        # sum(lambda) = ||W||_F^2, computed independently in float64
        frobenius = float((tensors[spec.name].double() ** 2).sum())
        np.testing.assert_allclose(ref.esd.evals.sum(), frobenius, rtol=1e-12)
    for name, tensor in tensors.items():  # inputs untouched (float64 chunks are views)
        assert torch.equal(tensor, copies[name])
