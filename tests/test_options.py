"""Library and command line agree on every analysis option (issue 12).

For each option of :func:`spectralyzer.analyze`, the library and ``spectralyzer
analyze --format json`` on the same small checkpoint give the same JSON; a bad
value raises an OptionError naming the field in the library and exits 2 naming
the flag on the command line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectralyzer
from spectralyzer.cli import main
from spectralyzer.errors import OptionError

MODEL = Path(__file__).parents[1] / "data" / "mlp" / "epoch_30.safetensors"

#: (library keyword arguments, the same on the command line)
AGREEING = {
    "layers": ({"layers": r"^[02]\."}, ["--layers", r"^[02]\."]),
    "exclude": ({"exclude": r"^4\."}, ["--exclude", r"^4\."]),
    "types": ({"types": ("linear",)}, ["--types", "linear"]),
    "min_evals": ({"min_evals": 20}, ["--min-evals", "20"]),
    "max_evals": ({"max_evals": 100}, ["--max-evals", "100"]),
    "max_evals_0": ({"max_evals": 0}, ["--max-evals", "0"]),
    "conv_mode": ({"conv_mode": "unfold"}, ["--conv-mode", "unfold"]),
    "randomize": ({"randomize": True}, ["--randomize"]),
    "seed": ({"randomize": True, "seed": 7}, ["--randomize", "--seed", "7"]),
    "normalize": ({"normalize": True}, ["--normalize"]),
    "fix_fingers": ({"fix_fingers": True}, ["--fix-fingers"]),
    "tail_tests": ({"tail_tests": True}, ["--tail-tests"]),
    "threads": ({"threads": 1}, ["--threads", "1"]),
    "roles": ({"roles": ("other",)}, ["--roles", "other"]),
    "split": ({"split": False}, ["--no-split"]),
    "expert_rows": ({"expert_rows": "mean"}, ["--expert-rows", "mean"]),
}

#: (field, bad library value, flag, bad command-line value or None for a flag without one)
REFUSED = [
    ("layers", "(unclosed", "--layers", "(unclosed"),
    ("exclude", "[a-", "--exclude", "[a-"),
    ("types", ("Linear",), "--types", "Linear"),
    ("types", ("linear", "transformer"), "--types", "linear,transformer"),
    ("min_evals", 0, "--min-evals", "0"),
    ("min_evals", -5, "--min-evals", "-5"),
    ("max_evals", -1, "--max-evals", "-1"),
    ("conv_mode", "diagonal", "--conv-mode", "diagonal"),
    ("seed", "seven", "--seed", "seven"),
    ("seed", 1.5, "--seed", "1.5"),
    ("device", "tpu", "--device", "tpu"),
    ("randomize", "yes", "--randomize", None),
    ("normalize", 1, "--normalize", None),
    ("fix_fingers", "no", "--fix-fingers", None),
    ("tail_tests", None, "--tail-tests", None),
    ("threads", 0, "--threads", "0"),
    ("threads", 1.5, "--threads", "1.5"),
    ("threads", True, "--threads", "-2"),
    ("threads", 2**63, "--threads", str(2**63)),  # overflowed torch.set_num_threads: exit 3
    ("roles", ("attention",), "--roles", "attention"),
    ("expert_rows", "median", "--expert-rows", "median"),
    ("split", "no", "--split", None),
]


def _plain(obj):
    """JSON-ready: NaN -> None, numpy scalars and tuples -> Python (as the JSON output has)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def library_json(**kwargs) -> dict:
    details, summary = spectralyzer.analyze(str(MODEL), device="cpu", **kwargs)
    document = {"layers": details.to_dict(orient="records"), "summary": summary}
    return json.loads(json.dumps(_plain(document)))


def cli_run(*args: str):
    return CliRunner().invoke(main, ["analyze", str(MODEL), "--device", "cpu", "-q", *args])


def cli_json(*args: str) -> dict:
    result = cli_run("--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("option", list(AGREEING))
def test_library_and_cli_give_identical_json(option):
    kwargs, args = AGREEING[option]
    library, cli = library_json(**kwargs), cli_json(*args)
    for document in (library, cli):  # wall-clock seconds differ between any two runs
        assert set(document["summary"].pop("timings")) >= {"open", "fits", "total"}
    assert library == cli


def test_max_evals_0_means_no_cap_in_the_library_too():
    # before: analyze(max_evals=0) skipped every matrix while --max-evals 0 meant no cap
    assert library_json(max_evals=0)["layers"] == library_json(max_evals=None)["layers"]
    assert len(library_json(max_evals=0)["layers"]) == 3


def test_skip_reasons_name_the_field_not_a_flag():
    reasons = [s["reason"] for s in library_json(min_evals=20)["summary"]["skipped"]]
    assert reasons == ["10 eigenvalues per matrix, fewer than min_evals 20"]
    reasons = [s["reason"] for s in library_json(max_evals=100)["summary"]["skipped"]]
    assert all("more than max_evals 100" in r and "--" not in r for r in reasons), reasons


def test_summary_says_whether_eigenvalues_were_normalised():
    assert library_json(normalize=True)["summary"]["normalize"] is True
    assert library_json()["summary"]["normalize"] is False


@pytest.mark.parametrize(("field", "value", "flag", "text"), REFUSED)
def test_bad_value_names_the_field_in_the_library_and_the_flag_on_the_cli(field, value, flag, text):
    with pytest.raises(OptionError) as caught:
        spectralyzer.analyze(str(MODEL), **{field: value})
    assert caught.value.key == field
    assert str(caught.value).startswith(f"{field}: ")
    assert "--" not in caught.value.problem  # library messages name no flag
    if text is None:
        return  # a flag without a value cannot be given a bad one
    result = cli_run(f"{flag}={text}")
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("spectralyzer: error: ") and flag in line, line
    assert "_" not in field or f"{field}:" not in line, line  # the flag, not the field


def test_threads_apply_during_the_run_and_are_restored_after(monkeypatch):
    import spectralyzer.engine as engine

    before, seen = torch.get_num_threads(), []
    wanted = 2 if before == 1 else 1  # differs from the current count, so the check bites
    original = engine.compute_spectra

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "compute_spectra", spy)
    library_json(threads=wanted)
    assert seen == [wanted]
    assert torch.get_num_threads() == before


def test_options_records_check_themselves():
    from spectralyzer.layers import Selection
    from spectralyzer.pipeline import AnalysisOptions

    with pytest.raises(OptionError, match="^types: unknown layer type"):
        Selection(types=("Linear",))
    with pytest.raises(OptionError, match="^device: "):
        AnalysisOptions(device="gpu")
    assert Selection(max_evals=0).max_evals == 0  # 0 is valid: no cap


def test_compare_labels_are_checked_once_by_the_library_and_named_by_flag_on_the_cli():
    from spectralyzer.series import compare

    with pytest.raises(OptionError) as caught:
        compare([MODEL, MODEL], labels=["a", "a"])
    assert caught.value.key == "labels"
    result = CliRunner().invoke(main, ["compare", str(MODEL), str(MODEL), "--labels", "a,a"])
    assert result.exit_code == 2
    assert result.stderr.startswith("spectralyzer: error: --labels: give one distinct label")
