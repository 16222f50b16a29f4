"""The distributed mixer: nodes spread over torch.distributed ranks, real point-to-point gossip.

Rank ``r`` of ``K`` holds the contiguous block of ``k = n / K`` nodes ``r k, ..., (r + 1) k − 1``
(rows of the node stack). For every round ``t`` of the topology the mixer precomputes:

- for each other rank ``q``, which of its own rows some node of ``q`` mixes in (``w_ij ≠ 0``, ``i``
  on ``q``, ``j`` here): exactly those rows are sent, in one ``batch_isend_irecv`` with all peers;
- the local rows of ``W_t`` restricted to the columns it holds or receives, so ``mix`` is one
  small matrix product after the exchange.

Non-symmetric matrices (directed graphs, push-sum's column-stochastic ``P``) need nothing more:
node ``j``'s row goes to exactly the ranks that hold an out-neighbour ``i`` (``w_ij ≠ 0``), once
per rank, and the receiver applies ``w_ij``. That is push-sum's push, node ``j`` delivering the
share ``P[i, j] x_j`` to each ``i`` it reaches, with the scaling done where the row arrives so a
row goes out once per peer rank rather than once per share; the sum, ``(P X)[i]``, is the same.
A push-sum weight travels as one more column of ``X`` (``sgp`` mixes ``[X | w]``), so it is
mixed by the same ``P_t`` in the same exchange.

Message and byte counts follow the simulated mixer's per-node convention (a node sends its row to
each out-neighbour, wherever that neighbour lives), so the two agree exactly; the bytes that
actually cross process boundaries are counted separately in ``wire_bytes``. ``mean`` is an
all-reduce. Use gloo on CPU and NCCL on GPU, launched with ``torchrun`` (or any launcher that
initialises the default process group); pass an explicit, short ``timeout`` to
``init_process_group`` so a lost rank is detected (docs/reference/environment.md §7).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from flatlab.comm.base import CommStats, EdgeSchedule
from flatlab.comm.process import WAIT_CODES
from flatlab.errors import FlatlabError
from flatlab.topology import Topology

__all__ = ["DistributedMixer"]


def _block(reqs: list) -> None:
    """Wait for posted point-to-point requests (the watchdog sees a thread in here as waiting)."""
    for req in reqs:
        req.wait()


WAIT_CODES.add(_block.__code__)


def _rows(v: np.ndarray, device) -> slice | torch.Tensor:
    """Sorted row indices as a slice (a view, no copy) when consecutive, else an index tensor."""
    if v.size and v[-1] - v[0] + 1 == v.size:
        return slice(int(v[0]), int(v[-1]) + 1)
    return torch.as_tensor(v, dtype=torch.int64, device=device)


class _Round:
    """Precomputed communication plan of one round for one rank."""

    def __init__(self, w, rank: int, k: int, world: int, dtype, device) -> None:
        n = w.shape[0]
        lo, hi = rank * k, (rank + 1) * k
        owner = np.arange(n) // k
        wl = w[lo:hi].tocoo()  # local rows of W_t
        need = np.unique(wl.col[wl.data != 0])
        self.recv = {}  # peer -> global ids received from it (sorted)
        for q in range(world):
            if q != rank:
                ids = need[owner[need] == q]
                if ids.size:
                    self.recv[q] = ids
        self.send = {}  # peer -> local row indices sent to it (sorted)
        wt = w[:, lo:hi].tocsc()  # columns = my nodes
        for q in range(world):
            if q == rank:
                continue
            block = wt[q * k:(q + 1) * k].tocoo()
            cols = np.unique(block.col[block.data != 0])
            if cols.size:
                self.send[q] = cols
        dense = wl.toarray() if hasattr(wl, "toarray") else np.asarray(wl.todense())
        # W_t's local rows split by the owner of the column: the own block and one block per peer
        self.W_self = torch.as_tensor(dense[:, lo:hi], dtype=dtype, device=device)
        # a peer's rows feed only the local rows with a nonzero weight on them (one row each on a
        # ring): keep just those rows, as a slice when consecutive, so the update touches no more
        # ring and other sparse graphs: a few weights, applied one row at a time (axpy) without
        # temporaries; denser blocks: one product
        self.W_peer, self.peer_rows, self.peer_axpy = {}, {}, {}
        for q, ids in self.recv.items():
            block = dense[:, ids]
            rows = np.flatnonzero(np.any(block != 0, axis=1))
            self.W_peer[q] = torch.as_tensor(block[rows], dtype=dtype, device=device)
            self.peer_rows[q] = _rows(rows, device)
            nz = np.argwhere(block != 0)
            if len(nz) <= 2 * len(rows):
                self.peer_axpy[q] = [(int(i), int(j), float(block[i, j])) for i, j in nz]
        # rows to send: a slice (a view, no copy) when they are consecutive, else an index
        self.send_idx = {q: _rows(v, device) for q, v in self.send.items()}
        coo = w.tocoo()
        off = coo.row != coo.col
        src, dst = coo.col[off], coo.row[off]
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
        mine_out = (src >= lo) & (src < hi)
        mine_in = (dst >= lo) & (dst < hi)
        self.out_edges = (torch.as_tensor(src[mine_out], device="cpu"),
                          torch.as_tensor(dst[mine_out], device="cpu"))
        self.in_edges = (torch.as_tensor(src[mine_in], device="cpu"),
                         torch.as_tensor(dst[mine_in], device="cpu"))
        # exchange plan: positions in my out-edge list going to each peer, and in my in-edge
        # list coming from each peer (both in global (src, dst) order, so sender and receiver
        # agree on the order without talking)
        so, do = src[mine_out], dst[mine_out]
        si = src[mine_in]
        self.ex_send = {q: np.flatnonzero(owner[do] == q) for q in range(world) if q != rank}
        self.ex_recv = {q: np.flatnonzero(owner[si] == q) for q in range(world) if q != rank}
        self.ex_local_out = _rows(np.flatnonzero(owner[do] == rank), device)
        self.ex_local_in = _rows(np.flatnonzero(owner[si] == rank), device)
        self.ex_send_rows = {q: _rows(v, device) for q, v in self.ex_send.items() if v.size}
        self.ex_recv_rows = {q: _rows(v, device) for q, v in self.ex_recv.items() if v.size}
        self.out_degree = torch.as_tensor(np.bincount(so - lo, minlength=k), dtype=torch.int64,
                                          device="cpu")


class DistributedMixer(EdgeSchedule):
    """Gossip between nodes held by different processes (a drop-in for the simulated mixer).

    A :class:`~flatlab.comm.Mixer` and a :class:`~flatlab.comm.CollectiveGroup`.

    Args:
        topology: The (possibly time-varying) topology of all ``n`` nodes.
        group: Process group (default: the default group, which must be initialised).
        device: Device of the node stack (``cuda`` for NCCL, ``cpu`` for gloo).
        dtype: dtype of the node stack.

    Attributes:
        rank, world_size: This process and the number of processes ``K`` (``K`` divides ``n``).
        local_rows: The slice of node indices this rank holds.
        stats: Logical messages and bytes of the local nodes (the simulated mixer's convention);
            :meth:`gathered_stats` collects all nodes'.
        wire_bytes: Bytes this rank actually sent to other ranks.
    """

    def __init__(self, topology: Topology, *, group: dist.ProcessGroup | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise FlatlabError("DistributedMixer needs an initialised torch.distributed process "
                               "group (launch with torchrun, or call init_process_group)")
        self.topology = topology
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.n = topology.n
        if self.n % self.world_size:
            raise FlatlabError(f"{self.world_size} processes cannot hold {self.n} nodes evenly; "
                               "the number of processes must divide the number of nodes")
        self.k = self.n // self.world_size
        self.local_rows = slice(self.rank * self.k, (self.rank + 1) * self.k)
        self.period = topology.period
        self.device = torch.device(device)
        self.dtype = dtype
        self._rounds = [_Round(topology.matrix(t, sparse=True).tocsr(), self.rank, self.k,
                               self.world_size, dtype, self.device) for t in range(self.period)]
        self.stats = CommStats.zeros(self.k)
        self.wire_bytes = 0
        self.calls = 0  # communication calls entered (the watchdog's progress count)
        self.completed = 0  # ... and completed; they differ while a call waits for its peers
        self._buffers: dict[tuple, torch.Tensor] = {}

    @property
    def is_main(self) -> bool:
        """Rank 0 writes results."""
        return self.rank == 0

    def _peer(self, q: int) -> int:
        return q if self.group is None else dist.get_global_rank(self.group, q)

    @property
    def waiting(self) -> bool:
        """Whether a communication call was entered and has not completed (it failed)."""
        return self.calls != self.completed

    def _p2p(self, sends: dict[int, torch.Tensor], recvs: dict[int, torch.Tensor]):
        """Start one batched exchange; call the returned function to wait for it."""
        ops = [dist.P2POp(dist.isend, t, self._peer(q), self.group) for q, t in sends.items()]
        ops += [dist.P2POp(dist.irecv, t, self._peer(q), self.group) for q, t in recvs.items()]
        self.calls += 1
        reqs = dist.batch_isend_irecv(ops) if ops else []
        self.wire_bytes += sum(t.numel() * t.element_size() for t in sends.values())

        def wait() -> None:
            _block(reqs)
            self.completed += 1

        return wait

    def _check_rows(self, X: torch.Tensor) -> None:  # noqa: N803
        if X.shape[0] != self.k:
            raise FlatlabError(f"rank {self.rank} holds {self.k} nodes but got {X.shape[0]} rows")

    def _check(self, X: torch.Tensor) -> None:  # noqa: N803
        self._check_rows(X)
        if X.dtype != self.dtype:
            raise FlatlabError(f"the mixer works in {self.dtype} but X is {X.dtype}; build it "
                               "with dtype=X.dtype")

    def mix(self, X: torch.Tensor, t: int = 0, *, row_bytes: int | None = None  # noqa: N803
            ) -> torch.Tensor:
        """``(W_t X)[local rows]``: send each peer the rows it needs, receive, one product.

        ``row_bytes`` overrides the counted size of one row (a compressed message's encoding;
        the rows travel dense, so the wire carries more than is counted).
        """
        self._check(X)
        r = self._rounds[t % self.period]
        flat, recvs, wait = self._post_rows(X, t)
        out = r.W_self @ flat  # the own block needs nothing received: overlap it with the exchange
        wait()
        for q, buf in recvs.items():
            rows = r.peer_rows[q]
            if q in r.peer_axpy:
                for i, j, w in r.peer_axpy[q]:
                    out[i].add_(buf[j], alpha=w)
            elif isinstance(rows, slice):
                out[rows].addmm_(r.W_peer[q], buf)
            else:
                out.index_add_(0, rows, r.W_peer[q] @ buf)
        self._count(r, flat, X, row_bytes)
        return out.reshape(X.shape)

    def _post_rows(self, X: torch.Tensor, t: int  # noqa: N803
                   ) -> tuple[torch.Tensor, dict[int, torch.Tensor], Callable[[], None]]:
        """Send each peer the rows of ``X`` it needs in round ``t`` and post the receives.

        Returns the local rows ``[k, numel]``, the receive buffers by peer (rows ``r.recv[q]``,
        filled once ``wait()`` returns; reused by the next call of the round) and ``wait``.
        """
        r = self._rounds[t % self.period]
        flat = X.reshape(self.k, -1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        sends = {q: flat[idx] if isinstance(idx, slice)  # consecutive rows: a view
                 else torch.index_select(flat, 0, idx, out=self._buffer(
                     ("send", t % self.period, q), (idx.numel(), flat.shape[1]), X))
                 for q, idx in r.send_idx.items()}
        recvs = {q: self._buffer(("mix", t % self.period, q), (len(ids), flat.shape[1]), X)
                 for q, ids in r.recv.items()}
        return flat, recvs, self._p2p(sends, recvs)

    def _count(self, r: _Round, flat: torch.Tensor, X: torch.Tensor,  # noqa: N803
               row_bytes: int | None) -> None:
        """Count a mix's messages: one row from each local node to each out-neighbour."""
        if row_bytes is None:
            row_bytes = flat.shape[1] * X.element_size()
        self.stats.messages += r.out_degree
        self.stats.bytes += r.out_degree * row_bytes

    def _buffer(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A send or receive buffer reused across calls (consumed before the call returns)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or \
                buf.device != like.device:
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Directed edges ``(src, dst)`` of round ``t`` whose sender this rank holds."""
        return self._rounds[t % self.period].out_edges

    def in_edges(self, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Directed edges of round ``t`` whose receiver this rank holds (exchange's output)."""
        return self._rounds[t % self.period].in_edges

    def exchange(self, M: torch.Tensor, t: int = 0) -> torch.Tensor:  # noqa: N803
        """Deliver per-edge messages to the ranks that hold their receivers.

        Rows of ``M`` follow :meth:`edges`; the rows returned follow :meth:`in_edges`.
        """
        r = self._rounds[t % self.period]
        src, _ = r.out_edges
        if M.shape[0] != src.numel():
            raise FlatlabError(f"exchange needs one message per edge of round {t} sent from "
                               f"rank {self.rank}: {src.numel()} rows, got {M.shape[0]}")
        tail = M.shape[1:]
        out = torch.empty(r.in_edges[0].numel(), *tail, dtype=M.dtype, device=M.device)
        out[r.ex_local_in] = M[r.ex_local_out]  # the index plans live on the run's device
        sends = {q: M[rows].contiguous() for q, rows in r.ex_send_rows.items()}
        recvs = {q: torch.empty(r.ex_recv[q].size, *tail, dtype=M.dtype, device=M.device)
                 for q in r.ex_recv_rows}
        self._p2p(sends, recvs)()
        for q, buf in recvs.items():
            out[r.ex_recv_rows[q]] = buf
        per_edge = (M[0].numel() if M.shape[0] else 0) * M.element_size()
        cnt = torch.bincount(src - self.local_rows.start, minlength=self.k)
        self.stats.messages += cnt
        self.stats.bytes += cnt * per_edge
        return out

    def mean(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The exact network average by all-reduce, shaped ``X[0]``, on every rank."""
        self._check(X)
        s = self.all_reduce(X.sum(0))
        if self.n > 1:
            elems = X[0].numel()
            self.stats.messages += 2 * (self.n - 1)
            self.stats.bytes += (2 * (self.n - 1) * elems * X.element_size()) // self.n
        return s / self.n

    def gather(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """All ``n`` rows on every rank (measurements, checkpoints; not counted as traffic)."""
        self._check_rows(X)
        parts = [torch.empty_like(X) for _ in range(self.world_size)]
        self.calls += 1
        dist.all_gather(parts, X.contiguous(), group=self.group)
        self.completed += 1
        return torch.cat(parts)

    def gather_object(self, obj: object) -> list:
        """Every process's ``obj`` (picklable), in rank order (checkpoints; not traffic)."""
        out: list = [None] * self.world_size
        self.calls += 1
        dist.all_gather_object(out, obj, group=self.group)
        self.completed += 1
        return out

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the processes, in place and returned (not counted as traffic).

        For the runner's bookkeeping (the step's mean loss, measurements); algorithms use
        :meth:`mean`, which is counted.
        """
        self.calls += 1
        dist.all_reduce(x, group=self.group)
        self.completed += 1
        return x

    def gathered_stats(self) -> CommStats:
        """Messages and bytes of all ``n`` nodes (an all-gather of the local counts)."""
        m = self.gather(self.stats.messages.to(self.device)).cpu()
        b = self.gather(self.stats.bytes.to(self.device)).cpu()
        return CommStats(m, b)

    def __repr__(self) -> str:
        return (f"DistributedMixer({self.topology.label}, rank {self.rank}/{self.world_size}, "
                f"nodes {self.local_rows.start}..{self.local_rows.stop - 1})")
