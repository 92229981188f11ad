"""The ``xmin-peak`` estimator: the KS scan near the ESD's peak (docs/theory.md section 6.1).

AlphaPruning's default (``alpha_peak``), also weightwatcher's ``fix_fingers='xmin_peak'``:

* histogram ``log10 lambda`` of the eigenvalues above the floor in 100 equal
  bins over their range; the peak is ``10^(left edge of the fullest bin)``
  (the first such bin on a tie);
* scan the candidates of :func:`~spectralyzer.fit.powerlaw.fit_power_law`
  with ``0.95 peak <= xmin <= 1.5 peak`` and keep the smallest KS distance.

Compatibility: the released code (AlphaPruning ``lib/esd_utils.py``,
weightwatcher 0.7) writes the lower limit as ``log10(0.95 peak)`` and
compares it with eigenvalues on the linear scale; since ``log10(y) < y`` that
limit lies far below the peak and in practice never binds.  ``compat=True``
reproduces that limit exactly, for numbers comparable with published ones.
"""

from __future__ import annotations

import math

import numpy as np

from .powerlaw import XMIN_FLOOR, PowerLawFit, fit_power_law

PEAK_BINS = 100  # histogram bins of log10(lambda)
PEAK_LOW = 0.95  # xmin >= 0.95 peak (compat: xmin >= log10(0.95 peak))
PEAK_HIGH = 1.5  # xmin <= 1.5 peak


def esd_peak(evals: np.ndarray, bins: int = PEAK_BINS) -> float:
    """``10^(left edge of the fullest bin)`` of a histogram of ``log10`` of positive ``evals``."""
    counts, edges = np.histogram(np.log10(evals), bins=bins)
    return float(10.0 ** edges[int(np.argmax(counts))])


def xmin_peak_range(evals: np.ndarray, compat: bool = False) -> tuple[float, float]:
    """The ``(lo, hi)`` xmin range of the scan for positive ``evals`` (module docstring)."""
    peak = esd_peak(evals)
    low = math.log10(PEAK_LOW * peak) if compat else PEAK_LOW * peak
    return low, PEAK_HIGH * peak


def fit_xmin_peak(
    evals: np.ndarray, *, xmin_floor: float = XMIN_FLOOR, compat: bool = False
) -> PowerLawFit:
    """Power-law fit with ``xmin`` searched near the ESD's peak; fails like :func:`fit_power_law`."""
    x = np.asarray(evals, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        return fit_power_law(x, xmin_floor=xmin_floor)  # its error or failure
    kept = x[x > xmin_floor]
    if kept.size == 0:
        return PowerLawFit.failed(f"no eigenvalues above {xmin_floor:g}")
    return fit_power_law(kept, xmin_floor=xmin_floor, xmin_range=xmin_peak_range(kept, compat))
