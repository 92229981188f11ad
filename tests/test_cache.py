"""The resumable ESD cache: keys, reuse, resumption, and entries that must not be trusted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectralyzer.cache as cache_module
from fanout_support import SHAPES, make_models, without_timings
from spectralyzer.cache import Cache, option_fields
from spectralyzer.cli import main
from spectralyzer.fanout import FanOut
from spectralyzer.layers import LayerSpec
from spectralyzer.pipeline import AnalysisOptions, make_options, run_analysis
from spectralyzer.render import render
from spectralyzer.series import compare

OPTIONS = make_options(threads=1)


@pytest.fixture
def computed(monkeypatch):
    """Names of the layers the engine computed, one list per call (cache misses)."""
    calls: list[list[str]] = []
    real = cache_module.spectra_with

    def counting(checkpoint, specs, *args):
        calls.append([s.name for s in specs])
        return real(checkpoint, specs, *args)

    monkeypatch.setattr(cache_module, "spectra_with", counting)
    return calls


def analyse(path, folder, options=OPTIONS):
    return run_analysis(path, options, spectra=FanOut(None, folder).spectra)


def document(result) -> dict:
    return without_timings(json.loads(render(result, "json")))


def test_a_rerun_computes_nothing_and_gives_the_same_document(tmp_path, computed):
    (model,) = make_models(tmp_path, 1)
    fresh = run_analysis(model, OPTIONS)  # no cache at all
    first = analyse(model, tmp_path / "cache")
    assert sorted(sum(computed, [])) == sorted(SHAPES)
    computed.clear()
    again = analyse(model, tmp_path / "cache")
    assert computed == []
    assert document(first) == document(again) == document(fresh)
    for name, layer in fresh.spectra.items():
        np.testing.assert_array_equal(again.spectra[name].esd.evals, layer.esd.evals)


def test_randomised_spectra_are_cached_too(tmp_path, computed):
    (model,) = make_models(tmp_path, 1, first_seed=1)
    options = make_options(threads=1, randomize=True, seed=3)
    fresh = run_analysis(model, options)
    analyse(model, tmp_path / "cache", options)
    computed.clear()
    again = analyse(model, tmp_path / "cache", options)
    assert computed == []
    assert document(again) == document(fresh)
    for name, layer in fresh.spectra.items():
        cached, fresh_top = again.spectra[name].randomized, layer.randomized
        np.testing.assert_array_equal(cached.top, fresh_top.top)
        assert (cached.total, cached.count, cached.size, cached.error) == (
            fresh_top.total,
            fresh_top.count,
            fresh_top.size,
            fresh_top.error,
        )


def test_compare_after_adding_a_checkpoint_analyses_only_the_new_one(tmp_path, computed):
    models = make_models(tmp_path, 4)
    runner = FanOut(None, tmp_path / "cache").runner
    compare(models[:3], options=OPTIONS, runner=runner)
    assert len(sum(computed, [])) == 3 * len(SHAPES)
    computed.clear()
    series = compare(models, options=OPTIONS, runner=runner)
    assert sorted(sum(computed, [])) == sorted(SHAPES)  # the fourth model's layers, once each
    plain = compare(models, options=OPTIONS)
    assert without_timings(series.document()) == without_timings(plain.document())


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    (model,) = make_models(tmp_path, 1)
    real = cache_module.spectra_with
    calls: list[list[str]] = []

    def dies_on_the_third_group(checkpoint, specs, *args):
        calls.append([s.name for s in specs])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed in the middle
        return real(checkpoint, specs, *args)

    monkeypatch.setattr(cache_module, "spectra_with", dies_on_the_third_group)
    with pytest.raises(KeyboardInterrupt):
        analyse(model, tmp_path / "cache")
    done_before = sum(calls[:2], [])
    assert len(done_before) == 2  # one layer per shape group
    calls.clear()
    resumed = analyse(model, tmp_path / "cache")
    assert sorted(sum(calls, [])) == sorted(set(SHAPES) - set(done_before))
    assert document(resumed) == document(run_analysis(model, OPTIONS))


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.esd"))


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_last_eigenvalue(data: bytes) -> bytes:
    garbled = bytearray(data)
    garbled[-3] ^= 0x40  # a high byte of the largest eigenvalue: a plausible, wrong number
    return bytes(garbled)


def _flip_header(data: bytes) -> bytes:
    garbled = bytearray(data)
    garbled[len(cache_module.MAGIC) + cache_module.DIGEST + 12] ^= 0x01
    return bytes(garbled)


def _flip_checksum(data: bytes) -> bytes:
    garbled = bytearray(data)
    garbled[len(cache_module.MAGIC)] ^= 0x01
    return bytes(garbled)


@pytest.mark.parametrize(
    "damage", [_truncate, _flip_last_eigenvalue, _flip_header, _flip_checksum, lambda d: b""]
)
def test_a_damaged_entry_is_recomputed_never_trusted(tmp_path, computed, damage):
    (model,) = make_models(tmp_path, 1)
    folder = tmp_path / "cache"
    fresh = document(analyse(model, folder))
    entries = _entries(folder)
    assert len(entries) == len(SHAPES)
    victim = entries[0]
    victim.write_bytes(damage(victim.read_bytes()))
    computed.clear()
    assert document(analyse(model, folder)) == fresh
    assert len(sum(computed, [])) == 1  # the damaged layer only, recomputed
    computed.clear()
    assert document(analyse(model, folder)) == fresh
    assert computed == []  # and its entry was rewritten whole


def test_an_entry_of_another_key_is_not_used(tmp_path, computed):
    """An entry moved to another key's place (same checksum, wrong key) is recomputed."""
    (model,) = make_models(tmp_path, 1)
    folder = tmp_path / "cache"
    fresh = document(analyse(model, folder))
    first, second = _entries(folder)[:2]
    second.write_bytes(first.read_bytes())
    computed.clear()
    assert document(analyse(model, folder)) == fresh
    assert len(sum(computed, [])) == 1


