"""Stacks of matrices read in order, optionally ahead of the device's work
(docs/theory.md section 1.5)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from .batching import Sources
from .layers import LayerSpec

#: Tensors read ahead of the GPU's work (each at most the largest layer, in its stored dtype)
PREFETCH_DEPTH = 2


def loaded(
    specs: list[LayerSpec], sources: Sources, device: torch.device, depth: int
) -> Iterator[torch.Tensor]:
    """The ``(slices, N, M)`` stack of each spec, in order, cut from ``sources``.

    With ``depth > 0`` a reader thread keeps up to ``depth`` stacks read ahead, in pinned
    memory and already on their way to ``device`` (asynchronous copies), so reading the
    file and copying to the GPU overlap the GPU's products and eigensolver. Only the
    reader thread touches ``sources`` (and its checkpoint).
    """
    if depth == 0:
        for spec in specs:
            yield sources.matrices(spec)
        return

    def read(spec: LayerSpec) -> torch.Tensor:
        stack = sources.matrices(spec).contiguous()
        return stack.pin_memory().to(device, non_blocking=True)

    with ThreadPoolExecutor(1) as reader:
        pending = [reader.submit(read, spec) for spec in specs[:depth]]
        for i in range(len(specs)):
            stack = pending.pop(0).result()
            if i + depth < len(specs):
                pending.append(reader.submit(read, specs[i + depth]))
            yield stack
