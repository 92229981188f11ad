"""Which matrices are decomposed together, and the tensors they are cut from.

The engine stacks same-shaped matrices into one batched eigensolver call;
these helpers choose the batches and hold each loaded tensor exactly as long
as matrices are still to be cut from it (an expert stack of 64 experts is read
once, not 64 times), so memory stays bounded by a batch plus its tensors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from itertools import groupby

import torch

from .io.base import Checkpoint
from .layers import LayerSpec, to_matrices


def batches_of(specs: list[LayerSpec], batch_elements: int) -> Iterable[list[LayerSpec]]:
    """Groups of same-shaped layers holding at most ``batch_elements`` entries each.

    Specs are first cut into windows of whole source tensors (about
    ``batch_elements`` entries, in the given order), then grouped by shape within
    a window: the matrices cut from one tensor (experts, q/k/v) land in one
    window, so the tensor is loaded once and held only while that window runs.
    """
    sources = (list(group) for _, group in groupby(specs, key=lambda spec: spec.source))
    for window in _runs(sources, batch_elements):
        by_shape: dict[tuple[int, int], list[LayerSpec]] = defaultdict(list)
        for spec in window:
            by_shape[(spec.N, spec.M)].append(spec)
        for group in by_shape.values():
            yield from _runs(([spec] for spec in group), batch_elements)


def _runs(groups: Iterable[list[LayerSpec]], limit: int) -> Iterator[list[LayerSpec]]:
    """The groups joined, in order, into runs of at most ``limit`` matrix entries; a group
    is never parted (one larger than ``limit`` is a run of its own)."""
    run: list[LayerSpec] = []
    size = 0
    for members in groups:
        n = sum(spec.num_slices * spec.N * spec.M for spec in members)
        if run and size + n > limit:
            yield run
            run, size = [], 0
        run.extend(members)
        size += n
    if run:
        yield run


class Sources:
    """Source tensors loaded once and held until the last spec cut from them is done.

    Counts the specs of each source still to come; a tensor is dropped when its
    count reaches zero (with :func:`batches_of`' windows, at most one window's
    tensors are held at a time). A spec of a whole tensor is loaded and dropped
    at once, as before.
    """

    def __init__(self, checkpoint: Checkpoint, specs: Iterable[LayerSpec]) -> None:
        self.checkpoint = checkpoint
        self.remaining: dict[str, int] = defaultdict(int)
        for spec in specs:
            self.remaining[spec.source] += 1
        self.held: dict[str, torch.Tensor] = {}

    def matrices(self, spec: LayerSpec) -> torch.Tensor:
        """``to_matrices`` of the spec's source tensor (loaded on first use)."""
        tensor = self.held.get(spec.source)
        if tensor is None:
            tensor = self.checkpoint.load(spec.source)
        self.remaining[spec.source] -= 1
        if self.remaining[spec.source] > 0:
            self.held[spec.source] = tensor
        else:
            self.held.pop(spec.source, None)
        return to_matrices(tensor, spec)
