"""Decentralized algorithms as init/step pairs over plain state, and a registry.

>>> import flatlab
>>> flatlab.algorithms.available()
['centralized', 'consensus', 'diffusion', 'diffusion-cta']
>>> flatlab.algorithms.make("dsgd")
Diffusion()
>>> flatlab.algorithms.make("centralized", momentum=0.9)
Centralized(momentum=0.9, nesterov=False)

Each algorithm's docstring states its update rule in matrix form, its messages, its state, its
fixed point and its source (reference/algorithms.md).
"""

from flatlab.algorithms.base import (
    Algorithm,
    State,
    aliases,
    available,
    get,
    load_state,
    make,
    register,
    state_dict,
)
from flatlab.algorithms.centralized import Centralized, CentralizedState
from flatlab.algorithms.dsgd import Consensus, Diffusion, DiffusionCTA
from flatlab.algorithms.simulate import as_topology, simulate

__all__ = [
    "Algorithm",
    "State",
    "register",
    "make",
    "available",
    "aliases",
    "get",
    "state_dict",
    "load_state",
    "Centralized",
    "CentralizedState",
    "Consensus",
    "Diffusion",
    "DiffusionCTA",
    "simulate",
    "as_topology",
]
