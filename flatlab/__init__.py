"""flatlab: flatness versus optimization in decentralized learning.

The theory layer, usable without training anything:

>>> import flatlab
>>> ring = flatlab.topology.make("ring", 16)
>>> round(flatlab.spectral(ring).rho, 5)
0.94925
>>> b = flatlab.bound("dsgd", topology=ring, T=10_000)
>>> b.dominant
'consensus'

Training, with the same algorithms on a written-down objective first:

>>> import torch
>>> q = flatlab.data.heterogeneous_quadratics(8, 3, seed=0)
>>> xs = flatlab.simulate("diffusion", "ring", q.grad_fn(), torch.zeros(8, 3,
...                       dtype=torch.float64), steps=3000, lr=0.05)
>>> xs.shape                          # every iterate: [steps + 1, n, d]
torch.Size([3001, 8, 3])
>>> bool((xs[-1] - q.x_star).abs().max() > 1e-3)   # diffusion's fixed point is biased
True

Modules: :mod:`flatlab.topology` (graphs, weight rules, schedules), :mod:`flatlab.theory`
(spectral quantities, effective neighbours, bounds, predicted consensus distance, stationary
disagreement curvature),
:mod:`flatlab.data` (datasets, partitions, samplers, test problems), :mod:`flatlab.models`,
:mod:`flatlab.engine` (the node stack and its gradient oracle), :mod:`flatlab.comm` (mixers),
:mod:`flatlab.algorithms` (init/step pairs and :func:`flatlab.simulate`),
:mod:`flatlab.experiment` (configs, runner, sweeps), :mod:`flatlab.results`,
:mod:`flatlab.plots` (figures over result tables). The torch-based modules load on first use,
so the theory layer stays quick to import.
"""

import importlib
from typing import Any

from flatlab import theory, topology
from flatlab.errors import (
    AlgorithmError,
    ConfigError,
    DataError,
    FlatlabError,
    ModelError,
    RankLostError,
    TheoryError,
    TopologyError,
)
from flatlab.theory import (
    Bound,
    ConsensusPrediction,
    DisagreementPrediction,
    SpectralSummary,
    bound,
    effective_neighbors,
    predicted_consensus_distance,
    spectral,
    spectral_gap_study,
    stationary_disagreement,
)
from flatlab.topology import Topology

__version__ = "0.1.0"

_LAZY = ("data", "models", "engine", "comm", "algorithms", "experiment", "results", "plots",
         "curvature", "measures")


def __getattr__(name: str) -> Any:
    """Load the torch-based submodules (and :func:`simulate`) on first access."""
    if name in _LAZY:
        return importlib.import_module(f"flatlab.{name}")
    if name == "simulate":
        from flatlab.algorithms import simulate

        return simulate
    raise AttributeError(f"module 'flatlab' has no attribute {name!r}")


__all__ = [
    "topology",
    "theory",
    "data",
    "models",
    "engine",
    "comm",
    "algorithms",
    "experiment",
    "results",
    "plots",
    "curvature",
    "measures",
    "simulate",
    "Topology",
    "spectral",
    "SpectralSummary",
    "effective_neighbors",
    "bound",
    "Bound",
    "predicted_consensus_distance",
    "ConsensusPrediction",
    "stationary_disagreement",
    "DisagreementPrediction",
    "spectral_gap_study",
    "FlatlabError",
    "TopologyError",
    "TheoryError",
    "DataError",
    "ModelError",
    "AlgorithmError",
    "ConfigError",
    "RankLostError",
    "__version__",
]