SPEC = LayerSpec("w", "linear", (6, 4), "float32", 6, 4, 1)


def _key(options=OPTIONS, tensor=None, spec=SPEC) -> str:
    tensor = torch.arange(24, dtype=torch.float32).reshape(6, 4) if tensor is None else tensor
    return Cache("unused", options).key(spec, tensor)


def test_the_key_follows_content_and_the_options_that_change_eigenvalues():
    base = _key()
    weights = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    nudged = weights.clone()
    nudged[5, 3] = torch.nextafter(nudged[5, 3], torch.tensor(1e9))
    changed = {
        "one ulp of one weight": _key(tensor=nudged),
        "dtype": _key(tensor=weights.double()),
        "shape": _key(tensor=weights.reshape(4, 6)),
        "view": _key(spec=dataclasses.replace(SPEC, view="unfold")),
        "randomize": _key(make_options(threads=1, randomize=True)),
        "seed": _key(make_options(threads=1, seed=1)),
        "conv mode": _key(make_options(threads=1, conv_mode="unfold")),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, changed
    same = {
        "threads": _key(make_options(threads=2)),
        "device": _key(make_options(threads=1, device="cpu")),
        "fits": _key(make_options(threads=1, normalize=True, fix_fingers=True, tail_tests=True)),
        "selection": _key(make_options(threads=1, layers="w", min_evals=2, max_evals=0)),
        "name": _key(spec=dataclasses.replace(SPEC, name="other.weight")),
    }
    assert set(same.values()) == {base}, same


def test_a_new_option_is_part_of_the_key_unless_excluded():
    @dataclasses.dataclass(frozen=True)
    class Extended(AnalysisOptions):
        new_knob: int = 0

    assert "new_knob" in option_fields(Extended())
    assert _key(Extended(new_knob=0)) != _key(Extended(new_knob=1))


def test_the_tool_version_is_part_of_the_key(monkeypatch):
    before = _key()
    monkeypatch.setattr(cache_module, "__version__", "999.0")
    assert _key() != before


def test_the_cli_caches_in_the_user_cache_folder_unless_told_not_to(tmp_path, monkeypatch):
    (model,) = make_models(tmp_path, 1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    runner = CliRunner()
    args = ["analyze", str(model), "-q", "--format", "json", "--threads", "1"]
    plain = runner.invoke(main, [*args, "--no-cache"])
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "xdg").exists()
    cached = runner.invoke(main, args)
    assert cached.exit_code == 0, cached.output
    assert len(_entries(tmp_path / "xdg" / "spectralyzer")) == len(SHAPES)
    elsewhere = runner.invoke(main, [*args, "--cache", str(tmp_path / "mine")])
    assert len(_entries(tmp_path / "mine")) == len(SHAPES)
    docs = [without_timings(json.loads(r.output)) for r in (plain, cached, elsewhere)]
    assert docs[0] == docs[1] == docs[2]
    both = runner.invoke(main, [*args, "--no-cache", "--cache", str(tmp_path)])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_the_cache_never_goes_into_an_input(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (model,) = make_models(folder, 1)
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(main, ["compare", str(folder), str(model), "--cache", str(model)])
    assert result.exit_code == 2, result.output
    assert "refusing to write over or into an input" in result.output
    inside = CliRunner().invoke(
        main, ["gate", str(folder), str(model), "--cache", str(folder / "c")]
    )
    assert inside.exit_code == 2 and "lies in the input folder" in inside.output
    assert sorted(p.name for p in folder.iterdir()) == before
