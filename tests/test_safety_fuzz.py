"""Fuzzing the policy file and every command's options (issue 11, final bullet).

Whatever a user writes, a command ends with exit code 0, 1 (only ``gate``'s
FAIL) or 2 (one line naming what is wrong), never with a traceback. Exit 3
(a bug of spectralyzer) fails these tests too: each one found is a bug to fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from exitcodes_support import gaussian_layers, write_batch, write_checkpoint, write_factory
from spectralyzer.cli import main
from spectralyzer.fit.phases import PHASES

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Options the fuzz leaves out: --debug re-raises by design, --demo runs the bundled
#: demos (slow, and they ignore the other inputs), --help/--version print and exit 0.
# --ray: a garbage value that reads as HOST:PORT would have Ray try to connect for a minute
# (its values are checked in test_fanout)
SKIPPED = {"--debug", "--demo", "--help", "--version", "--ray"}
POLICY_KEYS = (
    "max_d_log_spectral_norm",
    "max_d_log_norm",
    "max_d_log_stable_rank",
    "max_d_alpha",
    "alpha_band",
    "fail_on_phases",
    "fail_on_new_traps",
    "fail_on_unmatched",
    "include",
    "exclude",
)


# ----------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path | str]:
    """Tiny checkpoints, a policy, a CSV, a runnable factory with weights, batch and Adam state."""
    folder = tmp_path_factory.mktemp("fuzz_inputs")
    layers = gaussian_layers(0)
    base = write_checkpoint(folder / "base.safetensors", layers)
    cand = write_checkpoint(
        folder / "cand.safetensors", {**layers, "a.weight": layers["a.weight"] * 1.5}
    )
    nan = layers["b.weight"].copy()
    nan[2] = np.nan
    broken = write_checkpoint(folder / "nan.safetensors", {**layers, "b.weight": nan})
    other = write_checkpoint(folder / "other.safetensors", gaussian_layers(1, names=("c.w",)))
    (folder / "policy.toml").write_text("max_d_log_norm = 0.2\n")
    (folder / "accuracy.csv").write_text("model,accuracy\nbase.safetensors,0.9\n")
    name = write_factory(folder)
    sys.path.insert(0, str(folder))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(folder))
    net = module.good()
    save_file(net.state_dict(), folder / "net.safetensors")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "adam.pt")
    (folder / "empty_dir").mkdir()
    return {
        "folder": folder,
        "base": base,
        "cand": cand,
        "nan": broken,
        "other": other,
        "policy": folder / "policy.toml",
        "accuracy": folder / "accuracy.csv",
        "factory": f"{name}:good",
        "factories": [
            f"{name}:{f}" for f in ("asserting", "keying", "exits_zero", "exiting_forward")
        ],
        "weights": folder / "net.safetensors",
        "batch": write_batch(folder / "batch.pt"),
        "adam": folder / "adam.pt",
        "missing": folder / "missing.pt",
        "dir": folder / "empty_dir",
    }


@contextmanager
def fresh_folder(parent: Path) -> Iterator[Path]:
    """Run in a new empty folder: relative outputs land there and nowhere else."""
    here = os.getcwd()
    folder = Path(tempfile.mkdtemp(dir=parent))
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(here)


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, env={"GITHUB_STEP_SUMMARY": None})


def assert_clean_exit(result: Result, command: str) -> None:
    """Exit 0/1/2 (1 for gate only), no traceback, and a failure says why in one line."""
    event(f"exit {result.exit_code}")
    allowed = {0, 1, 2} if command == "gate" else {0, 2}
    assert result.exit_code in allowed, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spectralyzer: error:"), result.stderr


# ----------------------------------------------------------------------------- policies

REGEXES = ["weight", "^a\\.", ".*", "(", "[", "a|", "(?P<", "\\", "", "no_such_layer"]
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 0.0, 0.05, 2.0, 6.0, -1.0]),
    st.text(max_size=12),
    st.sampled_from([*PHASES, "unknown", "true", "false", "no", "yes", *REGEXES]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)


def toml_value(value: object) -> str:
    """TOML for a value of ``values`` (strings as JSON, which TOML reads, or rejects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    items = (f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + ", ".join(items) + " }"


@st.composite
def policy_documents(draw) -> str:
    """A policy file: known keys and junk keys with values of any type, sometimes broken."""
    known = st.sampled_from(POLICY_KEYS)
    keys = st.one_of(known, known, known, st.text(min_size=1, max_size=10))  # mostly known
    entries = draw(st.dictionaries(keys, values, max_size=5))
    lines = [f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in entries.items()]
    extra = draw(st.sampled_from(["none"] * 5 + ["junk", "deep", "table", "duplicate", "big"]))
    if extra == "junk":
        lines.append(draw(st.text(max_size=20)))
    elif extra == "deep":
        depth = draw(st.sampled_from([10, 400, 3000, 6000]))
        lines.append(f"{draw(st.sampled_from(POLICY_KEYS))} = " + "[" * depth + "]" * depth)
    elif extra == "table":
        lines.append(f"[{draw(st.sampled_from(POLICY_KEYS))}]\nx = 1")
    elif extra == "big":  # Python refuses integers of more than 4300 digits
        digits = draw(st.sampled_from([30, 400, 4300, 5000]))
        lines.append(f"{draw(st.sampled_from(POLICY_KEYS))} = {'9' * digits}")
    elif extra == "duplicate" and lines:
        lines.append(lines[0])
    return "\n".join(lines) + "\n"


@FUZZ
@given(document=policy_documents(), damaged=st.booleans())
def test_any_policy_file_exits_0_1_or_2_without_traceback(inputs, document, damaged):
    with fresh_folder(inputs["folder"]) as folder:
        policy = folder / "policy.toml"
        policy.write_text(document, encoding="utf-8")
        candidate = inputs["cand"] if damaged else inputs["base"]
        result = invoke(["gate", str(inputs["base"]), str(candidate), "--policy", str(policy)])
    assert_clean_exit(result, "gate")


# ----------------------------------------------------------------------------- options

GARBAGE = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", "-1", "0", "nan", "inf", "-inf", "1e309", "2,4", "a,b", ",", " "]),
)
INTS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2"]),
    st.integers(min_value=-3, max_value=40).map(str),
    st.sampled_from([str(2**63), str(-(2**70)), "1e3"]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(["0", "1", "0.5", "0.99", "100", "-1", "1e-300", "1e300"]),
)


def path_values(inputs: dict, name: str) -> st.SearchStrategy[str]:
    """Values for options naming files: outputs stay inside the run's own folder."""
    existing = [inputs[k] for k in ("base", "cand", "batch", "policy", "accuracy", "adam")]
    readable = st.sampled_from([str(p) for p in (*existing, inputs["missing"], inputs["dir"])])
    if name in ("--output", "--layers-out", "--junit", "--markdown"):
        return st.sampled_from(
            ["out.txt", "sub/out.json", "-", ".", "out.png", str(inputs["base"]), ""]
        )
    if name == "--report":
        return st.sampled_from(["report", "sub/report", ".", "", str(inputs["dir"])])
    if name == "--weights":
        return st.one_of(st.just(str(inputs["weights"])), readable)
    return readable


def option_values(inputs: dict, param: click.Option, name: str) -> st.SearchStrategy[str]:
    """Plausible and garbage values for one option, from its click type and name."""
    kind = param.type
    if isinstance(kind, click.Choice):
        valid = st.sampled_from([str(c) for c in kind.choices])
        return st.one_of(valid, valid, valid, GARBAGE)  # mostly valid: reach the work
    if isinstance(kind, click.types.IntParamType):
        return st.one_of(INTS, INTS, GARBAGE)
    if isinstance(kind, click.types.FloatParamType):
        return st.one_of(FLOATS, FLOATS, GARBAGE)
    if isinstance(kind, click.Path) or name in (
        "--output",
        "--layers-out",
        "--junit",
        "--markdown",
        "--report",
    ):
        return path_values(inputs, name)
    if name in ("--layers", "--exclude", "--layer"):
        return st.one_of(st.sampled_from(REGEXES), GARBAGE)
    if name == "--types":
        return st.one_of(st.sampled_from(["linear", "conv", "embedding", "linear,conv"]), GARBAGE)
    if name == "--labels":
        return st.one_of(st.sampled_from(["x", "x,y", "x,x", "x,y,z"]), GARBAGE)
    if name == "--batch-sizes":
        return st.one_of(st.sampled_from(["2,4", "4,8,16", "1", "16", "64"]), GARBAGE)
    return GARBAGE


def option_choices(command: str) -> list[tuple[str, click.Option]]:
    """Every option spelling of ``command`` (``--randomize`` and ``--no-randomize``)."""
    choices = []
    for param in main.commands[command].params:
        if not isinstance(param, click.Option):
            continue
        for spelling in [*param.opts, *param.secondary_opts]:
            if spelling not in SKIPPED and not re.fullmatch(r"-\w", spelling):
                choices.append((spelling, param))
    return choices


@st.composite
def command_lines(draw, inputs: dict, command: str) -> list[str]:
    """Valid positional arguments (sometimes not), then 0-5 options with random values."""
    models = [str(inputs["base"]), str(inputs["cand"])]
    positional = {
        "analyze": [models[0]],
        "plot": [models[0]],
        "compare": models,
        "diff": models,
        "gate": models,
        "probe": [str(inputs["factory"]), "--data", str(inputs["batch"])],
    }[command]
    if draw(st.integers(0, 3)) == 0:  # one in four: a positional argument is odd or wrong
        spot = 0 if command == "probe" else draw(st.integers(0, len(positional) - 1))
        odd = ["missing", "dir", "batch", "nan", "other"]
        positional = list(positional)
        positional[spot] = draw(
            st.sampled_from(
                inputs["factories"] if command == "probe" else [str(inputs[k]) for k in odd]
            )
        )
    args = list(positional)
    if command == "plot":
        args += ["-o", "plot.png", "--layer", "weight"]
    for spelling, param in draw(st.lists(st.sampled_from(option_choices(command)), max_size=5)):
        args.append(spelling)
        if not param.is_flag:
            args.append(draw(option_values(inputs, param, param.opts[-1])))
    return args


COMMANDS = ["analyze", "compare", "diff", "gate", "plot", "probe"]
EXAMPLES = {"plot": FUZZ.max_examples * 3 // 8, "probe": FUZZ.max_examples * 3 // 4}  # slower ones


@pytest.mark.parametrize("command", COMMANDS)
def test_any_options_exit_0_1_or_2_without_traceback(inputs, command):
    @settings(FUZZ, max_examples=EXAMPLES.get(command, FUZZ.max_examples))
    @given(data=st.data())
    def fuzz(data):
        args = data.draw(command_lines(inputs, command), label="args")
        with fresh_folder(inputs["folder"]):
            result = invoke([command, *args])
        assert_clean_exit(result, command)

    with _factory_importable(inputs["folder"]):
        fuzz()


@contextmanager
def _factory_importable(folder: Path) -> Iterator[None]:
    """Each run has its own current folder; the factory module must still import."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
