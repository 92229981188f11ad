"""Runnable models and data batches for the Hessian probes, and the probe demo's files."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from spectralyzer import demo
from spectralyzer.demo import probe_demo
from spectralyzer.demo_nets import digits_cnn
from spectralyzer.errors import InputError
from spectralyzer.hessian.operator import HessianOperator
from spectralyzer.io.runnable import WEIGHTS_ONLY, load_batch, load_runnable

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

FACTORY = "spectralyzer.demo_nets:digits_cnn"

# ----------------------------------------------------------------------------- helpers


def trained_like_cnn(seed: int = 0) -> nn.Module:
    """A digits CNN with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = digits_cnn()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.num_batches_tracked.fill_(7)
    return model.eval()


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def input_error(call, *args, **kwargs) -> InputError:
    """The InputError ``call`` raises; its message must be one line ``"<path>: <problem>"``."""
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{caught.value.path}: ")
    return caught.value


class MkdirOnUnpickle:
    """Unpickling this object creates a directory: a stand-in for a malicious payload."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.target,))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as f:  # np.savez(path) would append ".npz" to the name
        np.savez(f, **arrays)
    return path


# ----------------------------------------------------------------------------- factory + weights


def test_factory_with_safetensors_weights_round_trips(tmp_path):
    original = trained_like_cnn()
    path = tmp_path / "cnn.safetensors"
    save_file(state(original), path)
    loaded = load_runnable(FACTORY, path)
    assert not loaded.training
    assert torch.equal(outputs(loaded, images()), outputs(original, images()))
    assert int(loaded.bn1.num_batches_tracked) == 7
    assert not torch.equal(outputs(digits_cnn().eval(), images()), outputs(original, images()))


def test_factory_with_wrapped_torch_weights(tmp_path):
    """Checkpoint nesting and DataParallel prefixes are undone, as for analysis."""
    original = trained_like_cnn(seed=3)
    wrapped = {"epoch": 4, "state_dict": {f"module.{k}": v for k, v in state(original).items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    loaded = load_runnable(FACTORY, path)
    assert torch.equal(outputs(loaded, images()), outputs(original, images()))


def test_missing_and_unexpected_keys(tmp_path):
    weights = state(trained_like_cnn())
    del weights["fc2.weight"], weights["fc2.bias"]
    weights["head.weight"] = torch.zeros(3)
    path = tmp_path / "w.safetensors"
    save_file(weights, path)
    problem = input_error(load_runnable, FACTORY, path).problem
    assert problem.startswith(f"does not fit {FACTORY}: ")
    assert "2 tensors missing from the file ('fc2.weight', 'fc2.bias')" in problem
    assert "1 tensor not in the model ('head.weight')" in problem


def test_many_missing_keys_are_summarised(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"other": torch.zeros(2)}, path)
    problem = input_error(load_runnable, FACTORY, path).problem
    assert (
        "tensors missing from the file ('conv1.weight', 'conv1.bias', 'bn1.weight', and " in problem
    )
    assert "1 tensor not in the model ('other')" in problem


def test_shape_mismatch(tmp_path):
    weights = state(trained_like_cnn())
    weights["fc2.weight"] = torch.zeros(5, 32)
    path = tmp_path / "w.safetensors"
    save_file(weights, path)
    problem = input_error(load_runnable, FACTORY, path).problem
    assert "1 shape mismatch (fc2.weight 5x32 in the file, 10x32 in the model)" in problem


def test_missing_weights_file(tmp_path):
    err = input_error(load_runnable, FACTORY, tmp_path / "nope.safetensors")
    assert err.path == str(tmp_path / "nope.safetensors")
    assert err.problem == "no such file or directory"


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_archive_loads_with_trust(tmp_path):
    original = trained_like_cnn()
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(copy.deepcopy(original)), str(path))
    loaded = load_runnable(path, trust_pickle=True)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert not loaded.training
    assert torch.equal(outputs(loaded, images()), outputs(original, images()))


def test_torchscript_archive_with_weights(tmp_path):
    archive = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(trained_like_cnn(seed=1)), str(archive))
    other = trained_like_cnn(seed=2)
    weights = tmp_path / "w.safetensors"
    save_file(state(other), weights)
    loaded = load_runnable(archive, weights, trust_pickle=True)
    assert torch.equal(outputs(loaded, images()), outputs(other, images()))
    bad = state(other)
    bad["conv1.weight"] = torch.zeros(8, 1, 5, 5)
    save_file(bad, weights)
    problem = input_error(load_runnable, archive, weights, trust_pickle=True).problem
    assert "shape mismatch" in problem


# ----------------------------------------------------------------------------- pickled modules


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_module_needs_trust(tmp_path, legacy):
    original = trained_like_cnn()
    path = tmp_path / "model.pt"
    torch.save(original, path, _use_new_zipfile_serialization=not legacy)
    problem = input_error(load_runnable, path).problem
    assert problem.startswith("needs arbitrary code execution")
    assert "--trust-code" in problem
    loaded = load_runnable(path, trust_pickle=True)
    assert not loaded.training
    assert torch.equal(outputs(loaded, images()), outputs(original, images()))


def test_trusted_pickled_module_in_a_wrapper_with_weights(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": trained_like_cnn(seed=1).train(), "epoch": 3}, path)
    other = trained_like_cnn(seed=2)
    weights = tmp_path / "w.safetensors"
    save_file(state(other), weights)
    loaded = load_runnable(path, weights, trust_pickle=True)
    assert not loaded.training
    assert torch.equal(outputs(loaded, images()), outputs(other, images()))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, legacy):
    target = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save(
        {"w": torch.ones(2), "x": MkdirOnUnpickle(target)},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    assert "needs arbitrary code execution" in input_error(load_runnable, path).problem
    assert "needs arbitrary code execution" in input_error(load_batch, path).problem
    assert not target.exists()


@pytest.mark.parametrize("kind", ["torch", "safetensors", "npz"])
def test_weights_only_file_as_model(tmp_path, kind):
    weights = state(trained_like_cnn())
    path = tmp_path / f"weights.{kind}"
    if kind == "torch":
        torch.save({"state_dict": weights}, path)
    elif kind == "safetensors":
        save_file(weights, path)
    else:
        write_npz(path, **{k: v.numpy() for k, v in weights.items()})
    assert input_error(load_runnable, path).problem == WEIGHTS_ONLY


def test_pickled_non_module_is_not_runnable(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    assert "not a runnable model (holds type list" in input_error(load_runnable, path).problem


def test_unknown_model_name():
    err = input_error(load_runnable, "no/such/model.pt")
    assert err.path == "no/such/model.pt"
    assert err.problem.startswith("no such file")


# ----------------------------------------------------------------------------- bad factories

FACTORIES = """
import torch
NOT_CALLABLE = 3
def returns_int():
    return 3
