"""Time `fit_power_law` against `powerlaw.Fit`.  A benchmark, not a test: it prints figures.

    python bench/bench_powerlaw.py [--sizes 384 1536 4096] [--repeats 20] [--no-reference]

For each size M it builds two ESDs (eigenvalues of W^T W, W of shape 2M x M,
numpy seed 0): Gaussian entries (MP-like, a steep fitted tail) and Student-t
entries with 2.5 degrees of freedom (heavy tailed).  It prints milliseconds per
fit (best of --repeats for spectralyzer, one run of powerlaw 2.0 with
``parameter_ranges={'alpha': [1, None]}``, the reference of docs/theory.md section 3.2)
and whether alpha, xmin and D agree (relative difference of alpha).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings

import numpy as np

from spectralyzer.fit.powerlaw import PowerLawFit, fit_power_law


def make_esd(m: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (2 * m, m)
    w = rng.normal(size=shape) if kind == "gaussian" else rng.standard_t(2.5, size=shape)
    return np.linalg.eigvalsh(w.T @ w)


def time_ours(evals: np.ndarray, repeats: int) -> tuple[float, PowerLawFit]:
    fit = fit_power_law(evals)  # warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fit_power_law(evals)
        best = min(best, time.perf_counter() - start)
    return best, fit


def time_reference(evals: np.ndarray) -> tuple[float, float, float, float]:
    import powerlaw

    evals = evals[evals > 1e-10]
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        dist = powerlaw.Fit(evals, parameter_ranges={"alpha": [1, None]}, verbose=0).power_law
        alpha, xmin, D = dist.alpha, dist.xmin, dist.D
        elapsed = time.perf_counter() - start
    return elapsed, float(alpha), float(xmin), float(D)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 1536, 4096])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-reference", action="store_true", help="skip powerlaw.Fit")
    args = parser.parse_args()

    header = f"{'esd':>16} {'n':>5} {'ours ms':>8} {'powerlaw ms':>12} {'speed-up':>9}  {'alpha':>8} {'xmin':>10}  agree"
    print(header)
    print("-" * len(header))
    for m in args.sizes:
        for kind in ("gaussian", "student-t2.5"):
            evals = make_esd(m, kind)
            ours, fit = time_ours(evals, args.repeats)
            line = f"{kind:>16} {m:5d} {ours * 1e3:8.2f}"
            if args.no_reference:
                print(f"{line} {'-':>12} {'-':>9}  {fit.alpha:8.4f} {fit.xmin:10.4g}")
                continue
            ref_s, alpha, xmin, D = time_reference(evals)
            rel = abs(fit.alpha / alpha - 1)
            agree = fit.xmin == xmin and rel < 1e-6 and abs(fit.D - D) < 1e-6
            verdict = f"{'yes' if agree else 'NO'} (alpha rel diff {rel:.1e})"
            print(
                f"{line} {ref_s * 1e3:12.1f} {ref_s / ours:8.0f}x  {fit.alpha:8.4f} {fit.xmin:10.4g}  {verdict}"
            )


if __name__ == "__main__":
    main()
