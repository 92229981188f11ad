"""Small checkpoints and a flaky unit of work for the fan-out and cache tests (importable by
worker processes: functions sent to a pool must live in a module, not a test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

#: Shapes of the generated models: three shapes (three cache groups), one conv kernel.
SHAPES = {
    "a.weight": (96, 40),
    "b.weight": (80, 40),
    "c.weight": (72, 24),
    "d.weight": (16, 8, 3, 3),
}


def make_models(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    """``count`` safetensors checkpoints of different random weights (heavy-ish tails)."""
    paths = []
    for seed in range(first_seed, first_seed + count):
        torch.manual_seed(seed)
        heavy = torch.distributions.StudentT(3.0)
        tensors = {
            name: heavy.sample(shape) * 0.1 if seed % 2 else torch.randn(shape)
            for name, shape in SHAPES.items()
        }
        path = folder / f"model{seed:02d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        paths.append(path)
    return paths


def without_timings(document: dict) -> dict:
    """A result document with its wall-clock seconds removed (they never repeat)."""
    text = json.dumps(document, sort_keys=True, default=str)
    document = json.loads(text)
    for part in [document.get("summary"), *(document.get("models") or [])]:
        if isinstance(part, dict):
            part.pop("timings", None)
    return document


def flaky(item: tuple[str, int, str]) -> int:
    """``index * 10``; ``mode`` ``once`` fails the first attempt, ``always`` every attempt,
    ``die`` ends the worker process on the first attempt. Attempts leave files in ``folder``."""
    folder, index, mode = item
    attempt = len([p for p in os.listdir(folder) if p.startswith(f"{index}-")]) + 1
    Path(folder, f"{index}-{attempt}").touch()
    if mode == "always" or (mode == "once" and attempt == 1):
        raise ValueError(f"unit {index} failed on attempt {attempt}")
    if mode == "die" and attempt == 1:
        os._exit(7)
    return index * 10
