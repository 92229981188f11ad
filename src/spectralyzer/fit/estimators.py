"""Which estimator fits alpha, with its settings (docs/theory.md section 6.1).

``clauset`` is the KS-optimal scan of docs/theory.md 3.1 (the default, numbers
unchanged); ``hill`` fixes xmin (:mod:`~spectralyzer.fit.hill`); ``xmin-peak``
scans near the ESD's peak (:mod:`~spectralyzer.fit.xmin_peak`).  The record of
the settings goes into every output, so numbers from different estimators are
never mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..choices import ESTIMATORS
from ..errors import OptionError
from .hill import HILL_TAILS, MIN_K, fit_hill
from .powerlaw import XMIN_FLOOR, PowerLawFit, fit_power_law
from .xmin_peak import PEAK_BINS, PEAK_HIGH, PEAK_LOW, fit_xmin_peak


@dataclass(frozen=True)
class Estimator:
    """An alpha estimator and its settings; checked on construction (OptionError per field)."""

    name: str = "clauset"
    hill_k: str | int = "median"  # hill only: "median", "alphaq" or a tail size >= 3
    xmin_peak_compat: bool = False  # xmin-peak only: the released code's lower limit

    def __post_init__(self) -> None:
        if self.name not in ESTIMATORS:
            raise OptionError(
                "estimator", f"must be one of {', '.join(ESTIMATORS)}, not {self.name!r}"
            )
        object.__setattr__(self, "hill_k", _tail(self.hill_k))
        if not isinstance(self.xmin_peak_compat, bool):
            raise OptionError(
                "xmin_peak_compat", f"must be True or False, not {self.xmin_peak_compat!r}"
            )
        if self.hill_k != "median" and self.name != "hill":
            raise OptionError("hill_k", "applies to the hill estimator only (--estimator hill)")
        if self.xmin_peak_compat and self.name != "xmin-peak":
            raise OptionError("xmin_peak_compat", "applies to --estimator xmin-peak only")

    def fit(self, evals: np.ndarray, xmin_floor: float = XMIN_FLOOR) -> PowerLawFit:
        """The power-law fit of an ESD by this estimator (eigenvalues above ``xmin_floor``)."""
        if self.name == "hill":
            return fit_hill(evals, k=self.hill_k, xmin_floor=xmin_floor)
        if self.name == "xmin-peak":
            return fit_xmin_peak(evals, xmin_floor=xmin_floor, compat=self.xmin_peak_compat)
        return fit_power_law(evals, xmin_floor=xmin_floor)

    def record(self) -> dict[str, Any]:
        """The estimator and its settings, as written into every output."""
        if self.name == "hill":
            return {"name": "hill", "k": self.hill_k}
        if self.name == "xmin-peak":
            window = ["log10(0.95 peak)" if self.xmin_peak_compat else PEAK_LOW, PEAK_HIGH]
            return {"name": "xmin-peak", "bins": PEAK_BINS, "xmin_over_peak": window}
        return {"name": "clauset"}


def _tail(value: object) -> str | int:
    """``hill_k``: a named tail size, or an integer >= MIN_K (also given as digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value in HILL_TAILS or (
        isinstance(value, int) and not isinstance(value, bool) and value >= MIN_K
    ):
        return value
    raise OptionError(
        "hill_k", f"must be {' or '.join(HILL_TAILS)} or an integer >= {MIN_K}, not {value!r}"
    )
