"""The options of an analysis: everything that changes its numbers, checked on construction."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .choices import DEVICES, EXPERT_MODES, PRECISION_NAMES
from .errors import OptionError
from .fit.estimators import Estimator
from .layers import Selection
from .threads import MAX_THREADS
from .windows import FarmsSettings


@dataclass(frozen=True)
class AnalysisOptions:
    """Everything that changes the numbers of an analysis.

    Checked on construction (the selection checks itself): a bad value raises
    :class:`~spectralyzer.errors.OptionError` naming the field, before any file
    is read.
    """

    selection: Selection = field(default_factory=Selection)
    randomize: bool = False  # correlation-trap check on a randomised copy of each matrix
    seed: int = 0  # seeds the randomisation
    normalize: bool = False  # divide eigenvalues by N (default: eigenvalues of W^T W)
    fix_fingers: bool = False  # clip outsized top eigenvalues from the power-law fit
    tail_tests: bool = False  # test the power-law tail against its alternatives
    device: str = "auto"
    trust_pickle: bool = False
    threads: int | None = None  # torch.set_num_threads for the run; None: torch's choice
    precision: str = "float64"  # Gram products and eigensolver (docs/theory.md section 1.5)
    # the alpha estimator and FARMS (docs/theory.md section 6.1)
    estimator: str = "clauset"
    hill_k: str | int = "median"  # hill: "median", "alphaq" or a tail size
    xmin_peak_compat: bool = False  # xmin-peak: the released code's lower limit
    farms: bool = False  # fit the pooled ESD of fixed-shape windows
    farms_size: int = FarmsSettings.size  # n_req
    farms_windows: int = FarmsSettings.windows  # K
    farms_ratio: float = FarmsSettings.ratio  # Q'
    split: bool = True  # fused q/k/v and gate/up tensors as their parts (spectralyzer.layouts)
    expert_rows: str = "each"  # expert matrices: "each" a row, "mean" a row per group, "skip"
    adapter: str | os.PathLike[str] | None = None  # a PEFT LoRA adapter folder on the source

    def __post_init__(self) -> None:
        if not isinstance(self.selection, Selection):
            raise OptionError("selection", f"must be a Selection, not {self.selection!r}")
        for key in ("randomize", "normalize", "fix_fingers", "tail_tests", "trust_pickle", "split"):
            if not isinstance(getattr(self, key), bool):
                raise OptionError(key, f"must be True or False, not {getattr(self, key)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise OptionError("seed", f"must be an integer, not {self.seed!r}")
        if self.precision not in PRECISION_NAMES:
            raise OptionError(
                "precision",
                f"must be one of {', '.join(PRECISION_NAMES)}, not {self.precision!r}",
            )
        if self.expert_rows not in EXPERT_MODES:
            raise OptionError(
                "expert_rows",
                f"must be one of {', '.join(EXPERT_MODES)}, not {self.expert_rows!r}",
            )
        if self.device not in DEVICES:
            raise OptionError("device", f"must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.threads is not None and (
            not isinstance(self.threads, int)
            or isinstance(self.threads, bool)
            or not 1 <= self.threads <= MAX_THREADS
        ):
            raise OptionError(
                "threads", f"must be an integer from 1 to {MAX_THREADS}, not {self.threads!r}"
            )
        if self.adapter is not None and not isinstance(self.adapter, (str, os.PathLike)):
            raise OptionError("adapter", f"must be a folder path, not {self.adapter!r}")
        object.__setattr__(self, "hill_k", self.fit_estimator.hill_k)  # checks the estimator
        if self.fix_fingers and self.estimator != "clauset":
            raise OptionError("fix_fingers", "applies to the clauset estimator only")
        if not isinstance(self.farms, bool):
            raise OptionError("farms", f"must be True or False, not {self.farms!r}")
        windows = FarmsSettings(self.farms_size, self.farms_windows, self.farms_ratio)
        if not self.farms and windows != FarmsSettings():
            changed = next(
                k
                for k in ("size", "windows", "ratio")
                if getattr(windows, k) != getattr(FarmsSettings(), k)
            )
            raise OptionError(f"farms_{changed}", "applies only with --farms")

    @property
    def fit_estimator(self) -> Estimator:
        """The alpha estimator these options name (checked)."""
        return Estimator(self.estimator, self.hill_k, self.xmin_peak_compat)

    @property
    def farms_settings(self) -> FarmsSettings | None:
        """The FARMS windows, or None without ``farms``."""
        if not self.farms:
            return None
        return FarmsSettings(self.farms_size, self.farms_windows, self.farms_ratio)

    def estimator_record(self) -> dict[str, Any]:
        """The estimator and FARMS settings as every output records them."""
        farms = self.farms_settings
        return {**self.fit_estimator.record(), "farms": farms.record() if farms else None}


def make_options(
    *,
    layers: str | None = None,
    exclude: str | None = None,
    types: tuple[str, ...] | None = None,
    min_evals: int = 8,
    max_evals: int | None = 16384,
    conv_mode: str = "slices",
    roles: tuple[str, ...] | None = None,
    **rest: Any,
) -> AnalysisOptions:
    """AnalysisOptions from the flat keyword arguments of :func:`analyze` (validated)."""
    selection = Selection(layers, exclude, types, min_evals, max_evals, conv_mode, roles)
    return AnalysisOptions(selection=selection, **rest)
