"""Trap counts of the Krylov path against the whole float64 spectrum, on random matrices.

    python bench/traps_agreement.py [--cases 40] [--seed 0] [--edge 99] [--widths 384,512]

A check, not a test (20-50 s on 2 cores): for each case it draws a matrix
with 768-1536 columns (``--widths``: these instead) (Gaussian; Student-t with 3 and with 2.2 degrees of freedom; or
Gaussian with up to five planted outsized entries), shuffles it as ``--randomize`` does,
and counts the traps twice: from the settled block Krylov space
(:func:`spectralyzer.randomized.krylov_top`) and from the whole float64 spectrum of the
same copy. It prints each disagreement, each fallback to the whole spectrum, and a
summary line (docs/theory.md section 3.8 quotes it).

``--edge K`` then sweeps two planted entries through the trap transition, ``K`` sizes on
each of three shapes (with ``--widths``, a square and a 2.75:1 shape per width), where a
trap sits at the threshold and the stopping rule is most likely to stop early.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spectralyzer import randomized
from spectralyzer.fit.traps import trap_fit
from spectralyzer.shuffle import Shuffler

WIDTHS = (768, 1024, 1536)
EDGE_SHAPES = ((1024, 1024), (2816, 1024), (2048, 768))


def draw(rng: np.random.Generator, case: int, widths: tuple[int, ...] = WIDTHS) -> np.ndarray:
    M = int(rng.choice(widths))
    N = int(M * rng.choice([1, 1.5, 2.75, 4]))
    kind = case % 4
    if kind == 1:
        return rng.standard_t(3, (N, M))
    if kind == 2:
        return rng.standard_t(2.2, (N, M))
    w = rng.standard_normal((N, M))
    if kind == 3:
        for _ in range(int(rng.integers(1, 6))):
            w[rng.integers(N), rng.integers(M)] = rng.uniform(0.5, 3) * np.sqrt(N + M)
    return w


def counts(w: np.ndarray, seed: int) -> tuple[int, int | None]:
    """Traps of the whole float64 spectrum and of the settled Krylov space (None: it fell
    back) of ``w``'s shuffled copy."""
    N, M = w.shape
    copy = Shuffler(seed)(torch.from_numpy(w).float().unsqueeze(0), torch.float32)
    total = float((copy.double() ** 2).sum())
    exact = copy.double()[0]
    evals = torch.linalg.eigvalsh(exact.T @ exact).numpy()
    reference = trap_fit(randomized.full_top(evals, total, M, M), N, M).num_spikes
    top = randomized.krylov_top(copy, total, M, seed)
    return reference, None if top is None else trap_fit(top, N, M).num_spikes


def edge_sweep(points: int, seed: int, shapes=EDGE_SHAPES) -> None:
    """Two planted entries swept through the trap transition on each shape."""
    rng = np.random.default_rng(seed)
    found, disagreements, fallbacks = [], 0, 0
    start = time.perf_counter()
    for N, M in shapes:
        w = rng.standard_normal((N, M))
        for size in np.linspace(0.9, 1.6, points) * (N * M) ** 0.25:
            w[7, 11], w[100, 200] = size, 0.97 * size
            reference, krylov = counts(w, 3)
            found.append(reference)
            fallbacks += krylov is None
            if krylov is not None and krylov != reference:
                disagreements += 1
                print(
                    f"edge {N} x {M}, entry {size:.2f}: DISAGREE krylov {krylov} whole {reference}"
                )
    spread = "/".join(str(c) for c in np.bincount(found))
    print(
        f"edge sweep: {len(found)} cases with 0/1/2 traps {spread}, {disagreements} "
        f"disagreements, {fallbacks} fell back, {time.perf_counter() - start:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edge", type=int, default=0, help="sizes per shape in the edge sweep")
    parser.add_argument("--widths", default=None, help="columns to draw, e.g. 384,512")
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else WIDTHS
    shapes = [(n, w) for w in widths for n in (w, round(2.75 * w))] if args.widths else EDGE_SHAPES
    rng = np.random.default_rng(args.seed)
    compared = disagreements = fallbacks = 0
    start = time.perf_counter()
    for case in range(args.cases):
        w = draw(rng, case, widths)
        N, M = w.shape
        reference, found = counts(w, case)
        if found is None:
            fallbacks += 1
            print(f"case {case}: {N} x {M}: the Krylov space fell back ({reference} traps)")
            continue
        compared += 1
        if found != reference:
            disagreements += 1
            print(f"case {case}: {N} x {M}: DISAGREE krylov {found} whole spectrum {reference}")
    print(
        f"{compared} compared, {disagreements} disagreements, {fallbacks} fell back to the "
        f"whole spectrum, {time.perf_counter() - start:.1f} s"
    )
    if args.edge:
        edge_sweep(args.edge, args.seed, shapes)


if __name__ == "__main__":
    main()
