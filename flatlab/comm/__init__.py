"""Mixers: how nodes communicate (gossip ``W_t X``, per-edge exchange, all-reduce mean).

>>> import torch, flatlab
>>> mixer = flatlab.comm.SimulatedMixer(flatlab.topology.make("ring", 4), device="cpu")
>>> mixer.mix(torch.eye(4)).sum(0)
tensor([1., 1., 1., 1.])
>>> int(mixer.stats.messages.sum())  # 4 nodes, 2 neighbours each
8
"""

from flatlab.comm.base import CommStats
from flatlab.comm.distributed import DistributedMixer
from flatlab.comm.simulated import MIX_METHODS, SimulatedMixer

__all__ = ["CommStats", "SimulatedMixer", "DistributedMixer", "MIX_METHODS"]
