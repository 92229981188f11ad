"""Fits of an ESD: power-law tail, Marchenko-Pastur bulk, and the 5+1 phases."""

from .mp import MPFit, fit_mp
from .phases import PHASES, classify_phase
from .powerlaw import PowerLawFit, fit_power_law

__all__ = ["PHASES", "MPFit", "PowerLawFit", "classify_phase", "fit_mp", "fit_power_law"]