def raises():
    raise ValueError("boom\\nsecond line")
def good():
    return torch.nn.Linear(3, 2)
class Nets:
    @staticmethod
    def small():
        return torch.nn.Linear(3, 2)
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """Modules in the current directory (as a user's own code would be)."""
    (tmp_path / "rt_factories.py").write_text(FACTORIES)
    (tmp_path / "rt_broken.py").write_text("raise RuntimeError('import failed')\n")
    (tmp_path / "rt_needs_dep.py").write_text("import rt_no_such_dependency\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("rt_factories", "rt_broken", "rt_needs_dep"):
        sys.modules.pop(name, None)


def test_factory_from_current_directory(factories):
    path_before = list(sys.path)
    assert isinstance(load_runnable("rt_factories:good"), nn.Linear)
    assert isinstance(load_runnable("rt_factories:Nets.small"), nn.Linear)
    assert sys.path == path_before


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("rt_no_such_module:f", "no module named 'rt_no_such_module'"),
        ("spectralyzer.no_such_module:f", "no module named 'spectralyzer.no_such_module'"),
        ("rt_needs_dep:f", "cannot import 'rt_needs_dep' (ModuleNotFoundError: No module"),
        ("rt_broken:f", "importing 'rt_broken' failed (RuntimeError: import failed)"),
        ("rt_factories:missing", "module 'rt_factories' has no attribute 'missing'"),
        ("rt_factories:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (type int)"),
        ("rt_factories:returns_int", "the factory returned type int, not a torch.nn.Module"),
        ("rt_factories:raises", "the factory raised ValueError: boom"),
        ("rt_factories:.x", "module 'rt_factories' has no attribute '.x'"),
        (".rt_factories:good", "'.rt_factories' is not a module name"),
    ],
)
def test_bad_factories(factories, spec, problem):
    err = input_error(load_runnable, spec)
    assert err.path == spec
    assert err.problem.startswith(problem), err.problem


