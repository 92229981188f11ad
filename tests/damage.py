"""Ways to damage (or not) a state dict, for the diff and gate tests; seeded."""

from __future__ import annotations

import numpy as np
import torch


def matrices(sd):
    return [k for k, v in sd.items() if v.ndim == 2 and v.is_floating_point() and min(v.shape) >= 8]


def copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def fp16_round_trip(sd):
    return {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}


def low_rank(sd, keep=0.1, share=0.8):
    """SVD-truncate the first ``share`` of the matrices to ``keep`` of their rank."""
    out, names = copy(sd), matrices(sd)
    damaged = names[: int(len(names) * share)]
    for k in damaged:
        u, s, vt = torch.linalg.svd(out[k].double(), full_matrices=False)
        r = max(1, int(len(s) * keep))
        out[k] = ((u[:, :r] * s[:r]) @ vt[:r]).float()
    return out, damaged


def reinit(sd, count=3, seed=0):
    """Re-initialise ``count`` encoder matrices at random (Kaiming-like scale)."""
    g = torch.Generator().manual_seed(seed)
    out = copy(sd)
    names = [k for k in matrices(sd) if "encoder" in k] or matrices(sd)
    damaged = names[:: max(1, len(names) // count)][:count]
    for k in damaged:
        out[k] = torch.randn(out[k].shape, generator=g) / np.sqrt(out[k].shape[1])
    return out, damaged


def magnitude_prune(sd, fraction=0.9):
    out = copy(sd)
    for k in matrices(sd):
        w = out[k]
        cut = w.abs().flatten().kthvalue(int(w.numel() * fraction)).values
        out[k] = torch.where(w.abs() > cut, w, torch.zeros_like(w))
    return out, matrices(sd)


def add_noise(sd, relative=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = copy(sd)
    for k in matrices(sd):
        out[k] = out[k] + torch.randn(out[k].shape, generator=g) * out[k].std() * relative
    return out, matrices(sd)
