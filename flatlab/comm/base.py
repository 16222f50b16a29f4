"""What every mixer shares: traffic counts, edge slots and the counting convention.

A mixer offers four things (DESIGN.md §3): ``mix(X, t)`` (``W_t X`` for the rows this process
holds), ``exchange(M, t)`` (per-edge messages), ``mean(X)`` (the exact network average) and
``stats`` (messages and bytes sent so far, per node), declared with the rest of what algorithms
may use in :class:`flatlab.comm.Mixer`; what the runner and the measures use besides is
:class:`flatlab.comm.CollectiveGroup`. Algorithms see nothing else, so the simulated mixer and a
distributed one are interchangeable.

Counting convention (the same for every mixer):

- ``mix``: node ``j`` sends its row to each out-neighbour ``i ≠ j`` with ``w_ij ≠ 0`` in round
  ``t``: one message of ``row.numel() * itemsize`` bytes each.
- ``exchange``: one message per directed edge ``(j → i)`` of round ``t``, counted at the sender.
- ``mean``: a ring all-reduce, ``2(n − 1)`` messages per node carrying ``2(n − 1)/n`` of the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CommStats", "EdgeSlots", "edge_slots", "EdgeSchedule"]


@dataclass
class CommStats:
    """Messages and bytes sent so far, per node (``[n]`` int64 tensors on the CPU)."""

    messages: torch.Tensor
    bytes: torch.Tensor

    @classmethod
    def zeros(cls, n: int) -> CommStats:
        """No traffic yet."""
        return cls(torch.zeros(n, dtype=torch.int64, device="cpu"),
                   torch.zeros(n, dtype=torch.int64, device="cpu"))

    def total_bytes(self) -> int:
        """Bytes sent by all nodes together."""
        return int(self.bytes.sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint."""
        return {"messages": self.messages.clone(), "bytes": self.bytes.clone()}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        self.messages.copy_(d["messages"])
        self.bytes.copy_(d["bytes"])


@dataclass(frozen=True)
class EdgeSlots:
    """Where each edge of one round sits in its endpoints' neighbour lists, for this process.

    Node ``i``'s neighbours are the ``j ≠ i`` with ``w_ij ≠ 0`` or ``w_ji ≠ 0`` in round ``t``,
    in increasing order; the ``s``-th of them is node ``i``'s *slot* ``s``. Per-edge state (the
    duals of primal-dual methods, ``z[i, s]`` for ``z_{i|j}``) lives node-stacked in these
    slots, so it splits over processes with the nodes. Rows are local: row ``r`` is node
    ``local_rows.start + r``.

    Attributes:
        neighbors: ``[k, D]`` int64 global ids of each held node's neighbours, increasing along a
            row and padded with ``n``; ``D`` is the largest degree of the whole network (at least
            1), the same on every process.
        degree: ``[k]`` int64 number of neighbours ``|N_i|``.
        out_rows: ``[E_out]`` local row of the sender of each edge ``(src → dst)`` of
            ``mixer.edges(t)`` (the row order of ``exchange``'s messages).
        out_slots: ``[E_out]`` slot of ``dst`` in the sender's row.
        in_rows: ``[E_in]`` local row of the receiver of each edge of ``mixer.in_edges(t)`` (the
            row order of what ``exchange`` returns).
        in_slots: ``[E_in]`` slot of ``src`` in the receiver's row.
    """

    neighbors: torch.Tensor
    degree: torch.Tensor
    out_rows: torch.Tensor
    out_slots: torch.Tensor
    in_rows: torch.Tensor
    in_slots: torch.Tensor

    def to(self, device: torch.device | str) -> EdgeSlots:
        """The same slots with every tensor on ``device``."""
        return EdgeSlots(*(getattr(self, f.name).to(device) for f in fields(self)))


def edge_slots(w: sp.sparray, rows: slice, out_edges: tuple[torch.Tensor, torch.Tensor],
               in_edges: tuple[torch.Tensor, torch.Tensor]) -> EdgeSlots:
    """The :class:`EdgeSlots` of the mixing matrix ``w`` for the nodes ``rows``.

    Args:
        w: ``W_t`` of all ``n`` nodes (any scipy sparse format).
        rows: The nodes this process holds.
        out_edges: ``(src, dst)`` global ids of the edges whose sender this process holds.
        in_edges: ``(src, dst)`` global ids of the edges whose receiver this process holds.
    """
    coo = sp.coo_array(w)
    n = coo.shape[0]
    off = (coo.row != coo.col) & (coo.data != 0)
    a = np.concatenate([coo.row[off], coo.col[off]]).astype(np.int64)
    b = np.concatenate([coo.col[off], coo.row[off]]).astype(np.int64)
    pairs = np.unique(a * n + b)  # (node, neighbour) both ways, sorted by node then neighbour
    node, nbr = pairs // n, pairs % n
    degree = np.bincount(node, minlength=n)
    first = np.concatenate([[0], np.cumsum(degree)[:-1]])
    slot = np.arange(pairs.size) - first[node]
    neighbors = np.full((n, max(1, int(degree.max(initial=0)))), n, dtype=np.int64)
    neighbors[node, slot] = nbr

    def slots_of(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(slot[np.searchsorted(pairs, i.numpy() * n + j.numpy())],
                               device="cpu")

    (src, dst), (isrc, idst) = out_edges, in_edges
    return EdgeSlots(torch.as_tensor(neighbors[rows], device="cpu"),
                     torch.as_tensor(degree[rows], device="cpu"),
                     src - rows.start, slots_of(src, dst), idst - rows.start,
                     slots_of(idst, isrc))


class EdgeSchedule:
    """What both mixers derive from their topology schedule for algorithms (a mixin).

    Needs ``topology``, ``period``, ``local_rows``, ``edges(t)`` and ``in_edges(t)``.
    """

    topology: Any
    period: int

    def edge_slots(self, t: int = 0) -> EdgeSlots:
        """Neighbour lists of the held nodes and the slots of round ``t``'s edges."""
        r = t % self.period
        return edge_slots(self.topology.matrix(r, sparse=True), self.local_rows,
                          self.edges(r), self.in_edges(r))

    def require(self, condition: Callable[[Any], None]) -> None:
        """Apply an algorithm's ``check_topology`` to this mixer's schedule (it raises)."""
        condition(self.topology)
