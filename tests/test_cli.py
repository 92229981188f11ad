import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from spectralyzer.cli import main
from spectralyzer.render import FORMATS


@pytest.fixture
def model(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "enc.0.weight": torch.randn(96, 48, generator=g),
            "enc.0.bias": torch.randn(96, generator=g),
            "enc.1.weight": torch.randn(48, 96, generator=g),
            "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        },
        path,
    )
    return path


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_table_output(model):
    result = run("analyze", model)
    assert result.exit_code == 0, result.output
    assert "enc.0.weight" in result.stdout and "conv.weight" in result.stdout
    assert "layers analysed: 3" in result.stdout


def test_json_output(model):
    result = run("analyze", model, "--format", "json", "--randomize")
    data = json.loads(result.stdout)
    names = sorted(layer["name"] for layer in data["layers"])
    assert names == ["conv.weight", "enc.0.weight", "enc.1.weight"]
    assert data["summary"]["num_layers"] == 3 and data["summary"]["randomized"] is True
    conv = next(layer for layer in data["layers"] if layer["name"] == "conv.weight")
    assert conv["num_evals"] == 9 * 8 and conv["layer_type"] == "conv2d"


def test_csv_to_file_and_selection(model, tmp_path):
    out = tmp_path / "out" / "layers.csv"
    result = run(
        "analyze", model, "--format", "csv", "-o", out, "--layers", r"^enc\.", "--types", "linear"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert list(frame["name"]) == ["enc.0.weight", "enc.1.weight"]
    assert frame.loc[0, "shape"] == "96x48"
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_markdown_output(model):
    result = run("analyze", model, "--format", "markdown", "--conv-mode", "unfold")
    assert result.stdout.startswith("| name |")
    assert "- layers analysed: 3" in result.stdout


def test_tail_tests_add_their_columns_only_when_asked(model):
    plain = run("analyze", model, "--format", "json")
    layers = json.loads(plain.stdout)["layers"]
    assert all(r["R_exponential"] is None and r["tail_law"] == "" for r in layers)
    assert json.loads(plain.stdout)["summary"]["tail_laws"] is None
    assert "tail_law" not in run("analyze", model).stdout

    tested = run("analyze", model, "--format", "json", "--tail-tests")
    data = json.loads(tested.stdout)
    laws = {"power_law", "undecided", "exponential", "lognormal", "truncated_power_law"}
    assert all(r["tail_law"] in laws and r["R_truncated"] <= 1e-9 for r in data["layers"])
    assert sum(data["summary"]["tail_laws"].values()) == 3
    table = run("analyze", model, "--tail-tests").stdout
    assert "tail_law" in table and "tail laws (likelihood ratios, p < 0.1)" in table


def _error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_file(tmp_path):
    line = _error_line(run("analyze", tmp_path / "nope.pt"))
    assert "nope.pt" in line


def test_unknown_format(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    line = _error_line(run("analyze", path))
    assert "weights.bin" in line


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    assert "notes.pt" in _error_line(run("analyze", path))


def test_checkpoint_without_matrices(tmp_path):
    path = tmp_path / "biases.safetensors"
    save_file({"a.bias": torch.zeros(10), "b.weight": torch.zeros(3, 2)}, path)
    line = _error_line(run("analyze", path))
    assert "biases.safetensors" in line and "no analysable weight matrix" in line


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(32, 16), path)
    assert "--trust-code" in _error_line(run("analyze", path))
    result = run("analyze", path, "--trust-pickle", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"][0]["name"] == "weight"


def test_refuses_to_overwrite_its_input(model):
    before = model.read_bytes()
    _error_line(run("analyze", model, "--format", "csv", "-o", model))
    assert model.read_bytes() == before


def test_output_to_a_device_is_written_in_place(model):
    devnull = Path(os.devnull)
    before = devnull.stat()
    result = run("analyze", model, "--format", "json", "-o", devnull)
    assert result.exit_code == 0, result.output
    after = devnull.stat()
    assert devnull.is_char_device() and (after.st_ino, after.st_rdev) == (
        before.st_ino,
        before.st_rdev,
    )


def test_refuses_to_write_into_an_input_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"w.weight": torch.randn(32, 16)}, folder / "model.safetensors")
    before = _fingerprint(folder)
    _error_line(run("analyze", folder, "--format", "csv", "-o", folder / "report.csv"))
    assert _fingerprint(folder) == before


def test_bad_option_values(model):
    assert run("analyze", model, "--types", "transformer").exit_code == 2
    assert run("analyze").exit_code == 2  # neither MODEL nor --demo
    bad_regex = run("analyze", model, "--layers", "(")
    assert bad_regex.exit_code == 2 and "regular expression" in bad_regex.output


