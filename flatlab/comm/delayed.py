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

The past inputs are the mixer's state (:meth:`DelayedMixer.state_dict`, rows first:
``[n, k, ...]``), saved in checkpoints so that a resumed run continues bit for bit, on either
backend. Only ``mix`` is delayed: per-edge ``exchange`` (ECL, NGPD) and push-sum (SGP) are
refused by the configuration.

:class:`DelayedDistributedMixer` does the same over torch.distributed: each rank keeps, per
channel, the last ``τ + 1`` values of its own rows and of the neighbour rows it receives (what
it mixes), so a simulated run and a distributed one with the same seed read the same late
values; its graph must be static (the rows a rank receives are then the same every round).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flatlab.comm.distributed import DistributedMixer
from flatlab.comm.simulated import SimulatedMixer
from flatlab.engine.stack import to_device
from flatlab.errors import FlatlabError
from flatlab.topology import Topology
from flatlab.topology.faults import MessageDelays

__all__ = ["DelayedMixer", "DelayedDistributedMixer"]


class _Past:
    """The last ``τ + 1`` inputs of each ``mix`` call of a step (a channel), newest first."""

    def __init__(self, tau: int) -> None:
        self.tau = tau
        self.channels: list[list[torch.Tensor]] = []
        self._round: int | None = None
        self._next = 0
        self._drawn: tuple[int, np.ndarray] | None = None

    def delays(self, t: int, model: MessageDelays) -> np.ndarray:
        """Round ``t``'s delays, drawn once however many quantities the round gossips."""
        if self._drawn is None or self._drawn[0] != t:
            self._drawn = (t, model.delays(t))
        return self._drawn[1]

    def push(self, t: int, values: torch.Tensor) -> list[torch.Tensor]:
        """Record this call's values (the ``c``-th call of round ``t``); its channel's past."""
        if t != self._round:
            self._round, self._next = t, 0
        c, self._next = self._next, self._next + 1
        while len(self.channels) <= c:
            self.channels.append([])
        past = self.channels[c]
        past.insert(0, values.detach().clone())
        del past[self.tau + 1:]
        return past

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``channel{c}``: ``[rows, k, ...]``, rows first (a checkpoint gathers rows)."""
        return {f"channel{c}": torch.stack(p, dim=1) for c, p in enumerate(self.channels) if p}

    def load(self, d: dict[str, torch.Tensor], rows: int, pick: Any = None,
             device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Restore from full ``[n, k, ...]`` tensors, keeping rows ``pick`` (default all)."""
        channels = []
        for c in range(len(d)):
            v = d.get(f"channel{c}")
            if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[0] != rows \
                    or not 1 <= v.shape[1] <= self.tau + 1:
                raise FlatlabError(f"delayed messages of channel {c}: expected [{rows}, "
                                   f"1..{self.tau + 1}, ...], got "
                                   f"{None if v is None else tuple(v.shape)}")
            v = v if pick is None else v[pick]
            channels.append([x.to(device, dtype) for x in v.unbind(1)])
        self.channels, self._round, self._next = channels, None, 0


