"""The gate's verdicts cannot be loosened silently (issue 11, item 5).

A layer whose weights or metrics became NaN/Inf fails whatever its base alpha
(before, its NaN deltas were skipped and phase "unknown" was not failed, so
only a base alpha inside [2, 6] caught it); every policy value is validated
(before: ``nan`` limits passed anything, ``"false"`` counted as true, ``true``
as 1.0, a bare phase string became single letters, a reversed band was used).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from exitcodes_support import error_line, gaussian_layers, run, write_checkpoint
from spectralyzer.gate_policy import Policy, evaluate
from spectralyzer.layer_diff import diff


@pytest.fixture
def layers():
    return gaussian_layers(0)


@pytest.fixture
def base(tmp_path, layers):
    return write_checkpoint(tmp_path / "base.safetensors", layers)


def candidate(tmp_path, layers, name: str, change) -> object:
    changed = dict(layers)
    changed[name] = change(layers[name].copy())
    return write_checkpoint(tmp_path / f"cand-{name}.safetensors", changed)


def with_nan_row(w: np.ndarray) -> np.ndarray:
    w[3] = np.nan
    return w


def alpha_of(path, name: str) -> float:
    result = diff(path, path)
    return float(result.layers.set_index("name").loc[name, "alpha_base"])


def test_nan_weights_fail_when_the_base_alpha_lies_outside_the_band(tmp_path, layers, base):
    alpha = alpha_of(base, "a.weight")
    assert not 2 <= alpha <= 6, alpha  # the case the band rule could not catch
    cand = candidate(tmp_path, layers, "a.weight", with_nan_row)
    result = run("gate", base, cand)
    assert result.exit_code == 1, result.output
    assert "a.weight" in result.stdout and "non-finite" in result.stdout
    assert "b.weight" not in result.stdout.split("failed)")[1].split("note:")[0]


def test_inf_weights_fail_too(tmp_path, layers, base):
    def with_inf(w):
        w[0, 0] = np.inf
        return w

    result = run("gate", base, candidate(tmp_path, layers, "a.weight", with_inf))
    assert result.exit_code == 1, result.output
    assert "a.weight" in result.stdout


def test_zeroed_layer_fails_as_its_norms_became_undefined(layers):
    state = {name: torch.tensor(w) for name, w in layers.items()}
    zeroed = {**state, "a.weight": torch.zeros_like(state["a.weight"])}
    verdict = evaluate(diff(state, zeroed), Policy(fail_on_phases=()))
    assert not verdict.passed
    assert "a.weight" in verdict.failures and "b.weight" not in verdict.failures
    assert any("non-finite" in reason for reason in verdict.failures["a.weight"])


def test_a_layer_nan_in_both_models_does_not_fail_for_it(layers):
    state = {name: torch.tensor(w) for name, w in layers.items()}
    broken = {**state, "a.weight": torch.tensor(with_nan_row(layers["a.weight"].copy()))}
    verdict = evaluate(diff(broken, broken))
    assert verdict.passed, verdict.failures


INVALID = {
    # policy text -> the key the error line must name
    "max_d_log_norm = nan": "max_d_log_norm",
    "max_d_log_norm = -0.1": "max_d_log_norm",
    "max_d_log_norm = inf": "max_d_log_norm",
    "max_d_log_spectral_norm = true": "max_d_log_spectral_norm",
    'max_d_log_stable_rank = "0.1"': "max_d_log_stable_rank",
    "max_d_alpha = -1": "max_d_alpha",
    "max_d_alpha = [1.0]": "max_d_alpha",
    f"max_d_alpha = {'9' * 400}": "max_d_alpha",  # too large for a float
    'fail_on_new_traps = "false"': "fail_on_new_traps",
    'fail_on_unmatched = "no"': "fail_on_unmatched",
    "fail_on_unmatched = 1": "fail_on_unmatched",
    'fail_on_phases = "random-like"': "fail_on_phases",
    'fail_on_phases = ["random"]': "fail_on_phases",
    "fail_on_phases = [1]": "fail_on_phases",
    "alpha_band = [1]": "alpha_band",
    "alpha_band = [6.0, 2.0]": "alpha_band",
    "alpha_band = [2.0, nan]": "alpha_band",
    "alpha_band = [2.0, 6.0, 8.0]": "alpha_band",
    'alpha_band = [2.0, "6"]': "alpha_band",
    "alpha_band = [true, 6.0]": "alpha_band",
    'alpha_band = "2,6"': "alpha_band",
    'include = "("': "include",
    "include = 5": "include",
    'exclude = "["': "exclude",
    'include = "no_such_layer"': "include",  # would gate 0 of 0 layers and PASS
    'exclude = "weight"': "exclude",  # excludes every layer
}


@pytest.mark.parametrize("text", list(INVALID))
def test_invalid_policy_value_exits_2_naming_file_and_key(tmp_path, base, text):
    policy = tmp_path / "policy.toml"
    policy.write_text(text + "\n")
    line = error_line(run("gate", base, base, "--policy", policy))
    assert f"{policy}: {INVALID[text]}" in line, line


@pytest.mark.parametrize(
    "fields",
    [
        {"max_d_log_norm": math.nan},
        {"max_d_log_spectral_norm": -1.0},
        {"max_d_alpha": math.inf},
        {"fail_on_new_traps": "false"},
        {"fail_on_unmatched": 0},
        {"max_d_log_norm": True},
        {"fail_on_phases": "random-like"},
        {"fail_on_phases": ("bulk+spikes", "typo")},
        {"alpha_band": (6.0, 2.0)},
        {"alpha_band": (1.0,)},
        {"include": "("},
    ],
)
def test_policy_record_validates_itself_for_library_callers(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        Policy(**fields)


def test_valid_policy_with_every_key_passes_an_identical_model(tmp_path, base):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "\n".join(
            [
                "max_d_log_spectral_norm = 0.2",
                "max_d_log_norm = 1",  # an integer is a number
                "max_d_log_stable_rank = 0.0",
                "max_d_alpha = 0.5",
                "alpha_band = [1.5, 7]",
                'fail_on_phases = ["random-like", "unknown"]',
                "fail_on_new_traps = false",
                "fail_on_unmatched = true",
                'include = "weight"',
                'exclude = "^b\\\\."',
            ]
        )
        + "\n"
    )
    result = run("gate", base, base, "--policy", policy)
    assert result.exit_code == 0, result.output
    assert "PASS (0 of 1 layers failed)" in result.stdout
    loaded = Policy.from_toml(policy)
    assert loaded.max_d_log_norm == 1.0 and isinstance(loaded.max_d_log_norm, float)
    assert loaded.alpha_band == (1.5, 7.0) and loaded.fail_on_phases == ("random-like", "unknown")


def test_valid_thresholds_still_decide(tmp_path, layers, base):
    cand = candidate(tmp_path, layers, "a.weight", lambda w: w * 1.2)  # log_norm +0.158
    tight, loose, excluded = (tmp_path / f"{n}.toml" for n in ("tight", "loose", "excluded"))
    tight.write_text("max_d_log_norm = 0.1\n")
    loose.write_text("max_d_log_norm = 0.2\nmax_d_log_spectral_norm = 0.2\n")
    excluded.write_text('exclude = "^a\\\\."\n')
    assert run("gate", base, cand, "--policy", tight).exit_code == 1
    assert run("gate", base, cand, "--policy", loose).exit_code == 0
    assert run("gate", base, cand, "--policy", excluded).exit_code == 0
    assert run("gate", base, cand).exit_code == 1  # the defaults