def test_console_script_runs_demo(minilm_path):
    # the fixture skips only when the demo distribution is not installed (never under CI);
    # a broken demo path is a failure here, not a skip
    result = subprocess.run(
        [sys.executable, "-m", "spectralyzer.cli", "analyze", "--demo", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["num_layers"] == 39


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_run_writes_no_report(model, tmp_path, monkeypatch, request, signum, code):
    from spectralyzer import pipeline  # the command imports run_analysis when it runs

    # A process started in the background (nohup, `cmd &` without job control) inherits
    # SIGINT ignored, and Python then installs no Ctrl-C handler: the tool rightly stays
    # deaf to it. The test is about a run that Ctrl-C can reach, so it says so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    def interrupted(*args, **kwargs):
        signal.raise_signal(signum)  # to this (the main) thread
        for _ in range(500):  # the handler runs at the next bytecode boundary
            time.sleep(0.01)
        raise AssertionError("the signal was not handled")

    monkeypatch.setattr(pipeline, "run_analysis", interrupted)
    out = tmp_path / "report.json"
    result = run("analyze", model, "--format", "json", "-o", out)
    assert result.exit_code == code
    assert "no report was written" in result.stderr
    assert list(tmp_path.iterdir()) == [model]  # neither the report nor a temporary file


def _fingerprint(root):
    """Every path under ``root`` (folders and symlinks too, links not followed): a file's
    size, modification time and SHA-256, a link's target, a folder's presence."""
    prints = {}
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                prints[key] = ("link", os.readlink(path))
            elif path.is_dir():
                prints[key] = ("dir",)
            else:
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                prints[key] = ("file", stat.st_size, stat.st_mtime_ns, digest)
    return prints


TINY_NET = """\
from torch import nn


def build():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
"""


def _write_inputs(inputs):
    """Every kind of input the commands read, under one folder: single files of each format,
    a Hugging Face folder, a sharded one with its index, a hub-cache snapshot whose shard is
    a symlink to a blob, a damaged candidate, an accuracy CSV, a gate policy, and for probe
    a pickled module, a factory's source and weights, batches and an Adam state."""
    g = torch.Generator().manual_seed(1)
    weights = {
        "a.weight": torch.randn(40, 20, generator=g),
        "b.weight": torch.randn(20, 30, generator=g),
    }
    (inputs / "folder").mkdir(parents=True)
    save_file(weights, inputs / "m.safetensors")
    torch.save(weights, inputs / "m.pt")
    np.savez(inputs / "m.npz", **{k: v.numpy() for k, v in weights.items()})
    save_file(weights, inputs / "folder" / "model.safetensors")
    sharded = inputs / "sharded"
    sharded.mkdir()
    shards = {"a.weight": "model-00001-of-00002.safetensors"}
    shards["b.weight"] = "model-00002-of-00002.safetensors"
    for name, shard in shards.items():
        save_file({name: weights[name]}, sharded / shard)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    snapshot = inputs / "hub" / "snapshots" / "x"
    snapshot.mkdir(parents=True)
    (inputs / "hub" / "blobs").mkdir()
    save_file(weights, inputs / "hub" / "blobs" / "abc")
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", "abc"))
    candidate = dict(weights, **{"a.weight": weights["a.weight"] * 4})  # the gate fails it
    save_file(candidate, inputs / "cand.safetensors")
    accuracy = "model,accuracy\nm.safetensors,0.9\nm.pt,0.8\nm.npz,0.7\nfolder,0.6\n"
    (inputs / "acc.csv").write_text(accuracy + "sharded,0.5\nx,0.4\n")
    (inputs / "gate.toml").write_text("max_d_log_norm = 0.05\nalpha_band = [1, 8]\n")

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    torch.save(net, inputs / "net.pt")
    (inputs / "code").mkdir()
    (inputs / "code" / "tinynet.py").write_text(TINY_NET)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, inputs / "net.safetensors")
    torch.save({"inputs": x, "targets": y}, inputs / "batch.pt")
    np.savez(inputs / "batch.npz", inputs=x.numpy(), targets=y.numpy())
    adam = torch.optim.Adam(net.parameters(), lr=0.01)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    adam.step()
    torch.save(adam.state_dict(), inputs / "adam.pt")


MODELS = ["m.safetensors", "m.pt", "m.npz", "folder", "sharded", "hub/snapshots/x"]


def _commands(i, o):
    """(command line, exit code) of every command with every output option; ``i`` and ``o``
    are the input and output folders. Each run writes to outputs of its own."""
    runs = []
    for n, name in enumerate(MODELS):
        for fmt in FORMATS:
            args = ["analyze", i / name, "--format", fmt, "--randomize", "-o", o / f"a{n}.{fmt}"]
            runs.append((args, 0))
        runs.append((["analyze", i / name, "--randomize", "--report", o / f"report{n}"], 0))
    models = [i / name for name in MODELS]
    for fmt in FORMATS:
        runs.append(
            (
                ["compare", *models, "--accuracy", i / "acc.csv", "--format", fmt,
                 "-o", o / f"series.{fmt}", "--layers-out", o / f"depth-{fmt}.csv"],
                0,
            )
        )  # fmt: skip
    runs.append((["compare", *models, "--accuracy", i / "acc.csv", "--report", o / "series"], 0))
    runs.append((["watch", i, "--once", "--interval", "0.05", "--table", o / "run.csv",
                  "--report", o / "run"], 0))  # fmt: skip
    for fmt in FORMATS:
        runs.append((["diff", i / "m.safetensors", i / "cand.safetensors", "--format", fmt,
                      "-o", o / f"diff.{fmt}"], 0))  # fmt: skip
    runs.append((["diff", i / "folder", i / "sharded", "-o", o / "diff-folders.txt"], 0))
    for n, (base, cand, code) in enumerate(
        [("m.safetensors", "cand.safetensors", 1), ("sharded", "hub/snapshots/x", 0)]
    ):
        runs.append(
            (
                ["gate", i / base, i / cand, "--policy", i / "gate.toml",
                 "--junit", o / f"gate{n}.xml", "--markdown", o / f"gate{n}.md",
                 "--report", o / f"gate{n}"],
                code,
            )
        )  # fmt: skip
    for name in ("m.safetensors", "sharded"):
        runs.append((["plot", i / name, "--layer", "weight", "-o", o / f"{name}.png"], 0))
    probe = ["--format", "json", "--optimizer-state", i / "adam.pt", "--trace", "--per-layer"]
    runs.append((["probe", i / "net.pt", "--trust-pickle", "--data", i / "batch.pt",
                  *probe, "-o", o / "probe-pickle.json"], 0))  # fmt: skip
    runs.append((["probe", "tinynet:build", "--weights", i / "net.safetensors",
                  "--data", i / "batch.npz", *probe, "-o", o / "probe-factory.json"], 0))  # fmt: skip
    return runs


COMMANDS = ["analyze", "compare", "diff", "gate", "plot", "probe", "watch"]


@pytest.mark.parametrize("command", COMMANDS)
def test_inputs_are_never_modified(tmp_path, monkeypatch, command):
    """Every input (files, folders, shards, symlinks) is hashed before and after every run."""
    pytest.importorskip("matplotlib")  # --report and plot
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    _write_inputs(inputs)
    monkeypatch.chdir(inputs / "code")  # the probe factory's module is found from the cwd
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # so no __pycache__ beside it
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "step_summary.md"))
    before = _fingerprint(inputs)
    runs = [(args, code) for args, code in _commands(inputs, out) if args[0] == command]
    assert runs
    for args, code in runs:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert _fingerprint(inputs) == before, f"{' '.join(map(str, args))} changed its inputs"
    assert {p.name for p in out.iterdir()}  # the runs wrote their outputs (elsewhere)


