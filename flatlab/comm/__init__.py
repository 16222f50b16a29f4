"""Mixers: how nodes communicate (gossip ``W_t X``, per-edge exchange, all-reduce mean).

Two protocols declare what a mixer offers (:mod:`flatlab.comm.protocols`): :class:`Mixer`, all an
algorithm may use, and :class:`CollectiveGroup`, what the runner and the measures use besides.

:class:`SimulatedMixer` holds every node in one process; :class:`DistributedMixer` spreads them
over torch.distributed ranks (gloo or NCCL) with real point-to-point messages, and
:mod:`flatlab.comm.process` joins the process group from ``torchrun``'s environment and names a
lost rank when communication fails. :class:`DelayedMixer` is the simulated mixer whose messages
arrive late (bounded delays, :class:`flatlab.topology.faults.MessageDelays`), and
:class:`DelayedDistributedMixer` its torch.distributed counterpart.
:mod:`flatlab.comm.compress` holds the compression operators of compressed gossip (top-k,
random-k, scaled sign, QSGD), vectorized over nodes, with their quality ``ω`` and the bytes they
send.

>>> import torch, flatlab
>>> mixer = flatlab.comm.SimulatedMixer(flatlab.topology.make("ring", 4), device="cpu")
>>> mixer.mix(torch.eye(4)).sum(0)
tensor([1., 1., 1., 1.])
>>> int(mixer.stats.messages.sum())  # 4 nodes, 2 neighbours each
8
"""

from flatlab.comm import compress
from flatlab.comm.base import CommStats, EdgeSlots
from flatlab.comm.delayed import DelayedDistributedMixer, DelayedMixer
from flatlab.comm.distributed import DistributedMixer
from flatlab.comm.protocols import CollectiveGroup, Mixer
from flatlab.comm.simulated import MIX_METHODS, SimulatedMixer

__all__ = ["Mixer", "CollectiveGroup", "CommStats", "EdgeSlots", "SimulatedMixer",
           "DistributedMixer", "DelayedMixer", "DelayedDistributedMixer", "MIX_METHODS",
           "compress"]