def _late_mix(W: torch.Tensor, d: np.ndarray, past: list[torch.Tensor]) -> torch.Tensor:  # noqa: N803
    """``Σ_d (W ⊙ [D = d]) V_{t−d}``, the delayed mix.

    ``W`` is on the device, the delays ``D`` (same shape) on the host, ``past`` the values mixed,
    newest first (the oldest stands in before round 0). Only the delays drawn this round are
    visited, chosen on the host: no device sync per delay.
    """
    out = None
    for k in np.unique(d):  # ascending: the on-time values first
        late = to_device(torch.as_tensor(d == k, device="cpu"), W.device)
        term = (W * late) @ past[min(int(k), len(past) - 1)]
        out = term if out is None else out.add_(term)
    return out


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
        self.past = _Past(delays.tau)

    def mix(self, X: torch.Tensor, t: int = 0, *, row_bytes: int | None = None  # noqa: N803
            ) -> torch.Tensor:
        """``Σ_j w_ij(t) x_j(t − d_{ij,t})`` for every node ``i`` (module docstring)."""
        self._check(X)
        r = t % self.period
        self._count(X, r, row_bytes)  # the same messages as without delays, arriving later
        flat = X.reshape(self.n, -1)
        past = self.past.push(t, flat)
        if self._identity[r]:  # a local step: nothing is sent, nothing is late
            return X.clone()
        return _late_mix(self._W[r], self.past.delays(t, self.delays), past).reshape(X.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The past inputs of every channel: ``channel{c}`` ``[n, k, ...]``, newest first."""
        return self.past.state_dict()

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s past inputs (a resumed run's first step sees them)."""
        self.past.load(d, self.n, device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"DelayedMixer({self.topology.label}, {self.delays.what}, device={self.device})"


class DelayedDistributedMixer(DistributedMixer):
    """:class:`DelayedMixer` over torch.distributed processes (module docstring).

    Each rank mixes its ``k`` rows from the ``k + m`` rows it holds or receives in a round,
    ``Σ_d (W_loc ⊙ [D_loc = d]) V_{t−d}`` with ``V = [own rows; received rows]`` and ``W_loc``,
    ``D_loc`` the matching block of ``W`` and of the round's delays.

    Args:
        topology: A static topology of all ``n`` nodes (doubly stochastic).
        delays: Which messages are late in each round, and by how much.
        group: Process group (default: the default group).
        device: Device of the node stack.
        dtype: dtype of the node stack.
    """

    def __init__(self, topology: Topology, delays: MessageDelays, *,
                 group: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if topology.time_varying:
            raise FlatlabError(f"message delays on the distributed backend need a static graph "
                               f"(the rows a rank receives must not change); {topology.name} "
                               "varies; accepted: backend=simulated")
        if not isinstance(delays, MessageDelays) or delays.n != topology.n:
            raise FlatlabError(f"DelayedDistributedMixer needs MessageDelays over the "
                               f"topology's {topology.n} nodes, got {delays!r}")
        super().__init__(topology, group=group, device=device, dtype=dtype)
        r = self._rounds[0]
        lo = self.local_rows.start
        self._peers = sorted(r.recv)
        cols = np.concatenate([np.arange(lo, lo + self.k)]
                              + [np.asarray(r.recv[q]) for q in self._peers]).astype(np.int64)
        self._cols = torch.as_tensor(cols, device="cpu")
        self._W_loc = torch.as_tensor(topology.matrix(0)[lo:lo + self.k][:, cols],
                                      dtype=self.dtype, device=self.device)
        self.delays = delays
        self.past = _Past(delays.tau)

    def mix(self, X: torch.Tensor, t: int = 0, *, row_bytes: int | None = None  # noqa: N803
            ) -> torch.Tensor:
        """``Σ_j w_ij x_j(t − d_{ij,t})`` for this rank's rows (the class docstring)."""
        self._check(X)
        r = self._rounds[0]
        flat, recvs, wait = self._post_rows(X, t)
        wait()
        self._count(r, flat, X, row_bytes)
        V = torch.cat([flat, *(recvs[q] for q in self._peers)])  # noqa: N806
        past = self.past.push(t, V)
        lo = self.local_rows.start
        d = self.past.delays(t, self.delays)[lo:lo + self.k][:, self._cols.numpy()]
        return _late_mix(self._W_loc, d, past).reshape(X.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's own rows of every channel's past, ``[k, h, numel]``.

        A checkpoint gathers them to ``[n, h, numel]``, as :class:`DelayedMixer` saves them.
        """
        return {name: v[:self.k] for name, v in self.past.state_dict().items()}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Restore from the full ``[n, h, ...]`` past: own rows and the neighbours' received."""
        self.past.load(d, self.n, pick=self._cols, device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        return (f"DelayedDistributedMixer({self.topology.label}, {self.delays.what}, rank "
                f"{self.rank} of {self.world_size})")