def _bad_files(folder):
    """One file (or folder) per kind of bad input, written by the test."""
    g = torch.Generator().manual_seed(2)
    good = folder / "good.safetensors"
    save_file({"w.weight": torch.randn(32, 16, generator=g)}, good)
    data = good.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    files = {}
    files["empty.pt"] = b""
    files["truncated.safetensors"] = data[:-100]
    lying = dict(header, **{"w.weight": dict(header["w.weight"], shape=[64, 16])})
    text = json.dumps(lying).encode()
    files["lying.safetensors"] = len(text).to_bytes(8, "little") + text + data[8 + header_len :]
    files["absurd.safetensors"] = (2**62).to_bytes(8, "little") + b"{" + data[9:]
    files["nonutf8.safetensors"] = (4).to_bytes(8, "little") + b"{\xff\xfe}" + b"\0" * 64
    bad_dtype = dict(header, **{"w.weight": dict(header["w.weight"], dtype="Q7")})
    text = json.dumps(bad_dtype).encode()
    files["dtype.safetensors"] = len(text).to_bytes(8, "little") + text + data[8 + header_len :]
    import zipfile

    with zipfile.ZipFile(folder / "notes.zip", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    files["notes.pt"] = (folder / "notes.zip").read_bytes()
    paths = []
    for name, content in files.items():
        (folder / name).write_bytes(content)
        paths.append(folder / name)
    shards = folder / "sharded"
    shards.mkdir()
    save_file(
        {"w.weight": torch.randn(32, 16, generator=g)}, shards / "model-00001-of-00002.safetensors"
    )
    index = {
        "weight_map": {
            "w.weight": "model-00001-of-00002.safetensors",
            "v.weight": "model-00002-of-00002.safetensors",
        }
    }
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    return paths + [shards]


def test_bad_files_give_one_line_and_exit_2(tmp_path):
    for path in _bad_files(tmp_path):
        result = run("analyze", path)
        line = _error_line(result)
        assert path.name in line, line
        debug = run("analyze", path, "--debug")
        assert debug.exit_code != 0 and debug.exception is not None  # --debug lets it propagate


def test_bare_command_shows_help_and_group_mistakes_give_one_line():
    bare = run()
    assert bare.exit_code == 2 and "Usage:" in bare.output and "Commands:" in bare.output
    assert "error:" not in bare.output
    bogus = run("--bogus")
    assert bogus.exit_code == 2
    assert bogus.stderr.strip() == "spectralyzer: error: No such option '--bogus'. (see --help)"
