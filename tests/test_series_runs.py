"""Training runs in ``compare`` (issue 16): run folders and globs, step order, roles, run figures."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from helpers import gaussian, pareto_entries
from spectralyzer.cli import main
from spectralyzer.errors import InputError, OptionError
from spectralyzer.runs import expand_sources, is_one_model, natural_key, order_paths, step_of
from spectralyzer.series import compare

STEPS = [100, 900, 1000, 20]  # written in this order; natural order 20, 100, 900, 1000
# a BERT-like layout: two blocks of a query projection and an MLP output, all 48 x 96
NAMES = [
    f"encoder.layer.{b}.{part}.weight"
    for b in range(2)
    for part in ("attention.self.query", "output.dense")
]


def _weights(step: int) -> dict[str, torch.Tensor]:
    """Heavier tails (lower alpha) as training goes on, one seed per step."""
    mu = 3.5 - step / 500
    return {
        name: torch.from_numpy(pareto_entries(48, 96, mu, seed=step + i)).float()
        for i, name in enumerate(NAMES)
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Trainer-like output folder: checkpoint-<step>/ with model.safetensors and config.json."""
    folder = tmp_path_factory.mktemp("run")
    for i, step in enumerate(STEPS):
        sub = folder / f"checkpoint-{step}"
        sub.mkdir()
        save_file(_weights(step), sub / "model.safetensors")
        (sub / "config.json").write_text("{}")
        (sub / "optimizer.pt").write_bytes(b"not read")
        os.utime(sub, ns=(10**18 + i, 10**18 + i))  # mtime order = writing order
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_natural_order_and_steps_from_names(tmp_path):
    names = ["checkpoint-1000", "checkpoint-900", "checkpoint-20", "checkpoint-100"]
    assert sorted(names, key=natural_key) == [
        "checkpoint-20",
        "checkpoint-100",
        "checkpoint-900",
        "checkpoint-1000",
    ]
    assert sorted(names) == ["checkpoint-100", "checkpoint-1000", "checkpoint-20", "checkpoint-900"]
    assert step_of("out/checkpoint-1000") == 1000
    assert step_of("epoch_03.safetensors") == 3
    assert step_of("epoch=2-step=20-val_loss=0.51.ckpt") == 20  # Lightning: the step wins
    assert step_of("model_epoch7_v2.pt") == 7  # a labelled epoch wins over later numbers
    assert step_of("model-00001-of-00003.safetensors") is None  # a shard counter is no step
    assert step_of("last.ckpt") is None
    assert step_of("resnet50.pt") == 50 and step_of("resnet50.pt", labelled_only=True) is None
    assert step_of("ckpt_300.pt", labelled_only=True) == 300
    files = []
    for i, name in enumerate(["b-10.pt", "b-9.pt", "a-100.pt"]):
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + i, 10**18 + i))
        files.append(path)
    assert [p.name for p in order_paths(files, "natural")] == ["a-100.pt", "b-9.pt", "b-10.pt"]
    assert [p.name for p in order_paths(files, "name")] == ["a-100.pt", "b-10.pt", "b-9.pt"]
    assert [p.name for p in order_paths(files, "mtime")] == ["b-10.pt", "b-9.pt", "a-100.pt"]
    with pytest.raises(OptionError, match="order"):
        order_paths(files, "size")


