"""Figures over results tables (seaborn/matplotlib; they read data, never compute it)."""

from flatlab.plots.heterogeneity import heterogeneity
from flatlab.plots.spectral import spectral_gap
from flatlab.plots.training import training_curves

__all__ = ["spectral_gap", "training_curves", "heterogeneity"]
