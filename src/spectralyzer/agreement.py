"""How well a model metric predicts accuracy: pooled, and within each architecture family.

Agreement is measured as in Martin, Peng & Mahoney (Nature Communications 12,
4122 (2021)): Kendall's tau and Spearman's rho of the ranks, R^2 and RMSE of the
least-squares line ``accuracy ~ a + b * metric``.

Pooling models of different architectures can reverse a correlation that holds
within every family (Simpson's paradox; Martin & Mahoney, arXiv 2106.00734):
see docs/theory.md section 6.8. So the correlations are also given per family
(same multiset of layer shapes, unless the user labels families), and a sign that
differs between a family and the pool is reported.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .choices import RANK_METRICS

#: Columns of every agreement row after the metric (and family).
AGREEMENT = ("n", "kendall_tau", "spearman_rho", "r2", "rmse")


def agreement(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Rank and linear agreement of paired samples (NaN pairs dropped).

    ``r2 = 1 - SS_res / SS_tot`` and ``rmse = sqrt(SS_res / n)`` of the
    least-squares line; tau is Kendall's tau-b.
    """
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    nan = math.nan
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(x.size), "kendall_tau": nan, "spearman_rho": nan, "r2": nan, "rmse": nan}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    ss_res, ss_tot = float(residual @ residual), float(((y - y.mean()) ** 2).sum())
    return {
        "n": int(x.size),
        "kendall_tau": float(stats.kendalltau(x, y).statistic),
        "spearman_rho": float(stats.spearmanr(x, y).statistic),
        "r2": 1.0 - ss_res / ss_tot,
        "rmse": math.sqrt(ss_res / x.size),
    }


def metric_accuracy_table(models: pd.DataFrame, target: str) -> pd.DataFrame:
    """Kendall tau, Spearman rho, R^2 and RMSE of ``target ~ a + b * metric`` per metric."""
    rows = []
    y = models[target].to_numpy(dtype=float)
    for metric in RANK_METRICS:
        x = models[metric].to_numpy(dtype=float)
        rows.append({"metric": metric, **agreement(x, y)})
    return pd.DataFrame(rows)


def within_families(models: pd.DataFrame, target: str, family: str = "family") -> pd.DataFrame:
    """:func:`metric_accuracy_table` of each family's models: one row per (family, metric)."""
    frames = []
    for name, members in models.groupby(family, sort=False):
        table = metric_accuracy_table(members, target)
        table.insert(0, "family", name)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def sign_reversals(pooled: pd.DataFrame, within: pd.DataFrame) -> list[str]:
    """A line for each (metric, family) whose Kendall tau has the opposite sign to the pooled one.

    Ties (tau 0) and families too small for a tau (NaN) reverse nothing.
    """
    pooled_tau = dict(zip(pooled["metric"], pooled["kendall_tau"], strict=True))
    lines = []
    for family, metric, tau in zip(
        within["family"], within["metric"], within["kendall_tau"], strict=True
    ):
        whole = pooled_tau.get(metric, math.nan)
        if np.sign(tau) * np.sign(whole) < 0:
            lines.append(
                f"Simpson's paradox: {metric} against accuracy has Kendall tau {whole:+.2f} "
                f"over all models but {tau:+.2f} within family {family}; "
                "trust the within-family correlations"
            )
    return lines


def shape_families(shapes: Sequence[Sequence[Hashable]]) -> list[str]:
    """Family labels ``A``, ``B``, ... by first appearance of each multiset of layer shapes."""
    keys = [tuple(sorted(map(str, model))) for model in shapes]
    first: dict[tuple, str] = {}
    for key in keys:
        first.setdefault(key, _letters(len(first)))
    return [first[key] for key in keys]


def _letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (spreadsheet column names)."""
    name = ""
    i += 1
    while i:
        i, rest = divmod(i - 1, 26)
        name = chr(ord("A") + rest) + name
    return name