# ----------------------------------------------------------------------------- batches


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return images(n), torch.arange(n) % 10


@pytest.mark.parametrize("names", [("inputs", "targets"), ("x", "y")])
def test_torch_dict_batch(tmp_path, names):
    inputs, targets = batch()
    path = tmp_path / "batch.pt"
    torch.save({names[0]: inputs, names[1]: targets, "note": "extra entries are fine"}, path)
    got_inputs, got_targets = load_batch(path)
    assert torch.equal(got_inputs, inputs) and got_inputs.dtype == torch.float32
    assert torch.equal(got_targets, targets) and got_targets.dtype == torch.int64


@pytest.mark.parametrize("kind", [tuple, list])
def test_torch_pair_batch(tmp_path, kind):
    inputs, targets = batch()
    path = tmp_path / "batch.bin"  # the content decides, not the name
    torch.save(kind([inputs, targets]), path)
    got_inputs, got_targets = load_batch(path)
    assert torch.equal(got_inputs, inputs) and torch.equal(got_targets, targets)


@pytest.mark.parametrize("names", [("inputs", "targets"), ("x", "y")])
def test_npz_batch(tmp_path, names):
    inputs, targets = batch()
    path = write_npz(
        tmp_path / "batch.dat", **{names[0]: inputs.numpy(), names[1]: targets.numpy()}
    )
    got_inputs, got_targets = load_batch(path)
    assert torch.equal(got_inputs, inputs) and torch.equal(got_targets, targets)


def test_compressed_npz_batch(tmp_path):
    inputs, targets = batch()
    path = tmp_path / "batch.npz"
    np.savez_compressed(path, inputs=inputs.numpy(), targets=targets.numpy())
    got_inputs, got_targets = load_batch(path)
    assert torch.equal(got_inputs, inputs) and torch.equal(got_targets, targets)


def test_batch_errors(tmp_path):
    inputs, targets = batch()
    assert input_error(load_batch, tmp_path / "nope.pt").problem == "no such file or directory"
    (tmp_path / "text.pt").write_text("hello, world\n")
    assert "not a recognised batch file" in input_error(load_batch, tmp_path / "text.pt").problem
    (tmp_path / "empty.pt").write_bytes(b"")
    assert input_error(load_batch, tmp_path / "empty.pt").problem == "empty file"
    assert "is a folder" in input_error(load_batch, tmp_path).problem

    torch.save({"images": inputs, "labels": targets}, tmp_path / "keys.pt")
    problem = input_error(load_batch, tmp_path / "keys.pt").problem
    assert problem.endswith("found 'images', 'labels'")
    write_npz(tmp_path / "keys.npz", inputs=inputs.numpy())
    assert "found 'inputs'" in input_error(load_batch, tmp_path / "keys.npz").problem

    torch.save((inputs, targets[:4]), tmp_path / "len.pt")
    problem = input_error(load_batch, tmp_path / "len.pt").problem
    assert problem == "inputs and targets have different numbers of samples (6 and 4)"
    write_npz(tmp_path / "len.npz", x=inputs.numpy()[:5], y=targets.numpy())
    assert "(5 and 6)" in input_error(load_batch, tmp_path / "len.npz").problem

    torch.save((inputs[:0], targets[:0]), tmp_path / "empty_batch.pt")
    assert input_error(load_batch, tmp_path / "empty_batch.pt").problem == "empty batch (0 samples)"
    torch.save((torch.tensor(1.0), targets), tmp_path / "scalar.pt")
    assert "inputs is a scalar" in input_error(load_batch, tmp_path / "scalar.pt").problem
    torch.save((inputs, targets, targets), tmp_path / "three.pt")
    assert (
        "tuple of 3 items; expected (inputs, targets)"
        in input_error(load_batch, tmp_path / "three.pt").problem
    )
    torch.save(inputs, tmp_path / "tensor.pt")
    assert "holds type torch.Tensor" in input_error(load_batch, tmp_path / "tensor.pt").problem
    torch.save({"inputs": inputs, "targets": "labels"}, tmp_path / "str.pt")
    assert (
        "targets has type str, not an array" in input_error(load_batch, tmp_path / "str.pt").problem
    )

    nan = inputs.clone()
    nan[2, 0, 3, 3] = float("nan")
    torch.save((nan, targets), tmp_path / "nan.pt")
    assert "inputs contain NaN" in input_error(load_batch, tmp_path / "nan.pt").problem


