"""The simulated mixer: all n nodes in one process, gossip as one matrix product."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch

from flatlab.comm.base import CommStats, EdgeSchedule
from flatlab.engine.stack import resolve_device, resolve_dtype
from flatlab.errors import FlatlabError
from flatlab.topology import Topology

__all__ = ["SimulatedMixer", "MIX_METHODS"]

MIX_METHODS = ("auto", "dense", "sparse", "shift")
DENSE_LIMIT = 512
"""Largest n for which ``"auto"`` takes the dense product on a GPU (one fast matmul)."""
DENSE_LIMIT_CPU = 16
"""Largest n for which ``"auto"`` takes the dense product on the CPU.

Measured in ``benchmarks/mix.py`` (P = 78,858, one thread): the dense ``O(n^2 P)`` product
ties the sparse forms up to n = 16 and is 2-6x slower from n = 32 on.
"""
SHIFT_MAX_OFFSETS = 5
"""Most kernel non-zeros (self included) for which ``"auto"`` takes the shift form: the ring
(3) and the torus (5); denser circulants (the exponential graph) go to the sparse product, which
is as fast there and reads ``X`` once per row instead of once per offset."""


class SimulatedMixer(EdgeSchedule):
    """Gossip for all n nodes held in one process.

    A :class:`~flatlab.comm.Mixer` and a :class:`~flatlab.comm.CollectiveGroup` of one process.

    ``mix(X, t) = W_{t mod period} X``, for doubly stochastic and column-stochastic (push-sum,
    ``X ← P X``) matrices alike, computed one of three ways:

    - ``"dense"``: ``W_t`` as a dense ``[n, n]`` tensor on the device and one matmul;
    - ``"sparse"``: ``W_t`` as a sparse (CSR) tensor, ``O(nnz · P)``;
    - ``"shift"``: for circulant topologies (ring, torus, exponential graphs, one-peer
      exponential), ``W_t X = Σ_o K_t[o] · roll(X, -o)`` over the few non-zero offsets ``o`` of
      the kernel, each roll added in place as (at most ``2^dims``) slices: ``O(deg · n · P)``,
      no matrix and no copy of ``X``.

    ``"auto"`` costs ``O(n · deg · P)`` beyond a few nodes: on the CPU it takes dense up to
    n = 16 (:data:`DENSE_LIMIT_CPU`), then shift for circulants of at most 5 offsets (ring,
    torus), else sparse; on a GPU, dense up to n = 512 (one matmul), then shift for circulants,
    else sparse.

    Args:
        topology: The (possibly time-varying) topology; round ``t`` uses ``W_{t mod period}``.
        device: Where the mixing matrices live (``"auto"``: CUDA when present).
        dtype: dtype of the mixing matrices (``X`` must have it).
        method: One of :data:`MIX_METHODS`.
    """

    def __init__(self, topology: Topology, *, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = torch.float32, method: str = "auto") -> None:
        if not isinstance(topology, Topology):
            raise FlatlabError(f"SimulatedMixer needs a Topology, got {type(topology).__name__}")
        if method not in MIX_METHODS:
            raise FlatlabError(f"mix method {method!r} is unknown; accepted: "
                               f"{', '.join(MIX_METHODS)}")
        if method == "shift" and topology.group is None:
            raise FlatlabError(f"mix method 'shift' needs a circulant topology; "
                               f"{topology.name} is not one (use dense or sparse)")
        self.topology = topology
        self.n = topology.n
        self.period = topology.period
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if method == "auto":
            method = _auto_method(topology, self.device)
        self.method = method
        self._W: list[torch.Tensor] = []
        self._shifts: list[list[tuple[tuple[int, ...], float]]] = []
        self._out_degree: list[torch.Tensor] = []
        self._edges: list[tuple[torch.Tensor, torch.Tensor]] = []
        # rounds that are the identity (local steps, flatlab.topology.periodic): no product
        self._identity: list[bool] = []
        kernels = topology.kernels() if method == "shift" else None
        for t in range(self.period):
            w = topology.matrix(t, sparse=True).tocsr()
            self._identity.append(bool(w.nnz == self.n and np.all(w.diagonal() == 1.0)))
            if method == "dense":
                self._W.append(torch.as_tensor(w.toarray(), dtype=self.dtype, device=self.device))
            elif method == "sparse":
                coo = w.tocoo()
                idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64,
                                      device="cpu")
                sp = torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=self.dtype,
                                                                  device="cpu"),
                                             (self.n, self.n), check_invariants=True)
                with warnings.catch_warnings():  # "sparse CSR support is in beta"
                    warnings.simplefilter("ignore", UserWarning)
                    self._W.append(sp.coalesce().to_sparse_csr().to(self.device))
            else:
                k = kernels[t]
                offs = np.argwhere(k != 0)
                self._shifts.append([(tuple(int(v) for v in o), float(k[tuple(o)]))
                                     for o in offs])
            coo = w.tocoo()
            off = coo.row != coo.col
            dst = torch.as_tensor(coo.row[off], dtype=torch.int64, device="cpu")
            src = torch.as_tensor(coo.col[off], dtype=torch.int64, device="cpu")
            order = torch.argsort(src * self.n + dst)
            self._edges.append((src[order], dst[order]))
            self._out_degree.append(torch.bincount(src, minlength=self.n))
        self.stats = CommStats.zeros(self.n)
        self.rank, self.world_size = 0, 1  # one process holds every node
        self.waiting = False  # never waits for a peer
        self.calls = 0  # no call can block, so the watchdog's progress count stays 0

    # ------------------------------------------------------------------ communication
    def mix(self, X: torch.Tensor, t: int = 0, *, row_bytes: int | None = None  # noqa: N803
            ) -> torch.Tensor:
        """``W_t X`` for ``X`` ``[n, ...]`` (every row is one node's message).

        ``row_bytes`` overrides the counted size of one row (a compressed message's encoding,
        :func:`flatlab.comm.compress.payload_bytes`); by default ``numel × itemsize``.
        """
        self._check(X)
        r = t % self.period
        self._count(X, r, row_bytes)
        if self._identity[r]:  # a local step: nothing is sent, every node keeps its own
            return X.clone()
        if self.method == "shift":
            return self._shift_mix(X, r)
        flat = X.reshape(self.n, -1)
        return (self._W[r] @ flat).reshape(X.shape)

    def _count(self, X: torch.Tensor, r: int, row_bytes: int | None) -> None:  # noqa: N803
        """Count round ``r``'s messages: one row of ``X`` from each node to each out-neighbour."""
        if row_bytes is None:
            row_bytes = X[0].numel() * X.element_size()
        deg = self._out_degree[r]
        self.stats.messages += deg
        self.stats.bytes += deg * row_bytes

    def _shift_mix(self, X: torch.Tensor, r: int) -> torch.Tensor:  # noqa: N803
        """``Σ_o K[o] · roll(X, -o)``: ``out[i] += K[o] X[(i + o) mod group]``, slice by slice."""
        group = self.topology.group
        G = X.reshape(*group, -1)
        out = None
        for off, c in self._shifts[r]:
            if not any(off):  # the self term (the offsets are sorted: it comes first)
                out = torch.mul(G, c)
                continue
            if out is None:
                out = torch.zeros_like(G)
            # along each axis, i + o wraps once: [0, g - o) reads [o, g), [g - o, g) reads [0, o)
            pieces = [[(slice(None), slice(None))] if o == 0 else
                      [(slice(0, g - o), slice(o, g)), (slice(g - o, g), slice(0, o))]
                      for o, g in zip(off, group, strict=True)]
            for parts in itertools.product(*pieces):
                dst = tuple(d for d, _ in parts)
                src = tuple(s for _, s in parts)
                out[dst].add_(G[src], alpha=c)
        return out.reshape(X.shape)

    def edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Directed edges ``(src, dst)`` of round ``t`` (``w_{dst,src} ≠ 0``, ``src ≠ dst``).

        Sorted by sender then receiver; the row order of :meth:`exchange`'s messages.
        """
        return self._edges[t % self.period]

    def in_edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges whose receiver this process holds, in the order :meth:`exchange` returns them.

        In one process these are all edges, in the order of :meth:`edges`.
        """
        return self.edges(t)

    @property
    def local_rows(self) -> slice:
        """The rows of the node stack this process holds (all of them)."""
        return slice(0, self.n)

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (always, in one process)."""
        return True

    def gather(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """All rows of ``X`` (for measurements and checkpoints; not counted as traffic)."""
        return X

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the processes: ``x`` itself, there is one."""
        return x

    def gather_object(self, obj: object) -> list:
        """Every process's ``obj``: ``[obj]``, there is one."""
        return [obj]

    def gathered_stats(self) -> CommStats:
        """Messages and bytes of all nodes (this process holds them all)."""
        return self.stats

    def exchange(self, M: torch.Tensor, t: int = 0) -> torch.Tensor:  # noqa: N803
        """Deliver per-edge messages: ``M[e]`` goes from ``src[e]`` to ``dst[e]`` only.

        ``M`` is ``[E_t, ...]`` in the order of :meth:`edges` (the edges whose sender this process
        holds); the return value is what the receivers get, in the order of :meth:`in_edges` (in
        one process, ``M`` itself).
        """
        src, _ = self.edges(t)
        if M.shape[0] != src.numel():
            raise FlatlabError(f"exchange needs one message per edge of round {t}: "
                               f"{src.numel()} rows, got {M.shape[0]}")
        per_edge = (M[0].numel() if M.shape[0] else 0) * M.element_size()
        cnt = torch.bincount(src, minlength=self.n)
        self.stats.messages += cnt
        self.stats.bytes += cnt * per_edge
        return M

    def mean(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The exact network average ``(1/n) Σ_i X[i]`` (an all-reduce), shaped ``X[0]``."""
        self._check(X)
        if self.n > 1:
            elems = X[0].numel()
            self.stats.messages += 2 * (self.n - 1)
            self.stats.bytes += (2 * (self.n - 1) * elems * X.element_size()) // self.n
        return X.mean(0)

    def _check(self, X: torch.Tensor) -> None:  # noqa: N803
        if X.shape[0] != self.n:
            raise FlatlabError(f"mixer holds {self.n} nodes but got {X.shape[0]} rows")
        if X.dtype != self.dtype:
            raise FlatlabError(f"the mixer works in {self.dtype} but X is {X.dtype}; build it "
                               "with dtype=X.dtype")

    def __repr__(self) -> str:
        return (f"SimulatedMixer({self.topology.label}, method={self.method}, "
                f"device={self.device})")


def _auto_method(topology: Topology, device: torch.device) -> str:
    """The mixing form ``"auto"`` picks: ``O(n · deg · P)`` work beyond a few nodes."""
    circulant = topology.group is not None
    if device.type != "cpu":
        if topology.n <= DENSE_LIMIT:
            return "dense"
        return "shift" if circulant else "sparse"
    if topology.n <= DENSE_LIMIT_CPU:
        return "dense"
    if circulant and all(int(np.count_nonzero(k)) <= SHIFT_MAX_OFFSETS
                         for k in topology.kernels()):
        return "shift"
    return "sparse"
