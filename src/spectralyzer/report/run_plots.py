"""Figures of a training run: metrics along the steps, per layer role and per model.

The x axis is the ``step`` parsed from the checkpoint names when every model has
one, else the order of the models in the series. A well-trained layer's alpha
lies in [2, 6] (docs/theory.md section 3.5); a layer going under 2 during training
is the alarm of docs/theory.md section 6.9, so the heat maps centre their colours on 2.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..choices import RANK_METRICS  # noqa: E402
from ..escaping import figure_text  # noqa: E402

#: Per-layer metrics drawn along the steps, per role.
ROLE_METRICS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm")


def run_axis(layers: pd.DataFrame) -> tuple[list[str], np.ndarray, str]:
    """The models in run order, their x positions and the axis label."""
    order = list(dict.fromkeys(layers["model"]))
    if "step" in layers and layers["step"].notna().all():
        steps = layers.groupby("model", sort=False)["step"].first()
        if steps.is_unique:
            order = sorted(order, key=lambda m: steps[m])
            return order, np.array([steps[m] for m in order], dtype=float), "step"
    return order, np.arange(len(order), dtype=float), "checkpoint (series order)"


def alpha_heatmap_figure(layers: pd.DataFrame) -> Figure:
    """alpha of every layer (rows, grouped by role, in depth order) at every step (columns)."""
    order, x, xlabel = run_axis(layers)
    roles = list(dict.fromkeys(layers.sort_values("depth")["role"]))
    grids = []
    for role in roles:
        rows = layers[layers["role"] == role]
        grid = rows.pivot_table(
            index="depth", columns="model", values="alpha", aggfunc="first", dropna=False
        )
        grids.append(grid.reindex(columns=order))
    heights = [max(1, len(g)) for g in grids]
    fig, axes = plt.subplots(
        len(roles),
        1,
        figsize=(7, 1.2 + 0.12 * sum(heights) + 0.35 * len(roles)),
        dpi=90,
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    values = layers["alpha"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (1.0, 8.0)
    norm = TwoSlopeNorm(vcenter=2.0, vmin=min(low, 1.9), vmax=max(high, 2.1))
    for ax, role, grid in zip(axes[:, 0], roles, grids, strict=True):
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="RdBu", norm=norm)
        ax.set_yticks([])
        ax.set_ylabel(figure_text(role), rotation=0, ha="right", va="center", fontsize=7)
        ax.set_xticks([])
    ticks = np.linspace(0, len(order) - 1, min(len(order), 8)).round().astype(int)
    axes[-1, 0].set_xticks(ticks, [f"{x[i]:g}" for i in ticks], fontsize=7)
    axes[-1, 0].set_xlabel(xlabel)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="alpha (red: under 2)", shrink=0.8)
    fig.suptitle("alpha per layer along training (rows: layers by depth, per role)", fontsize=9)
    return fig


def role_metrics_figure(layers: pd.DataFrame) -> Figure:
    """Each per-layer metric, averaged over the layers of each role, along the steps."""
    order, x, xlabel = run_axis(layers)
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5), dpi=90, sharex=True)
    for ax, metric in zip(axes.flat, ROLE_METRICS, strict=True):
        means = layers.pivot_table(index="role", columns="model", values=metric, aggfunc="mean")
        for role, row in means.reindex(columns=order).iterrows():
            ax.plot(x, row.to_numpy(dtype=float), marker="o", ms=3, lw=1, label=figure_text(role))
        if metric == "alpha":
            ax.axhline(2, color="0.5", ls="--", lw=0.8)
        ax.set_ylabel(metric, fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.suptitle("layer metrics along training, mean per role", fontsize=9)
    fig.tight_layout()
    return fig


def model_means_figure(models: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    """The model means along the steps, and the accuracy (right axis) when given."""
    order, x, xlabel = run_axis(layers)
    by_model = models.set_index("model").reindex(order)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    for metric in RANK_METRICS:
        ax.plot(x, by_model[metric].to_numpy(dtype=float), marker="o", ms=3, lw=1, label=metric)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("model mean")
    if "accuracy" in by_model:
        right = ax.twinx()
        right.plot(x, by_model["accuracy"].to_numpy(dtype=float), "k--", marker="s", ms=3)
        right.set_ylabel("accuracy (dashed)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("model means along training", fontsize=9)
    fig.tight_layout()
    return fig
