"""The report's ESD panels (SVG, no matplotlib) draw what the analysis says."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch

from spectralyzer.pipeline import make_options, run_analysis
from spectralyzer.report.esd_curves import density, esd_curves
from spectralyzer.report.svg import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, esd_svg


def _analysed(name: str = "w.weight"):
    """A Student-t matrix with a planted low-rank signal: a tail, spikes and (randomised) traps."""
    gen = torch.Generator().manual_seed(4)
    w = torch.distributions.StudentT(3.0).sample((600, 200)) / 200**0.5
    w += torch.randn(600, 3, generator=gen) @ torch.randn(3, 200, generator=gen)
    w[2, 3] = 60.0
    result = run_analysis({name: w}, make_options(randomize=True))
    row = result.details.iloc[0]
    spectra = result.spectra[row["name"]]
    return row, spectra.esd.evals, spectra.randomized


def test_density_is_the_normalised_histogram():
    values = np.random.default_rng(0).lognormal(size=5000)
    bins = np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-9, 61)
    bins[0] = values.min()
    dens = density(values, bins)
    assert math.isclose(float((dens * np.diff(bins)).sum()), 1.0, rel_tol=1e-12)
    counts, _ = np.histogram(values, bins)
    np.testing.assert_allclose(dens, counts / (values.size * np.diff(bins)))


def test_the_panel_marks_every_spike_and_trap_and_puts_xmin_where_it_is():
    row, evals, randomized = _analysed()
    assert row["num_spikes"] > 0 and row["num_traps"] > 0
    svg = esd_svg(row, evals, randomized)
    spike_marks = re.findall(r'<line x1="([\d.]+)" y1="[\d.]+" x2="[\d.]+" y2="[\d.]+" '
                             r'stroke="#d62728"/>', svg)  # fmt: skip
    assert len(spike_marks) == row["num_spikes"] + 1  # the marks, and the legend's sample
    traps = re.findall(r'fill="#ff7f0e" font-size="11">x<', svg)
    assert len(traps) == row["num_traps"]
    c = esd_curves(row, evals, randomized)
    x0, x1 = np.log10(c.bins[0]), np.log10(c.bins[-1])
    expected = LEFT + (np.log10(row["xmin"]) - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)
    pattern = (
        rf'<line x1="([\d.]+)" y1="{TOP}" x2="[\d.]+" y2="{HEIGHT - BOTTOM}" '
        r'stroke="#000000" stroke-dasharray="2,2"/>'
    )
    xmin_line = re.search(pattern, svg)
    assert xmin_line and abs(float(xmin_line.group(1)) - expected) < 0.06
    assert f"alpha {row['alpha']:.2f}" in svg


def test_histogram_bars_stand_at_their_densities():
    row, evals, _ = _analysed()
    c = esd_curves(row, evals)
    path = re.search(r'<path d="([^"]+)" fill="#1f77b4"', esd_svg(row, evals)).group(1)
    ys = [float(y) for y in re.findall(r"L[\d.]+,([\d.]+)L[\d.]+,[\d.]+", path)]
    top = max(c.density.max(), c.power_law[1].max()) * 2
    y0, y1 = np.log10(c.floor), np.log10(top)
    expected = (
        HEIGHT
        - BOTTOM
        - (np.log10(np.maximum(c.density, c.floor)) - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)
    )
    np.testing.assert_allclose(ys[: len(expected)], expected, atol=0.06)


def test_names_are_escaped():
    row, evals, _ = _analysed('w.<script>alert("x")</script>.weight')
    svg = esd_svg(pd.Series(row), evals)
    assert "<script" not in svg and "&lt;script&gt;" in svg
