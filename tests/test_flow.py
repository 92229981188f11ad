"""Correlation flow: alpha along the blocks of one role, and the jumps in it."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import spectralyzer
from helpers import esd, pareto_entries
from spectralyzer import flow
from spectralyzer.fit.powerlaw import fit_power_law


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "encoder.layer.3.attention.self.query.weight",
            ("encoder.layer.*.attention.self.query.weight", 3),
        ),
        ("model.layers.12.mlp.0.weight", ("model.layers.*.mlp.0.weight", 12)),
        ("0.weight", ("*.weight", 0)),
        ("pooler.dense.weight", None),
        ("conv1x1.weight", None),  # digits inside a part do not make a block
    ],
)
def test_role_and_block_from_the_parameter_name(name, expected):
    assert flow.role_and_block(name) == expected


def table(rows):
    return pd.DataFrame(rows, columns=["name", "alpha", "sigma", "warning"])


def test_jumps_are_differences_to_the_previous_block_over_their_joint_error():
    rows = [
        ("b.2.w", 4.0, 0.3, ""),  # file order need not be block order
        ("b.0.w", 3.0, 0.1, ""),
        ("b.1.w", 3.2, 0.2, "few-evals"),
        ("b.10.w", 2.0, 0.4, ""),
        ("c.0.w", 3.0, 0.1, ""),  # a role with 2 blocks has no flow
        ("c.1.w", 9.0, 0.1, ""),
        ("head.w", 5.0, 0.5, ""),  # no block
        ("b.5.w", math.nan, math.nan, "fit-failed"),  # left out: blocks 2 and 10 are neighbours
    ]
    out = flow.with_flow(table(rows))
    jump = dict(zip(out["name"], out["flow_jump"], strict=True))
    z = dict(zip(out["name"], out["flow_z"], strict=True))
    assert math.isnan(jump["b.0.w"]) and math.isnan(z["b.0.w"])
    assert jump["b.1.w"] == pytest.approx(0.2) and z["b.1.w"] == pytest.approx(
        0.2 / math.hypot(0.2, 0.1)
    )
    assert jump["b.2.w"] == pytest.approx(0.8) and z["b.2.w"] == pytest.approx(
        0.8 / math.hypot(0.3, 0.2)
    )
    assert jump["b.10.w"] == pytest.approx(-2.0) and z["b.10.w"] == pytest.approx(-2.0 / 0.5)
    assert all(math.isnan(jump[n]) for n in ("c.0.w", "c.1.w", "head.w", "b.5.w"))
    warnings = dict(zip(out["name"], out["warning"], strict=True))
    assert warnings["b.10.w"] == "flow-jump"  # |z| = 4 > 3 and |jump| = 2 > 1
    assert warnings["b.2.w"] == "" and warnings["b.1.w"] == "few-evals"
    assert warnings["b.5.w"] == "fit-failed"


def test_the_flow_does_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    rows = [(f"s.{i}.w", 2 + rng.random() * 4, 0.1 + rng.random(), "") for i in range(9)]
    a = flow.with_flow(table(rows)).set_index("name")
    b = flow.with_flow(table(rows[::-1])).set_index("name").loc[a.index]
    pd.testing.assert_frame_equal(a, b)


def test_a_planted_layer_is_flagged_on_its_way_in_and_out_and_nowhere_else():
    """Six blocks of very heavy-tailed matrices (alpha ~ 1.4); block 3 of one role has
    lighter tails (alpha ~ 3.5).  Built from Pareto entries (Martin & Mahoney)."""
    sd = {}
    for block in range(6):
        for role, mu in (("attn", 1.0), ("mlp", 2.5 if block == 3 else 1.0)):
            w = pareto_entries(600, 300, mu=mu, seed=10 * block + len(role))
            sd[f"blocks.{block}.{role}.weight"] = torch.from_numpy(w)
    sd["head.weight"] = torch.from_numpy(pareto_entries(600, 300, mu=1.0, seed=99))
    details, summary = spectralyzer.analyze(sd)
    flagged = set(details.loc[details["warning"].str.contains("flow-jump"), "name"])
    assert flagged == {"blocks.3.mlp.weight", "blocks.4.mlp.weight"}
    rows = details.set_index("name")
    assert rows.loc["blocks.3.mlp.weight", "flow_jump"] > 1.0
    assert rows.loc["blocks.4.mlp.weight", "flow_jump"] < -1.0
    assert math.isnan(rows.loc["head.weight", "flow_jump"])
    assert summary["warnings"]["flow-jump"] == 2


def test_fit_noise_alone_rarely_raises_the_warning():
    """Independent matrices drawn from one law (alpha ~ 3.5 +- 0.5): the jumps between
    them are fit noise only, often above 1 in alpha and above 2 standard errors."""
    fits = [fit_power_law(esd(pareto_entries(400, 200, mu=2.5, seed=s))) for s in range(200)]
    alpha = np.array([f.alpha for f in fits])
    sigma = np.array([f.sigma for f in fits])
    jump = alpha[1::2] - alpha[::2]
    z = jump / np.hypot(sigma[1::2], sigma[::2])
    assert np.mean((np.abs(z) > 2.0) & (np.abs(jump) > 1.0)) > 0.1  # the noise is real...
    assert np.mean([flow.is_jump(j, zz) for j, zz in zip(jump, z, strict=True)]) <= 0.02


def test_the_flow_figure_draws_each_role_and_is_absent_without_a_stack():
    pytest.importorskip("matplotlib")
    from spectralyzer.report.plots import flow_figure

    # role v steps from 3 to 5.5 at block 2 (jump 2.5, z 8.8): flagged there, and ringed
    rows = [
        (f"b.{i}.{r}", 5.5 if r == "v" and i >= 2 else 3.0, 0.2, "") for i in range(4) for r in "qv"
    ]
    fig = flow_figure(flow.with_flow(table(rows)))
    assert len(fig.axes[0].lines) == 2 + 2  # one line per role, plus the 2 and 6 guides
    ringed = [c.get_offsets().tolist() for c in fig.axes[0].collections]
    assert sorted(map(str, ringed)) == sorted(map(str, [[], [[2.0, 5.5]]]))
    assert flow_figure(table([("head.w", 3.0, 0.2, ""), ("tail.w", 4.0, 0.2, "")])) is None
