"""Does alpha drift with the aspect ratio Q, plain and with FARMS?  Prints figures (seconds).

    python bench/bench_farms.py [--seeds 0 1 2 3 4] [--m 256] [--size 128] [--windows 5]

For each entry law (Gaussian; Student-t with 3 degrees of freedom, heavy tailed)
and Q in 1, 2, 4, 8 it builds W of shape (Q M) x M with i.i.d. entries (numpy
seed s, one matrix per Q), runs :func:`spectralyzer.pipeline.run_analysis` with
``farms=True`` (windows ``size x size`` at ``windows`` offsets a dimension,
docs/theory.md section 6.1) and prints, per law and Q, the mean and spread over
the seeds of the plain alpha (the full matrix's ESD, fitted by ``--estimator``,
default ``hill``: the Clauset scan on a Gaussian matrix's bounded MP bulk gives
erratic alphas of 5 to 100) and of the FARMS alpha, then each one's drift: the largest minus the
smallest of the per-Q means.  The same entry law should give the same alpha
whatever Q; the plain fit does not, FARMS nearly does.  tests/test_farms.py
checks seeds 5-9 against limits read from seeds 0-4 with this script.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spectralyzer.choices import ESTIMATORS
from spectralyzer.fit.estimators import Estimator
from spectralyzer.pipeline import make_options, run_analysis

QS = (1, 2, 4, 8)
LAWS = ("gaussian", "student-t3")


def matrices(law: str, m: int, seed: int) -> dict[str, torch.Tensor]:
    """One (Q m) x m matrix per Q, i.i.d. entries of ``law``."""
    rng = np.random.default_rng(seed)
    out = {}
    for q in QS:
        shape = (q * m, m)
        w = rng.normal(size=shape) if law == "gaussian" else rng.standard_t(3.0, size=shape)
        out[f"q{q}.weight"] = torch.from_numpy(w)
    return out


def alphas(
    law: str, m: int, seed: int, size: int, windows: int, estimator: str
) -> dict[int, tuple[float, float]]:
    """Q -> (plain alpha, FARMS alpha) of one seed."""
    options = make_options(
        farms=True, farms_size=size, farms_windows=windows, estimator=estimator, device="cpu"
    )
    result = run_analysis(matrices(law, m, seed), options)
    farms = dict(zip(result.details["name"], result.details["alpha"], strict=True))
    out = {}
    for q in QS:
        name = f"q{q}.weight"
        plain = Estimator(estimator).fit(result.spectra[name].esd.evals).alpha
        out[q] = (plain, float(farms[name]))
    return out


def drift_table(
    seeds: list[int], m: int, size: int, windows: int, estimator: str = "hill"
) -> dict[str, dict[int, np.ndarray]]:
    """law -> Q -> array (seeds, 2) of (plain, FARMS) alphas."""
    table: dict[str, dict[int, np.ndarray]] = {}
    for law in LAWS:
        runs = [alphas(law, m, seed, size, windows, estimator) for seed in seeds]
        table[law] = {q: np.array([run[q] for run in runs]) for q in QS}
    return table


def drift(per_q: dict[int, np.ndarray], column: int) -> float:
    """Largest minus smallest of the per-Q means of one column (0 plain, 1 FARMS)."""
    means = [per_q[q][:, column].mean() for q in QS]
    return float(max(means) - min(means))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--estimator", default="hill", choices=ESTIMATORS)
    args = parser.parse_args()
    table = drift_table(args.seeds, args.m, args.size, args.windows, args.estimator)
    print(
        f"estimator {args.estimator}, M = {args.m}, windows {args.size} x {args.size}, "
        f"K = {args.windows}, seeds {args.seeds}"
    )
    print(f"{'law':<11} {'Q':>2}  {'plain alpha':>16}  {'FARMS alpha':>16}")
    for law, per_q in table.items():
        for q, values in per_q.items():
            plain, farms = values.mean(axis=0)
            sp, sf = values.std(axis=0)
            print(f"{law:<11} {q:>2}  {plain:8.3f} +- {sp:5.3f}  {farms:8.3f} +- {sf:5.3f}")
        print(f"{law:<11} drift over Q: plain {drift(per_q, 0):.3f}, FARMS {drift(per_q, 1):.3f}")


if __name__ == "__main__":
    main()
