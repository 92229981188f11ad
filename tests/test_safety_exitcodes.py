"""Exit codes a CI can trust (issue 11, item 4).

0 success or PASS, 1 only for a failed gate, 2 a bad input or option (one line
naming the file or key), 3 a bug (one line asking to report it; the traceback
only with --debug). Before, anything but SpectralyzerError/ValueError/OSError
printed a traceback and exited 1, which the gate uses for FAIL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spectralyzer
from exitcodes_support import (
    error_line,
    gaussian_layers,
    run,
    write_batch,
    write_checkpoint,
    write_factory,
)
from spectralyzer import errors, pipeline  # analyze imports run_analysis when it runs
from spectralyzer import gate_policy as gate
from spectralyzer.probe_pipeline import ProbeOptions

SRC = Path(spectralyzer.__file__).parents[1]  # the tree under test


@pytest.fixture
def pair(tmp_path):
    base = write_checkpoint(tmp_path / "base.safetensors", gaussian_layers(0))
    other = write_checkpoint(
        tmp_path / "other.safetensors", gaussian_layers(1, names=("c.weight", "d.weight"))
    )
    return base, other


def test_gate_of_disjoint_layer_sets_exits_2_naming_the_candidate(pair):
    base, other = pair
    line = error_line(run("gate", base, other))
    assert str(other) in line and "no layer" in line


def test_diff_of_disjoint_layer_sets_lists_both_sides(pair):
    base, other = pair
    result = run("diff", base, other, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("unmatched") == 4


def test_policy_value_of_the_wrong_type_exits_2_naming_file_and_key(pair, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('max_d_log_norm = "big"\n')
    line = error_line(run("gate", pair[0], pair[0], "--policy", policy))
    assert str(policy) in line and "max_d_log_norm" in line


def test_deeply_nested_toml_exits_2_naming_the_policy_file(pair, tmp_path):
    policy = tmp_path / "deep.toml"
    policy.write_text("include = " + "[" * 5000 + "]" * 5000 + "\n")
    line = error_line(run("gate", pair[0], pair[0], "--policy", policy))
    assert str(policy) in line


def test_integer_python_refuses_to_parse_exits_2_naming_the_policy_file(pair, tmp_path):
    policy = tmp_path / "big.toml"
    policy.write_text("max_d_alpha = " + "9" * 5000 + "\n")  # over Python's 4300 digits
    line = error_line(run("gate", pair[0], pair[0], "--policy", policy))
    assert str(policy) in line


def test_unexpected_exception_exits_3_with_one_line_and_no_traceback(pair, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(pipeline, "run_analysis", broken)
    line = error_line(run("analyze", pair[0]), code=3)
    assert line == (
        "spectralyzer: internal error: ZeroDivisionError: float division by zero; "
        "please report this (rerun with --debug for the traceback)"
    )


def test_debug_shows_the_traceback_and_keeps_the_exit_code(pair, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("d_log_spectral_norm")

    monkeypatch.setattr(gate, "diff", broken)
    result = run("gate", pair[0], pair[0], "--debug")
    assert result.exit_code == 3, result.output
    assert "Traceback" in result.stderr and "KeyError: 'd_log_spectral_norm'" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("spectralyzer: internal error:")
    monkeypatch.undo()
    user_error = run("gate", pair[0], pair[1], "--debug")  # disjoint layers: exit 2
    assert user_error.exit_code == 2 and "Traceback" in user_error.stderr


def test_a_bare_value_error_from_numerical_code_is_internal_not_a_user_error(pair, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("array must not contain infs or NaNs")

    monkeypatch.setattr(pipeline, "run_analysis", broken)
    line = error_line(run("analyze", pair[0]), code=3)
    assert "ValueError: array must not contain infs or NaNs" in line


def test_odd_checkpoint_never_tracebacks_in_a_subprocess(tmp_path):
    """A 3000-deep nested dict (an odd but loadable checkpoint): 2 or 3, one line, never 1."""
    nested: dict = {"weight": torch.zeros(2, 2)}
    for _ in range(3000):
        nested = {"inner": nested}
    path = tmp_path / "deep.pt"
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    torch.save(nested, path)
    done = subprocess.run(
        [sys.executable, "-m", "spectralyzer.cli", "analyze", str(path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode in (2, 3), (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert done.stderr.startswith("spectralyzer:")


@pytest.fixture
def probe_inputs(tmp_path, monkeypatch):
    """(module name, batch path), with the current folder where the factory module lies."""
    name = write_factory(tmp_path)
    monkeypatch.chdir(tmp_path)
    return name, write_batch(tmp_path / "batch.pt")


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        ("asserting", ["AssertionError", "99 features"]),
        ("keying", ["KeyError", "no_such_head"]),
        ("exiting_forward", ["SystemExit 0"]),
    ],
)
def test_model_failing_in_forward_exits_2_naming_model_and_exception(probe_inputs, factory, words):
    name, batch = probe_inputs
    line = error_line(run("probe", f"{name}:{factory}", "--data", batch))
    assert f"{name}:{factory}" in line
    for word in words:
        assert word in line, line


def test_factory_raising_system_exit_0_exits_2_not_0(probe_inputs):
    name, batch = probe_inputs
    line = error_line(run("probe", f"{name}:exits_zero", "--data", batch))
    assert f"{name}:exits_zero" in line and "exited (SystemExit 0)" in line


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (["--slq", "--slq-steps", "0"], "--slq-steps"),
        (["--dataset-size", "0", "--batch-sizes", "4,8"], "--dataset-size"),
        (["--lr", "0.1", "--dataset-size", "0"], "--dataset-size"),
        (["--trace", "--trace-matvecs", "0"], "--trace-matvecs"),
        (["--slq", "--slq-vectors", "0"], "--slq-vectors"),
        (["--slq", "--slq-width", "nan"], "--slq-width"),
        (["--batch-sizes", "4", "--repeats", "0"], "--repeats"),
        (["--momentum", "1.5"], "--momentum"),
        (["--seed", str(2**64)], "--seed"),
        (["--dataset-size", "8"], "--dataset-size"),  # fewer than the batch's 16 samples
    ],
)
def test_probe_options_that_cannot_work_exit_2_naming_the_option(probe_inputs, options, key):
    name, batch = probe_inputs
    line = error_line(run("probe", f"{name}:good", "--data", batch, *options))
    assert f"error: {key}:" in line


def test_probe_options_record_validates_itself_for_library_callers():
    OptionError = getattr(errors, "OptionError", ())  # noqa: N806 - new in this fix
    with pytest.raises(OptionError, match="^slq_steps: "):  # the field; the CLI names the flag
        ProbeOptions(slq_steps=0)
    with pytest.raises(ValueError, match="^dataset_size: "):  # still a ValueError
        ProbeOptions(dataset_size=float("nan"))
    with pytest.raises(OptionError, match="^top_k: "):
        ProbeOptions(top_k=True)


def test_valid_probe_still_exits_0(probe_inputs):
    name, batch = probe_inputs
    result = run("probe", f"{name}:good", "--data", batch, "--format", "json")
    assert result.exit_code == 0, result.output


def test_negative_max_evals_exits_2_naming_the_option(pair):
    assert "error: --max-evals: must be >= 0" in error_line(
        run("analyze", pair[0], "--max-evals", "-3")
    )


def test_gate_fail_is_still_exit_1(tmp_path):
    layers = gaussian_layers(0)
    base = write_checkpoint(tmp_path / "base.safetensors", layers)
    damaged = {name: w * (3.0 if name == "a.weight" else 1.0) for name, w in layers.items()}
    cand = write_checkpoint(tmp_path / "cand.safetensors", damaged)
    result = run("gate", base, cand)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "a.weight" in result.stdout
