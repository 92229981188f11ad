"""matplotlib figures of one layer's ESD and of a model's metrics along depth.

Every function returns a ``Figure`` (Agg backend, no display needed); the caller
saves or embeds it.  The drawn curves are the fitted models of docs/theory.md sections 2 and 3:
the power law ``p(x) = (alpha - 1) / xmin (x / xmin)^-alpha`` on ``[xmin, xmax]``
scaled by the tail's share of the eigenvalues, and the Marchenko-Pastur density
of :func:`spectralyzer.fit.mp.mp_density` with the fitted sigma.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, LogLocator, NullLocator  # noqa: E402

from ..escaping import figure_text  # noqa: E402
from ..fit.traps import ShuffledTop  # noqa: E402
from ..flow import roles  # noqa: E402
from .esd_curves import esd_curves  # noqa: E402

TYPE_COLOURS = {
    "linear": "tab:blue",
    "embedding": "tab:orange",
    "gpt2-conv1d": "tab:cyan",
    "conv1d": "tab:green",
    "conv2d": "tab:red",
    "conv3d": "tab:purple",
    "lstm": "tab:brown",
    "gru": "tab:pink",
    "rnn": "tab:olive",
}


def esd_figure(row: pd.Series, evals: np.ndarray, randomized: ShuffledTop | None = None) -> Figure:
    """ESD on log-log axes with the power-law fit, xmin, the MP bulk and spikes/traps."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    draw_esd(ax, row, evals, randomized)
    # fixed margins: tight_layout measured every tick label and cost more than the analysis
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.14, top=0.86)
    return fig


