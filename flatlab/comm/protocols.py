"""The two interfaces of a mixer: gossip for algorithms, collectives for the runner and measures.

A run's mixer is one object with two faces. :class:`Mixer` is everything an algorithm may use:
products with the mixing matrices ``W_t``, per-edge messages, the exact average, and the edge
slots where per-edge state lives (DESIGN.md §3). :class:`CollectiveGroup` is what the runner and
the measures need besides: which process this is, and collectives that move measurements and
checkpoints rather than gossip (not counted as traffic). :class:`~flatlab.comm.SimulatedMixer`
and :class:`~flatlab.comm.DistributedMixer` implement both.

Row convention: the node stack ``X`` is ``[n, ...]`` over all nodes; a process holds the rows
``local_rows`` (all of them in one process), and every method takes and returns those rows only,
``X_loc = X[local_rows]``.

>>> import flatlab
>>> from flatlab.comm import CollectiveGroup, Mixer, SimulatedMixer
>>> mixer = SimulatedMixer(flatlab.topology.make("ring", 4), device="cpu")
>>> isinstance(mixer, Mixer) and isinstance(mixer, CollectiveGroup)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from flatlab.comm.base import CommStats, EdgeSlots
from flatlab.topology import Topology

__all__ = ["Mixer", "CollectiveGroup"]


@runtime_checkable
class Mixer(Protocol):
    """Gossip: what an algorithm sees of communication (and of the graph: nothing more).

    Attributes:
        n: Number of nodes in the network (the size of ``W_t``).
        stats: Messages and bytes sent so far by the held nodes (``[k]`` each); counted by
            ``mix``, ``exchange`` and ``mean`` (:mod:`flatlab.comm.base`).
    """

    n: int
    stats: CommStats

    @property
    def local_rows(self) -> slice:
        """The rows of the node stack (node ids) this process holds."""
        ...

    def mix(self, X: torch.Tensor, t: int = 0, *,  # noqa: N803
            row_bytes: int | None = None) -> torch.Tensor:
        """``(W_t X)[local_rows]``: one gossip round, ``x_i ← Σ_j w_ij x_j`` for held ``i``.

        ``W_t`` is round ``t``'s matrix (``t mod period``). ``row_bytes`` overrides the counted
        size of one row (a compressed message's encoding).
        """
        ...

    def exchange(self, M: torch.Tensor, t: int = 0) -> torch.Tensor:  # noqa: N803
        """Per-edge messages: ``M[e]`` goes from ``src[e]`` to ``dst[e]`` only (``w_dst,src ≠ 0``).

        ``M`` is ``[E_out, ...]`` in the order of :meth:`edges` (edges whose sender is held);
        the return value is ``[E_in, ...]`` in the order of :meth:`in_edges` (edges whose
        receiver is held): what each held node receives from each in-neighbour.
        """
        ...

    def mean(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The exact network average ``(1/n) Σ_i x_i = (1/n) 1ᵀ X``, shaped ``X[0]`` (counted)."""
        ...

    def edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(src, dst)`` global ids of round ``t``'s edges whose sender is held.

        The off-diagonal support of ``W_t`` (``w_dst,src ≠ 0``), sorted by sender then receiver:
        the row order of :meth:`exchange`'s messages.
        """
        ...

    def in_edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(src, dst)`` of round ``t``'s edges whose receiver is held (``exchange``'s output)."""
        ...

    def edge_slots(self, t: int = 0) -> EdgeSlots:
        """Neighbour lists of the held nodes and the slots of :meth:`exchange`'s edges.

        What an algorithm with per-edge state needs (:class:`~flatlab.comm.EdgeSlots`), in local
        indices: no graph object. Computed on each call; call it once in ``init``.
        """
        ...

    def require(self, condition: Callable[[Topology], None]) -> None:
        """Apply ``condition`` (an algorithm's ``check_topology``) to the mixing schedule.

        ``condition`` raises :class:`~flatlab.errors.AlgorithmError` naming why the matrices
        ``W_0, ..., W_{period-1}`` do not suit the algorithm (time-varying, directed,
        ``λ_min(W) ≤ −1/3``, ...); this is the only way an algorithm learns about the graph.
        """
        ...


@runtime_checkable
class CollectiveGroup(Protocol):
    """Collectives for the runner and the measures (not gossip, not counted as traffic).

    Attributes:
        rank: This process, ``0 ≤ rank < world_size``.
        world_size: Number of processes ``K`` (1 for the simulated mixer).
        device: Where the node stack lives.
        stats: The held nodes' traffic counts (restored from checkpoints).
        calls: Communication calls entered so far (the watchdog's progress count; 0 when no
            call can block).
    """

    rank: int
    world_size: int
    device: torch.device
    stats: CommStats
    calls: int

    @property
    def local_rows(self) -> slice:
        """The rows of the node stack (node ids) this process holds."""
        ...

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (rank 0)."""
        ...

    @property
    def waiting(self) -> bool:
        """Whether a communication call was entered and has not completed (a lost peer)."""
        ...

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_processes x``, elementwise, on every process (in place where there are several)."""
        ...

    def gather(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The full ``[n, ...]`` stack from every process's ``X[local_rows]``, in rank order."""
        ...

    def gather_object(self, obj: object) -> list:
        """Every process's ``obj`` (picklable), in rank order."""
        ...

    def gathered_stats(self) -> CommStats:
        """Messages and bytes of all ``n`` nodes (``[n]`` each)."""
        ...