def test_non_numeric_npz_arrays(tmp_path):
    inputs, _ = batch()
    words = np.array(["a", "b", "c", "d", "e", "f"])
    write_npz(tmp_path / "str.npz", inputs=inputs.numpy(), targets=words)
    assert input_error(load_batch, tmp_path / "str.npz").problem == "array 'targets' is not numeric"
    objects = np.array([{"a": 1}] * 6, dtype=object)
    write_npz(tmp_path / "obj.npz", inputs=inputs.numpy(), targets=objects)
    assert "need pickle" in input_error(load_batch, tmp_path / "obj.npz").problem


def test_checkpoint_formats_that_are_not_batches(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    assert "is a torchscript file, not a batch" in input_error(load_batch, path).problem


# ----------------------------------------------------------------------------- the probe demo


def test_probe_demo_files_and_accuracy():
    factory, weights, batch_path, adam = probe_demo()
    assert factory == FACTORY
    assert weights.is_file() and batch_path.is_file() and adam.is_file()
    info = json.loads((weights.parent / "info.json").read_text())
    assert info["test_accuracy"] >= 0.95
    assert info["split"] == {"train": 1297, "test": 500, "batch": 512}
    model = load_runnable(factory, weights)
    inputs, targets = load_batch(batch_path)
    assert inputs.shape == (512, 1, 8, 8) and inputs.dtype == torch.float32
    assert targets.shape == (512,) and targets.dtype == torch.int64
    assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 1.0
    accuracy = (outputs(model, inputs).argmax(1) == targets).double().mean().item()
    assert accuracy == pytest.approx(info["batch_accuracy"], abs=1e-6)


def test_probe_demo_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "PROBE_DEMO_DIR", tmp_path)
    err = input_error(probe_demo)
    assert err.path == "--demo"
    assert "cnn.safetensors, batch.npz and adam.pt" in err.problem


def test_digits_cnn_architecture():
    model = digits_cnn()
    assert sum(p.numel() for p in model.parameters()) == 80 + 16 + 1168 + 8224 + 330 == 9818
    assert [name for name, _ in model.named_parameters()] == [
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip
    assert outputs(model.eval(), images(3)).shape == (3, 10)


# ----------------------------------------------------------------------------- Hessian on TorchScript


def test_hessian_of_torchscript_copy_matches_plain_module(tmp_path):
    original = trained_like_cnn()
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(copy.deepcopy(original)), str(path))
    scripted = load_runnable(path, trust_pickle=True).double()
    plain = original.double()
    inputs = images(32).double()
    targets = torch.arange(32) % 10
    loss_fn = nn.functional.cross_entropy
    h_plain = HessianOperator(plain, loss_fn, inputs, targets)
    h_script = HessianOperator(scripted, loss_fn, inputs, targets)
    assert h_plain.names == h_script.names
    assert h_plain.loss == pytest.approx(h_script.loss, abs=1e-12)
    v = torch.randn(h_plain.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv_plain, hv_script = h_plain.matvec(v), h_script.matvec(v)
    assert float(hv_plain.norm()) > 1e-3  # not trivially zero
    torch.testing.assert_close(hv_script, hv_plain, atol=1e-10, rtol=0)
    torch.testing.assert_close(h_script.gradient, h_plain.gradient, atol=1e-10, rtol=0)


def test_torch_batch_named_safetensors_is_read_by_its_content(tmp_path):
    """torch.load would hand any path ending in .safetensors to safetensors; the batch
    loader shares the checkpoint loader's way round that."""
    path = tmp_path / "batch.safetensors"
    torch.save({"inputs": torch.randn(4, 3), "targets": torch.arange(4)}, path)
    inputs, targets = load_batch(path)
    assert inputs.shape == (4, 3) and targets.tolist() == [0, 1, 2, 3]