def esd_grid(panels: list[tuple[pd.Series, np.ndarray, np.ndarray | None]]) -> Figure:
    """Several layers' ESDs side by side (three per row)."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), dpi=90, squeeze=False)
    for ax, (row, evals, randomized) in zip(axes.flat, panels, strict=False):
        draw_esd(ax, row, evals, randomized)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def draw_esd(ax, row: pd.Series, evals: np.ndarray, randomized: ShuffledTop | None = None) -> None:
    """Draw one layer's ESD panel on ``ax`` (:func:`.esd_curves.esd_curves` says what)."""
    c = esd_curves(row, evals, randomized)
    if c is not None:
        # one stairs artist per histogram: ax.hist draws a patch per bin (4x slower in total)
        ax.stairs(np.maximum(c.density, c.floor), c.bins, baseline=c.floor, fill=True,
                  color="tab:blue", alpha=0.55, label="ESD")  # fmt: skip
        if c.randomized is not None:
            ax.stairs(np.maximum(c.randomized, c.floor), c.bins, baseline=c.floor,
                      color="0.35", label="shuffled copy (fitted law)")  # fmt: skip
        if c.power_law is not None:
            ax.plot(*c.power_law, color="black", lw=1.2, label=f"power law, alpha {c.alpha:.2f}")
            ax.axvline(c.xmin, color="black", ls=":", lw=1, label="xmin")
        if c.mp is not None:
            if c.mp[0].size:
                ax.plot(*c.mp, color="tab:green", lw=1.2, label="Marchenko-Pastur fit")
            ax.axvline(c.lambda_plus, color="tab:green", ls="--", lw=1, label="lambda+")
        if c.traps.size:
            ax.plot(c.traps, np.full(c.traps.size, c.floor * 3), "x", color="tab:orange",
                    markersize=8, label=f"{c.traps.size} correlation trap(s)")  # fmt: skip
        if c.spikes.size:
            ax.plot(c.spikes, np.full(c.spikes.size, c.floor), "|", color="red",
                    markersize=12, label=f"{c.spikes.size} spikes")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        # at most 6 plain-text labels and no minor ticks: ESDs span up to 1e15, and the
        # default mathtext labels and minor ticks cost more than the analysis itself
        axis.set_major_locator(LogLocator(base=10, numticks=6))
        axis.set_major_formatter(LogFormatter(base=10, labelOnlyBase=True))
        axis.set_minor_locator(NullLocator())
    ax.set_xlabel("eigenvalue of W^T W")
    ax.set_ylabel("density")
    warning = f" [{row['warning']}]" if row["warning"] else ""
    title = figure_text(row["name"])  # no mathtext from names, long ones shortened
    ax.set_title(f"{title}\n{row['phase']}, alpha {row['alpha']:.2f}{warning}", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")


def depth_figure(details: pd.DataFrame) -> Figure:
    """alpha (with the 2 and 6 lines) and log_spectral_norm against depth, coloured by type."""
    fig, top, bottom = _depth_axes()
    depth = np.arange(len(details))
    for kind, rows in details.groupby("layer_type"):
        colour = TYPE_COLOURS.get(kind, "0.3")
        index = depth[details["layer_type"].to_numpy() == kind]
        top.scatter(index, rows["alpha"], s=14, color=colour, label=kind)
        bottom.scatter(index, rows["log_spectral_norm"], s=14, color=colour, label=kind)
    return _finish_depth(fig, top, bottom)


def flow_figure(details: pd.DataFrame) -> Figure | None:
    """Correlation flow: alpha against block, one line per role of a stack of blocks,
    with the ``flow-jump`` layers ringed in black; None when no role has a flow."""
    flows = roles(details)
    if not flows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4 + 0.15 * len(flows)), dpi=90)
    for role, members in flows.items():
        rows = details.loc[[index for _, index in members]]
        blocks = np.array([block for block, _ in members])
        alphas = rows["alpha"].to_numpy(dtype=float)
        jumps = rows["warning"].str.contains("flow-jump").to_numpy()
        ax.plot(blocks, alphas, marker="o", ms=3, lw=1, label=figure_text(role))
        ax.scatter(
            blocks[jumps], alphas[jumps], s=110, facecolors="none", edgecolors="black", lw=1.5
        )
    for level in (2, 6):
        ax.axhline(level, color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("block")
    ax.set_ylabel("alpha")
    ax.set_title("correlation flow (ringed: flow-jump)", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return fig


def _depth_axes() -> tuple[Figure, object, object]:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=90, sharex=True)
    return fig, top, bottom


def _finish_depth(fig: Figure, top, bottom) -> Figure:
    """The 2 and 6 lines of the well-trained alpha band, labels and legend."""
    for level in (2, 6):
        top.axhline(level, color="0.5", ls="--", lw=0.8)
    top.set_ylabel("alpha")
    top.legend(fontsize=7)
    bottom.set_ylabel("log10 spectral norm$^2$")
    bottom.set_xlabel("layer (file order)")
    fig.tight_layout()
    return fig


def histogram_figure(details: pd.DataFrame) -> Figure:
    """Histograms of alpha and alpha-hat over the layers."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8), dpi=90)
    for ax, column, label in zip(
        axes, ("alpha", "alpha_weighted"), ("alpha", "alpha-hat"), strict=True
    ):
        values = details[column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=min(30, max(5, values.size)), color="tab:blue", alpha=0.7)
        ax.set_xlabel(label)
        ax.set_ylabel("layers")
    fig.tight_layout()
    return fig


def series_depth_figure(layers: pd.DataFrame) -> Figure:
    """alpha and log_spectral_norm against depth, one line per model."""
    fig, top, bottom = _depth_axes()
    for model, rows in layers.groupby("model", sort=False):
        top.plot(rows["depth"], rows["alpha"], marker="o", ms=3, lw=1, label=figure_text(model))
        bottom.plot(rows["depth"], rows["log_spectral_norm"], marker="o", ms=3, lw=1)
    return _finish_depth(fig, top, bottom)


def metric_accuracy_figure(models: pd.DataFrame, metric: str, tau: float) -> Figure:
    """One metric against accuracy, with the least-squares line and Kendall's tau."""
    fig, ax = plt.subplots(figsize=(4, 3.2), dpi=90)
    x = models[metric].to_numpy(dtype=float)
    y = models["accuracy"].to_numpy(dtype=float)
    ax.scatter(x, y, color="tab:blue")
    for label, xi, yi in zip(models["model"], x, y, strict=True):
        ax.annotate(
            figure_text(label), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() >= 2 and np.ptp(x[keep]) > 0:
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        grid = np.linspace(x[keep].min(), x[keep].max(), 10)
        ax.plot(grid, intercept + slope * grid, color="black", lw=1)
    ax.set_xlabel(metric)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Kendall tau {tau:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def delta_figure(layers: pd.DataFrame, failing: set[str]) -> Figure:
    """Change of log_spectral_norm and log_norm per matched layer; failing layers in red."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), dpi=90, sharex=True)
    index = np.arange(len(layers))
    colours = ["tab:red" if name in failing else "tab:blue" for name in layers["name"]]
    for ax, column in zip(axes, ("d_log_spectral_norm", "d_log_norm"), strict=True):
        ax.bar(index, layers[column].to_numpy(dtype=float), color=colours)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(column, fontsize=8)
    axes[1].set_xlabel("layer (file order); red: failed the gate")
    fig.tight_layout()
    return fig
