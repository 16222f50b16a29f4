"""Figures over results tables (seaborn/matplotlib; they read data, never compute it)."""

from flatlab.plots.compression import compression
from flatlab.plots.faults import faults
from flatlab.plots.heterogeneity import heterogeneity
from flatlab.plots.implicit_flatness import implicit_flatness
from flatlab.plots.mechanism import mechanism
from flatlab.plots.primal_dual import primal_dual
from flatlab.plots.sensitivity import sensitivity
from flatlab.plots.spectral import spectral_gap
from flatlab.plots.tradeoff import (
    accuracy_vs_flatness,
    batch_tradeoff,
    bound_overlay,
    consensus_over_training,
    escape,
    tradeoff_figures,
    tradeoff_scatter,
)
from flatlab.plots.training import training_curves

__all__ = ["spectral_gap", "training_curves", "heterogeneity", "implicit_flatness", "mechanism",
           "faults", "primal_dual", "compression", "sensitivity", "tradeoff_scatter",
           "batch_tradeoff", "accuracy_vs_flatness",
           "consensus_over_training", "escape", "bound_overlay", "tradeoff_figures"]