def test_a_run_folder_and_a_glob_are_expanded_in_step_order(run, tmp_path):
    natural = [p.name for p in expand_sources([run])]
    assert natural == [f"checkpoint-{s}" for s in sorted(STEPS)]
    assert [p.name for p in expand_sources([run], "mtime")] == [f"checkpoint-{s}" for s in STEPS]
    assert [p.name for p in expand_sources([os.path.join(run, "checkpoint-*00")])] == [
        "checkpoint-100",
        "checkpoint-900",
        "checkpoint-1000",
    ]
    # one model stays one model: an HF folder, a file; explicit lists keep their order
    one = run / "checkpoint-900"
    assert is_one_model(one) and not is_one_model(run)
    given = [run / "checkpoint-1000", one]
    assert expand_sources(given) == given
    with pytest.raises(InputError, match="matches no checkpoint"):
        expand_sources([str(tmp_path / "nothing-*.pt")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no checkpoint"):
        expand_sources([empty])


def test_compare_a_run_gives_steps_roles_and_the_per_step_tables(run):
    series = compare([run])
    assert sorted(series.models["step"]) == sorted(STEPS)
    by_label = series.models.set_index("model")
    assert by_label.loc["checkpoint-1000", "step"] == 1000
    layers = series.layers
    assert list(dict.fromkeys(layers["model"])) == [f"checkpoint-{s}" for s in sorted(STEPS)]
    assert set(layers["step"]) == set(STEPS)
    roles = dict(zip(layers["name"], layers["role"], strict=False))
    assert roles["encoder.layer.0.attention.self.query.weight"] == "attn-q"
    assert roles["encoder.layer.1.output.dense.weight"] == "mlp-down"
    assert "family" not in series.models  # one architecture
    # the per-layer alphas are those of analysing each checkpoint alone
    from spectralyzer import analyze

    details, _ = analyze(run / "checkpoint-900" / "model.safetensors")
    mine = layers[layers["model"] == "checkpoint-900"].set_index("name")["alpha"]
    assert np.allclose(mine[details["name"]].to_numpy(), details["alpha"].to_numpy())


def test_steps_of_a_run_folder_and_of_a_list_of_models(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model_5.safetensors", "model_40.safetensors", "epoch_7.safetensors"):
        save_file({"w.weight": torch.from_numpy(gaussian(32, 16)).float()}, run / name)
    # in a run folder a bare number is the step; in a list of models only a labelled one
    steps = dict(zip(*(compare([run]).models[c] for c in ("model", "step")), strict=True))
    assert steps == {"model_5.safetensors": 5, "epoch_7.safetensors": 7, "model_40.safetensors": 40}
    listed = compare([run / "model_40.safetensors", run / "model_5.safetensors"])
    assert "step" not in listed.models
    assert list(dict.fromkeys(listed.layers["model"])) == [
        "model_40.safetensors",
        "model_5.safetensors",
    ]
    cli = CliRunner().invoke(main, ["compare", str(run), "--format", "json", "-q"])
    assert [m["step"] for m in json.loads(cli.stdout)["models"]] == [
        steps[m["model"]] for m in json.loads(cli.stdout)["models"]
    ]


def test_compare_cli_orders_a_run_folder(run):
    runner = CliRunner()
    result = runner.invoke(main, ["compare", str(run), "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["model"] for row in data["layers"][:: len(NAMES)]] == [
        f"checkpoint-{s}" for s in sorted(STEPS)
    ]
    by_name = runner.invoke(main, ["compare", str(run), "--order", "name", "--format", "json"])
    order = [row["model"] for row in json.loads(by_name.stdout)["layers"][:: len(NAMES)]]
    assert order == sorted(f"checkpoint-{s}" for s in STEPS)
    bad = runner.invoke(main, ["compare", str(run), "--order", "size"])
    assert bad.exit_code == 2 and "--order" in bad.stderr


def test_run_figures_show_the_layers_alpha_along_the_steps(run):
    pytest.importorskip("matplotlib")
    from spectralyzer.report.run_plots import (
        alpha_heatmap_figure,
        model_means_figure,
        role_metrics_figure,
    )

    accuracy = {f"checkpoint-{s}": 0.5 + s / 4000 for s in STEPS}
    series = compare([run], accuracy=accuracy)
    layers = series.layers
    fig = alpha_heatmap_figure(layers)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2  # roles attn-q and mlp-down, in depth order
    for image, (role, depths) in zip(
        images, (("attn-q", [0, 2]), ("mlp-down", [1, 3])), strict=True
    ):
        expected = np.array(
            [
                [
                    layers[(layers["step"] == s) & (layers["depth"] == d)]["alpha"].item()
                    for s in sorted(STEPS)
                ]
                for d in depths
            ]
        )
        assert (layers[layers["depth"].isin(depths)]["role"] == role).all()
        assert np.allclose(np.asarray(image.get_array()), expected)
    means = model_means_figure(series.models, layers)
    lines = {line.get_label(): line for line in means.axes[0].get_lines()}
    models = series.models.set_index("step").sort_index()
    assert np.allclose(lines["alpha"].get_xdata(), sorted(STEPS))
    assert np.allclose(lines["alpha"].get_ydata(), models["alpha"])
    accuracy_line = means.axes[1].get_lines()[0]
    assert np.allclose(accuracy_line.get_ydata(), models["accuracy"])
    roles = role_metrics_figure(layers)
    first = {line.get_label(): line for line in roles.axes[0].get_lines()}
    per_step = layers[layers["role"] == "attn-q"].groupby("step")["alpha"].mean()
    assert np.allclose(first["attn-q"].get_ydata(), per_step.sort_index())


def test_report_of_a_run_has_the_training_section(run, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["compare", str(run), "--report", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    page = (folder / "index.html").read_text()
    assert 'id="training"' in page and "alpha per layer" in page
    assert {"alpha_heatmap.png", "role_metrics.png", "model_means.png"} <= {
        p.name for p in (folder / "figures").iterdir()
    }
    assert "step" in pd.read_csv(folder / "layers.csv").columns
