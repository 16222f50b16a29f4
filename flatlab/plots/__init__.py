"""Figures over results tables (seaborn/matplotlib; they read data, never compute it)."""

from flatlab.plots.compression import compression
from flatlab.plots.heterogeneity import heterogeneity
from flatlab.plots.primal_dual import primal_dual
from flatlab.plots.spectral import spectral_gap
from flatlab.plots.training import training_curves

__all__ = ["spectral_gap", "training_curves", "heterogeneity", "primal_dual", "compression"]
