"""TorchScript archives are read without running their code (issue 11, item 2).

``torch.jit.load`` runs a scripted class's ``__setstate__`` while loading, and the
format is sniffed from content, so an archive named ``weights.pt``,
``model.safetensors``, a Hugging Face shard or ``probe --weights`` ran its code:
a print forged a line of ``--format json``, ``torch.from_file`` wrote files, an
endless loop hung the tool. Each case runs the real CLI in a subprocess with a
timeout (a hang fails the test instead of the suite). The reader's tensors are
checked against ``torch.jit.load(path).state_dict()`` (names, order, values).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Tuple  # noqa: UP035 - TorchScript needs typing.Tuple in annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from helpers import package_dir
from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.io import open_checkpoint
from spectralyzer.io.sniff import detect_format

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

MARKER = "SPECTRALYZER-TORCHSCRIPT-MARKER"

#: A hang shows as a timeout: generous for a loaded machine, small enough to fail fast.
TIMEOUT = 20

IN, OUT, SAMPLES = 64, 48, 32


# ----------------------------------------------------------------------------- payloads


class PrintsAndWrites(nn.Module):
    """``__setstate__`` prints the marker and writes 16 bytes to ``target`` (torch.from_file)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.blob = torch.zeros(1, dtype=torch.uint8)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:  # noqa: UP006
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:  # noqa: UP006
        self.target = state[0]
        self.training = state[1]
        print("SPECTRALYZER-TORCHSCRIPT-MARKER")
        self.blob = torch.from_file(self.target, shared=True, size=16, dtype=torch.uint8)
        self.blob.fill_(65)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LoopsForever(nn.Module):
    """``__setstate__`` never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.spins = 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:  # noqa: UP006
        return (self.spins, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]) -> None:  # noqa: UP006
        self.spins = state[0]
        self.training = state[1]
        while self.spins >= 0:
            self.spins = (self.spins + 1) % 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RestoresItsWeight(nn.Module):
    """A layer whose parameter is set by its own ``__setstate__`` (which also prints)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(OUT, IN))

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:  # noqa: UP006
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:  # noqa: UP006
        print("SPECTRALYZER-TORCHSCRIPT-MARKER")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class Carrier(nn.Module):
    """An ordinary layer ``fc`` beside the payload: the tensors analyze must report."""

    def __init__(self, payload: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(IN, OUT)
        self.payload = payload

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.payload(self.fc(x))


FACTORY_SOURCE = f"""
from torch import nn

class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear({IN}, {OUT})

    def forward(self, x):
        return self.fc(x)

def make():
    return Plain()
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, object]:
    """One archive per payload, the clean weights they carry, and where a write would land."""
    folder = tmp_path_factory.mktemp("ts_archives")
    torch.manual_seed(0)
    target = folder / "written_by_the_archive.bin"
    out: dict[str, object] = {"folder": folder, "target": target}
    for kind, payload in (("writes", PrintsAndWrites(str(target))), ("loops", LoopsForever())):
        model = Carrier(payload)
        path = folder / f"{kind}.pt"
        torch.jit.script(model).save(str(path))
        out[kind] = path
        out[f"{kind}_fc"] = model.fc.weight.detach().clone()
    assert not target.exists()
    return out


def place(archive: Path, where: str, folder: Path) -> Path:
    """A copy of ``archive`` under the name (or in the folder layout) a user would give."""
    folder.mkdir(parents=True, exist_ok=True)
    if where == "hf-shard":
        (folder / "hf").mkdir()
        (folder / "hf" / "model.safetensors").write_bytes(archive.read_bytes())
        return folder / "hf"
    path = folder / where
    path.write_bytes(archive.read_bytes())
    return path


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; a hang is a test failure after TIMEOUT seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "spectralyzer.cli", *map(str, args)]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, cwd=cwd, env=env, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{' '.join(command[3:])} did not finish in {TIMEOUT} s (the archive's loop ran)"
        )


def run(capfd, *args: object) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, stderr (Python's and the process's fds)."""
    result = CliRunner().invoke(main, list(map(str, args)))
    fds = capfd.readouterr()
    return result.exit_code, result.stdout + fds.out, result.stderr + fds.err


def assert_fc_only(stdout: str, weight: torch.Tensor) -> None:
    """JSON of analyze: exactly the carrier's fc.weight, its top eigenvalue that of W^T W."""
    layers = json.loads(stdout)["layers"]
    assert [(row["name"], row["shape"]) for row in layers] == [("fc.weight", [OUT, IN])]
    top = torch.linalg.svdvals(weight.double())[0].item() ** 2
    assert layers[0]["lambda_max"] == pytest.approx(top, rel=1e-4)


def assert_untouched(archives: dict, *outputs: str) -> None:
    assert all(MARKER not in text for text in outputs), "the archive's code printed"
    assert not archives["target"].exists(), "the archive's code wrote a file"


PLACES = ["weights.pt", "model.safetensors", "hf-shard"]


# ----------------------------------------------------------------------------- analyze, diff, gate, compare


@pytest.mark.parametrize("where", PLACES)
def test_analyze_does_not_run_a_torchscript_archive(archives, tmp_path, capfd, where):
    model = place(archives["writes"], where, tmp_path)
    code, out, err = run(capfd, "analyze", model, "--format", "json", "--no-randomize")
    assert code == 0, err
    assert_untouched(archives, out, err)
    assert_fc_only(out, archives["writes_fc"])


def test_diff_gate_compare_do_not_run_a_torchscript_archive(archives, tmp_path, capfd):
    models = [place(archives["writes"], where, tmp_path / where) for where in PLACES]
    code, out, err = run(capfd, "diff", models[0], models[1], "--format", "json")
    assert code == 0, err
    assert [row["name"] for row in json.loads(out)["layers"]] == ["fc.weight"]
    code, out, err = run(capfd, "gate", models[1], models[2])
    assert (code, out) == (0, "spectralyzer gate: PASS (0 of 1 layers failed)\n"), err
    code, out, err = run(capfd, "compare", *models, "--format", "json")
    assert code == 0, err
    assert_untouched(archives, out, err)


def test_analyze_does_not_hang_in_a_torchscript_archive(archives, tmp_path):
    """An endless ``__setstate__`` in three places at once (compare reads them all)."""
    models = [place(archives["loops"], where, tmp_path / where) for where in PLACES]
    result = cli("compare", *models, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["models"]) == 3


# ----------------------------------------------------------------------------- probe


def write_probe_inputs(folder: Path) -> Path:
    (folder / "ts_safety_factory.py").write_text(FACTORY_SOURCE)
    batch = folder / "batch.pt"
    torch.save({"inputs": torch.randn(SAMPLES, IN), "targets": torch.arange(SAMPLES) % OUT}, batch)
    return batch


PROBE_OPTIONS = ("--format", "json", "--steps", 8, "--top-k", 2)


def test_probe_weights_from_a_torchscript_archive_do_not_run_it(archives, tmp_path, capfd):
    weights = place(archives["writes"], "weights.pt", tmp_path)
    batch = write_probe_inputs(tmp_path)
    args = ("ts_safety_factory:make", "--weights", weights, "--data", batch, *PROBE_OPTIONS)
    result = cli("probe", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_untouched(archives, result.stdout, result.stderr)
    assert json.loads(result.stdout)["samples"] == SAMPLES
    looping = place(archives["loops"], "weights.pt", tmp_path / "loops")
    result = cli("probe", *args[:2], looping, *args[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_probe_of_a_torchscript_model_needs_trust_code(archives, tmp_path, capfd):
    model = place(archives["writes"], "model.pt", tmp_path)
    batch = write_probe_inputs(tmp_path)
    code, out, err = run(capfd, "probe", model, "--data", batch, *PROBE_OPTIONS)
    assert code == 2, out
    assert_untouched(archives, out, err)
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"spectralyzer: error: {model}: ")
    assert "TorchScript" in line and "runs its own code" in line and "--trust-code" in line


def test_a_layer_restored_by_its_own_code_is_refused_unless_trusted(tmp_path, capfd):
    path = tmp_path / "weights.pt"
    torch.jit.script(Carrier(RestoresItsWeight())).save(str(path))
    code, out, err = run(capfd, "analyze", path, "--format", "json", "--no-randomize")
    assert code == 2, out
    assert MARKER not in out + err
    (line,) = err.strip().splitlines()
    assert "__setstate__" in line and "RestoresItsWeight" in line and "--trust-code" in line
    code, out, err = run(capfd, "analyze", path, "--trust-code", "--no-randomize")
    assert code == 0, err
    assert "payload.weight" in out


# ----------------------------------------------------------------------------- the reader


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("scale", torch.linspace(0, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)) * self.scale[None, :, None]


class Zoo(nn.Module):
    """Nested submodules, a ModuleList, conv + linear + LSTM, buffers, a tied submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2, bias=False))
        self.rnn = nn.LSTM(4, 5, num_layers=2)
        self.tied = self.head[0]
        self.register_buffer("steps", torch.tensor(7))
        self.register_buffer("cache", torch.zeros(3), persistent=False)
        self.plain = torch.ones(2)  # a tensor attribute, not a buffer: not in state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.nn.functional.pad(block(x), (1, 1))
        y, _ = self.rnn(x.transpose(1, 2))
        return self.head(y) + self.tied(y).sum() + self.plain.sum()


MODELS = {
    "zoo": Zoo,
    "zoo-half": lambda: Zoo().half(),
    "conv2d": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Flatten(), nn.Linear(8, 2)),
    "linear": lambda: nn.Linear(3, 2),
}


def read_all(path: Path, trust_code: bool = False) -> dict[str, torch.Tensor]:
    with open_checkpoint(path, trust_pickle=trust_code) as ckpt:
        return {info.name: ckpt.load(info.name) for info in ckpt.tensors()}


def assert_same_as_jit_load(path: Path) -> None:
    ours = read_all(path)
    theirs = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("name", list(MODELS))
def test_reader_equals_jit_load_state_dict(tmp_path, name):
    torch.manual_seed(1)
    path = tmp_path / "model.pt"
    torch.jit.script(MODELS[name]()).save(str(path))
    assert_same_as_jit_load(path)


def test_reader_equals_jit_load_on_silero_vad():
    assert_same_as_jit_load(package_dir("silero_vad") / "data" / "silero_vad.jit")


def test_shared_submodule_is_listed_under_each_name(tmp_path):
    path = tmp_path / "model.pt"
    model = Zoo()
    torch.jit.script(model).save(str(path))
    tensors = read_all(path)
    assert torch.equal(tensors["tied.weight"], model.head[0].weight.detach())
    assert "plain" not in tensors and "cache" in tensors  # TorchScript keeps every buffer


def test_archive_naming_another_global_is_refused_before_it_runs(tmp_path):
    """A data.pkl edited to call os.system: refused by name, with the path, nothing called."""
    clean = tmp_path / "clean.pt"
    torch.jit.script(nn.Linear(3, 2)).save(str(clean))
    touched = tmp_path / "touched"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_System(f"touch {touched}"), protocol=2)
            dst.writestr(item, data)
    assert detect_format(evil) == "torchscript"
    with pytest.raises(InputError) as caught:
        read_all(evil)
    message = str(caught.value)
    assert message.startswith(f"{evil}: ") and "'posix.system'" in message
    assert "--trust-code" in message and "\n" not in message
    assert not touched.exists()


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_archive_is_not_written_through_its_mapped_tensors(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.script(nn.Linear(3, 2)).save(str(path))
    before = path.read_bytes()
    read_all(path)["weight"].add_(1.0)
    assert path.read_bytes() == before
