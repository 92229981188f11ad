"""The ESD panels of an analysis: what a per-layer ESD figure draws (no matplotlib here).

One place for the model report's figures and ``spectralyzer plot``: the layers
whose ESD is finite, with their eigenvalues on the scale the metrics were
computed on (divided by N when the analysis normalised them).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fit.traps import ShuffledTop
from ..pipeline import Analysis, AnalysisOptions, Source, run_analysis

Panel = tuple[pd.Series, np.ndarray, ShuffledTop | None]  # (details row, ESD, randomised top)


def esd_panels(analysis: Analysis) -> list[Panel]:
    """One panel per analysed layer with a finite ESD, in the order of ``analysis.details``."""
    normalized = bool(analysis.summary.get("normalize", False))
    panels = []
    for _, row in analysis.details.iterrows():
        spectra = analysis.spectra.get(row["name"])
        if spectra is None or not spectra.esd.finite:
            continue
        scale = 1.0 / row["N"] if normalized else 1.0
        rand = spectra.randomized
        rand = rand.scaled(scale) if rand is not None and rand.finite else None
        panels.append((row, spectra.esd.evals * scale, rand))
    return panels


def plot_layers(source: Source, options: AnalysisOptions = AnalysisOptions()) -> bytes:  # noqa: B008
    """A PNG of the ESDs of the selected layers of a checkpoint, side by side.

    Raises :class:`InputError` when no selected layer has a finite ESD.
    Needs matplotlib (the ``plots`` extra).
    """
    from .html import png
    from .plots import esd_grid

    panels = esd_panels(run_analysis(source, options))
    if not panels:
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<model>"
        pattern = options.selection.layers
        raise InputError(where, f"no analysable layer matches {pattern!r}")
    return png(esd_grid(panels))
