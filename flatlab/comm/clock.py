"""A simulated wall clock: what a run's steps would take on a network (issue 34).

A step of a synchronous method ends when its slowest node has computed its gradient and sent its
messages::

    T_t = max_i ( c_{i,t} + b_{i,t} / B ) + L · [anything sent at step t]

with ``c_{i,t}`` node ``i``'s compute time, log-normal with mean ``m`` and coefficient of
variation ``v`` (``σ² = ln(1 + v²)``, ``μ = ln m − σ²/2``; ``v = 0``: exactly ``m``), drawn from
``seed_for(seed, "clock", t)`` for every node at once (so it is the same however the nodes are
split over processes), ``b_{i,t}`` the bytes node ``i`` sent at step ``t`` (what the mixer
counted: compressed messages count their encoding), ``B`` the link bandwidth and ``L`` the
latency of a round. The run's ``sim_time`` is ``Σ_t T_t``. With many nodes and a variable compute
time, ``E max_i c_i`` grows with ``n``: the synchronous method waits for its slowest node.

An **asynchronous** network (``asynchronous=True``: AD-PSGD's pairwise gossip,
:class:`flatlab.topology.faults.AsyncGossip`) waits for nobody: each node computes and exchanges
at its own pace, so a round, in which every node steps once on average, takes the nodes' mean
time, ``T_t = mean_i ( c_{i,t} + b_{i,t} / B ) + L · [anything sent at step t]`` (a node's own
exchange still pays the latency). With i.i.d. compute times this is the renewal rate of the
nodes' steps; it ignores that a node a neighbour is averaging with waits for the lock.

A **deadline** ``D`` closes a synchronous round's computation: a node with ``c_{i,t} > D`` is a
straggler at step ``t`` (:meth:`WallClock.late`; its update carries no gradient) and the round
waits ``min(c_{i,t}, D)`` for it, so ``T_t = max_i ( min(c_{i,t}, D) + b_{i,t} / B ) + L``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flatlab.seeds import seed_for

__all__ = ["WallClock"]


@dataclass(frozen=True)
class WallClock:
    """The cost model of one run.

    Attributes:
        n: Nodes of the network.
        compute: Mean compute seconds of a node's step.
        compute_cv: Coefficient of variation of the compute time (0: fixed).
        latency: Seconds a round that exchanges anything adds.
        bandwidth: Bytes per second of a node's link (None: no transfer time).
        seed: The run's seed.
        asynchronous: A round takes the nodes' mean time, not the slowest's.
        deadline: Seconds after which a synchronous round stops waiting for a node's
            gradient (None: it waits for every node).
    """

    n: int
    compute: float
    compute_cv: float = 0.0
    latency: float = 0.0
    bandwidth: float | None = None
    seed: int = 0
    asynchronous: bool = False
    deadline: float | None = None

    def compute_times(self, t: int) -> np.ndarray:
        """``c_{i,t}`` of every node at step ``t`` (seconds, ``[n]``)."""
        if self.compute_cv == 0 or self.compute == 0:
            return np.full(self.n, float(self.compute))
        s2 = math.log1p(self.compute_cv**2)
        mu = math.log(self.compute) - s2 / 2
        rng = np.random.default_rng(seed_for(self.seed, "clock", int(t)))
        return rng.lognormal(mu, math.sqrt(s2), self.n)

    def node_times(self, t: int, sent: np.ndarray, rows: slice) -> np.ndarray:
        """``c_{i,t} + b_{i,t} / B`` of the nodes ``rows`` that sent ``sent`` bytes."""
        c = self.compute_times(t)[rows]
        if self.deadline is not None:
            c = np.minimum(c, self.deadline)
        if self.bandwidth is None:
            return c
        return c + np.asarray(sent, dtype=float) / self.bandwidth

    def late(self, t: int) -> np.ndarray:
        """The nodes whose compute time at step ``t`` passes the deadline (booleans ``[n]``)."""
        if self.deadline is None:
            return np.zeros(self.n, dtype=bool)
        return self.compute_times(t) > self.deadline

    def step_seconds(self, slowest: float, anything_sent: bool, mean: float | None = None
                     ) -> float:
        """``T_t``: the slowest node's time (asynchronous: the mean), plus any latency."""
        wait = float(mean) if self.asynchronous and mean is not None else float(slowest)
        return wait + (self.latency if anything_sent else 0.0)
