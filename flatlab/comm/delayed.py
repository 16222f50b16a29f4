"""Gossip whose messages arrive late: the simulated mixer with bounded communication delays.

:class:`DelayedMixer` is the :class:`~flatlab.comm.SimulatedMixer` of ``topology`` whose
``mix(X, t)`` reads each neighbour's value from the round its message left, as drawn by a
:class:`~flatlab.topology.faults.MessageDelays` schedule:

``x_i⁺ = Σ_j w_ij(t) x_j(t − d_{ij,t})``,  ``d_ii = 0``,

computed as ``Σ_{d=0}^{τ} (W_t ⊙ [D_t = d]) X_{t−d}``: ``τ + 1`` masked products over the last
``τ + 1`` inputs of the same call. An algorithm may gossip several quantities a step (gradient
tracking mixes ``X`` and ``Y``); each ``mix`` call of a step is its own channel (the ``c``-th
call of every step), with its own past, so a late ``Y`` is ``Y``'s own earlier value. Before
round 0 a late value is the channel's first input (the start). Messages and bytes are counted
as without delays: the same messages are sent, they arrive later.

The past inputs are the mixer's state (:meth:`DelayedMixer.state_dict`), saved in checkpoints
so that a resumed run continues bit for bit. Only ``mix`` is delayed: per-edge ``exchange``
(ECL, NGPD) and push-sum (SGP) are refused by the configuration, and the torch.distributed
backend does not keep its neighbours' past messages (refused too).
"""

from __future__ import annotations

import torch

from flatlab.comm.simulated import SimulatedMixer
from flatlab.errors import FlatlabError
from flatlab.topology import Topology
from flatlab.topology.faults import MessageDelays

__all__ = ["DelayedMixer"]


class DelayedMixer(SimulatedMixer):
    """The simulated mixer of ``topology`` with the messages of ``delays`` arriving late.

    Args:
        topology: The (possibly time-varying, possibly faulty) topology of all ``n`` nodes.
        delays: Which messages are late in each round, and by how much.
        device: Where the mixing matrices and the past values live.
        dtype: dtype of the node stack.
    """

    def __init__(self, topology: Topology, delays: MessageDelays, *,
                 device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = torch.float32) -> None:
        super().__init__(topology, device=device, dtype=dtype, method="dense")
        if not isinstance(delays, MessageDelays) or delays.n != topology.n:
            raise FlatlabError(f"DelayedMixer needs MessageDelays over the topology's "
                               f"{topology.n} nodes, got {delays!r}")
        if topology.stochastic != "doubly":
            raise FlatlabError(f"message delays need doubly stochastic gossip; {topology.name} "
                               f"is {topology.stochastic}-stochastic")
        self.delays = delays
        self.past: list[list[torch.Tensor]] = []  # per channel: inputs, newest first
        self._round: int | None = None
        self._channel = 0

    def mix(self, X: torch.Tensor, t: int = 0, *, row_bytes: int | None = None  # noqa: N803
            ) -> torch.Tensor:
        """``Σ_j w_ij(t) x_j(t − d_{ij,t})`` for every node ``i`` (module docstring)."""
        self._check(X)
        r = t % self.period
        self._count(X, r, row_bytes)  # the same messages as without delays, arriving later
        if t != self._round:
            self._round, self._channel = t, 0
        c, self._channel = self._channel, self._channel + 1
        while len(self.past) <= c:
            self.past.append([])
        past = self.past[c]
        past.insert(0, X.detach().clone())
        del past[self.delays.tau + 1:]
        if self._identity[r]:  # a local step: nothing is sent, nothing is late
            return X.clone()
        W = self._W[r]
        flat = X.reshape(self.n, -1)
        d = torch.as_tensor(self.delays.delays(t), device=self.device)
        out = (W * (d == 0)) @ flat
        for k in range(1, self.delays.tau + 1):
            mask = d == k
            if bool(mask.any()):
                old = past[min(k, len(past) - 1)].reshape(self.n, -1)
                out += (W * mask) @ old
        return out.reshape(X.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The past inputs of every channel: ``channel{c}`` ``[k, n, ...]``, newest first."""
        return {f"channel{c}": torch.stack(p) for c, p in enumerate(self.past) if p}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s past inputs (a resumed run's first step sees them)."""
        past: list[list[torch.Tensor]] = []
        for c in range(len(d)):
            v = d.get(f"channel{c}")
            if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[1] != self.n \
                    or not 1 <= v.shape[0] <= self.delays.tau + 1:
                raise FlatlabError(f"delayed messages of channel {c}: expected "
                                   f"[1..{self.delays.tau + 1}, {self.n}, ...], got "
                                   f"{None if v is None else tuple(v.shape)}")
            past.append([x.to(self.device, self.dtype) for x in v])
        self.past, self._round, self._channel = past, None, 0

    def __repr__(self) -> str:
        return f"DelayedMixer({self.topology.label}, {self.delays.what}, device={self.device})"
