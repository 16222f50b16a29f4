"""Decentralized algorithms as init/step pairs over plain state, and a registry.

>>> import flatlab
>>> flatlab.algorithms.available()  # doctest: +NORMALIZE_WHITESPACE
['ad-psgd', 'adagossip', 'centralized', 'choco', 'consensus', 'd2', 'decentlam', 'diffusion',
 'diffusion-cta', 'dsgdm', 'ecl', 'exact-diffusion', 'gradient-tracking', 'momentum-tracking',
 'ngpd', 'qg-dsgdm', 'sgp']
>>> flatlab.algorithms.make("dsgd")
Diffusion()
>>> flatlab.algorithms.make("centralized", momentum=0.9)
Centralized(momentum=0.9, nesterov=False)

Each algorithm's docstring states its update rule in matrix form, its messages, its state, its
fixed point and its source (docs/reference/algorithms.md).
"""

from flatlab.algorithms.base import (
    Algorithm,
    State,
    aliases,
    available,
    derived,
    get,
    hold,
    is_derived,
    load_state,
    make,
    register,
    state_dict,
)
from flatlab.algorithms.bias_corrected import D2, BiasCorrectedState, ExactDiffusion
from flatlab.algorithms.centralized import Centralized, CentralizedState
from flatlab.algorithms.compressed import CHOCO, AdaGossip, AdaGossipState, ChocoState
from flatlab.algorithms.dsgd import ADPSGD, Consensus, Diffusion, DiffusionCTA
from flatlab.algorithms.momentum import DecentLaM, DSGDm, MomentumState, QGDSGDm
from flatlab.algorithms.primal_dual import ECL, NGPD, ECLState, NGPDState
from flatlab.algorithms.push_sum import SGP, PushSumState
from flatlab.algorithms.simulate import as_topology, simulate
from flatlab.algorithms.tracking import (
    GradientTracking,
    MomentumTracking,
    MomentumTrackingState,
    TrackingState,
)

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
    "hold",
    "derived",
    "is_derived",
    "Centralized",
    "CentralizedState",
    "Consensus",
    "Diffusion",
    "DiffusionCTA",
    "ADPSGD",
    "DSGDm",
    "QGDSGDm",
    "DecentLaM",
    "MomentumState",
    "GradientTracking",
    "TrackingState",
    "MomentumTracking",
    "MomentumTrackingState",
    "ExactDiffusion",
    "D2",
    "BiasCorrectedState",
    "ECL",
    "ECLState",
    "NGPD",
    "NGPDState",
    "CHOCO",
    "ChocoState",
    "AdaGossip",
    "AdaGossipState",
    "SGP",
    "PushSumState",
    "simulate",
    "as_topology",
]
