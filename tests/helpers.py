"""Random matrices with known spectra, shared by the tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def gaussian(n: int, m: int, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, size=(n, m))


def spiked(n: int, m: int, strengths: list[float], sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """Gaussian noise plus rank-k signal sum_i theta_i u_i v_i^T (unit u, v).

    For theta^2 > sigma^2 sqrt(N M) (the BBP threshold) the spike leaves the bulk
    at s^2 = (theta^2 + sigma^2 N)(theta^2 + sigma^2 M) / theta^2
    (Benaych-Georges & Nadakuditi 2012).
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, sigma, size=(n, m))
    u, _ = np.linalg.qr(rng.normal(size=(n, len(strengths))))
    v, _ = np.linalg.qr(rng.normal(size=(m, len(strengths))))
    return w + (u * np.asarray(strengths)) @ v.T


def spike_position(theta2: float, n: int, m: int, sigma: float = 1.0) -> float:
    """Outlier eigenvalue of W^T W for a spike of squared strength theta2."""
    return (theta2 + sigma**2 * n) * (theta2 + sigma**2 * m) / theta2


def pareto_entries(n: int, m: int, mu: float, seed: int = 0) -> np.ndarray:
    """Symmetric entries with P(|x| > t) = t^-mu for t >= 1."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(size=(n, m)) ** (-1.0 / mu)
    return magnitude * rng.choice([-1.0, 1.0], size=(n, m))


def low_rank(n: int, m: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, m)) / np.sqrt(rank)


def esd(w: np.ndarray) -> np.ndarray:
    """Reference ESD: squared singular values from numpy's SVD, ascending."""
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)


def package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it; skip if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def skip_unless_installed_locally(what: str, installed: bool) -> None:
    """Skip when ``what`` is genuinely absent and this is not CI; under CI (env CI set),
    where .ci/setup installs everything, its absence is a failure, never a skip."""
    if installed:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed, but CI must have it (.ci/setup installs it)")
    pytest.skip(f"{what} is not installed")


def trained_like(
    shapes: list[tuple[int, int]],
    rank: int,
    strength: float,
    trap: tuple[int, int, int, float] | None = None,
    seed: int = 11,
) -> dict[str, torch.Tensor]:
    """``blocks.{i}.weight``: Student-t (3 degrees of freedom) noise plus a rank-``rank``
    signal, float32; ``trap`` = (layer, row, column, value) plants one outsized entry."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (n, m) in enumerate(shapes):
        noise = rng.standard_t(3.0, (n, m)) / m**0.5
        signal = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m)) * strength
        out[f"blocks.{i}.weight"] = torch.from_numpy(noise + signal).float()
    if trap is not None:
        layer, row, column, value = trap
        out[f"blocks.{layer}.weight"][row, column] = value
    return out
