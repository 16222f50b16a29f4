"""Primal-dual decentralized learning: Edge-Consensus Learning (ECL, PDMM/ADMM).

Source: Niwa, Harada, Zhang, Kleijn, "Edge-consensus learning", KDD 2020; the exchange period
and the tied penalty of nttcslab/ecl-isvr (ICML 2021); reference/algorithms.md §7.1, §16 items 6
and 12, pitfall 8.

The problem ``min Σ_i f_i(x_i)`` subject to ``A_{i|j} x_i + A_{j|i} x_j = 0`` on every edge, with
``A_{i|j} = +I`` if ``i < j`` and ``−I`` otherwise. Each node keeps one dual ``z_{i|j}`` per
neighbour; the duals are stored node-stacked as ``z[i, s]`` for the ``s``-th neighbour of ``i``
in increasing order (padded with zeros up to the largest degree), so a distributed run splits
them with the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flatlab.algorithms.base import Algorithm, State, register

__all__ = ["ECL", "ECLState", "EdgeSlots", "edge_slots"]


@dataclass(kw_only=True)
class ECLState(State):
    """``x`` and the per-edge duals ``z`` (``[n, D, P]``, ``D`` the largest degree)."""

    z: torch.Tensor


@dataclass(frozen=True)
class EdgeSlots:
    """Where each edge's dual lives: ``neighbors[i, s]`` is the ``s``-th neighbour of ``i``.

    Attributes:
        neighbors: ``[n, D]`` int64, increasing along a row, ``n`` where a row is padded.
        degree: ``[n]`` int64 number of neighbours ``|N_i|``.
        sign: ``[n, D]`` float64: ``A_{i|j} = +1`` if ``i < j``, ``−1`` if ``i > j``, 0 on padding.
    """

    neighbors: torch.Tensor
    degree: torch.Tensor
    sign: torch.Tensor

    def slot(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Slot of neighbour ``j`` in node ``i``'s row, for edges given as index vectors."""
        rows = self.neighbors[i]
        return torch.searchsorted(rows, j.unsqueeze(1)).squeeze(1)


def edge_slots(topology: Any) -> EdgeSlots:
    """Neighbour slots of a static undirected topology (see :class:`EdgeSlots`)."""
    w = topology.matrix(0, sparse=True).tocsr()
    n = w.shape[0]
    lists = []
    for i in range(n):
        cols = w.indices[w.indptr[i]:w.indptr[i + 1]]
        lists.append(np.sort(cols[(cols != i) & (w.data[w.indptr[i]:w.indptr[i + 1]] != 0)]))
    width = max(1, max(len(c) for c in lists))
    nbrs = np.full((n, width), n, dtype=np.int64)
    for i, c in enumerate(lists):
        nbrs[i, :len(c)] = c
    valid = nbrs < n
    sign = np.where(valid, np.where(np.arange(n)[:, None] < nbrs, 1.0, -1.0), 0.0)
    return EdgeSlots(torch.as_tensor(nbrs), torch.as_tensor(valid.sum(1)), torch.as_tensor(sign))


_SLOTS: dict[tuple[int, str], tuple[Any, EdgeSlots]] = {}


def _slots(topology: Any, device: torch.device) -> EdgeSlots:
    """:func:`edge_slots` on ``device``, computed once per topology object."""
    key = (id(topology), str(device))
    hit = _SLOTS.get(key)
    if hit is None or hit[0] is not topology:
        s = edge_slots(topology)
        hit = (topology, EdgeSlots(s.neighbors.to(device), s.degree.to(device),
                                   s.sign.to(device)))
        _SLOTS[key] = hit
    return hit[1]


def _undirected_static(algo: Algorithm, topology: Any) -> None:
    algo._check(topology.period == 1, f"needs a static topology (duals live on fixed edges); "
                                      f"{topology.label} changes every round")
    w = topology.matrix(0, sparse=True)
    pattern = (w != 0).astype(np.int8)
    algo._check((pattern != pattern.T).nnz == 0,
                f"needs an undirected topology (every edge in both directions); {topology.label} "
                "is directed")


@register("ecl", "pdmm", "edge-consensus")
@dataclass(frozen=True)
class ECL(Algorithm):
    """Edge-Consensus Learning: PDMM (``θ = 1``) or ADMM (``θ = ½``) with a linearized cost.

    One local iteration at node ``i`` with step ``η = 1/μ`` and edge penalty ``α``
    (reference/algorithms.md §7.1)::

        x_i⁺ = argmin_x ⟨g_i, x⟩ + (μ/2)‖x − x_i‖² + Σ_{j∈N_i} (α/2)‖A_{i|j} x − z_{i|j}‖²
             = x_i − (μ + α|N_i|)⁻¹ [ g_i + α Σ_j (x_i − A_{i|j} z_{i|j}) ]
        y_{i|j} = z_{i|j} − 2 A_{i|j} x_i⁺                (sent to j only)
        z_{j|i} ← (1 − θ) z_{j|i} + θ y_{i|j}             (on receipt at j)

    Duals are exchanged every ``period`` steps (after steps ``period − 1, 2 period − 1, …``) and
    frozen in between, when only the primal step runs. With ``tie`` set, the penalty follows the
    learning rate and the period as in nttcslab/ecl-isvr,
    ``α_i = tie / (η (K|N_i| + K − tie |N_i|))`` with ``K = period``, recomputed every step so an lr
    schedule moves it too (pitfall 8). The official sample's quirk of forming ADMM's outgoing dual
    from the raw last received dual is not reproduced.

    Messages: one vector per edge per exchange, distinct for each neighbour (``exchange``, not a
    broadcast). State: ``x`` and one dual per edge, ``z`` (``[n, D, P]``). Fixed point: exact
    (consensus at ``x*``), for ``θ = 1`` and ``θ = ½``. Needs a static undirected topology.

    Args:
        alpha: Edge penalty ``α > 0`` (ignored when ``tie`` is set).
        theta: Dual averaging, in ``(0, 1]``: 1 is PDMM, ½ is ADMM.
        period: Steps between dual exchanges ``K ≥ 1``.
        tie: ``piw`` of the tied penalty (``None``: use ``alpha``); ecl-isvr uses 0.5, 1 or 2.
    """

    alpha: float = 1.0
    theta: float = 1.0
    period: int = 1
    tie: float | None = None
    exact = True

    def __post_init__(self) -> None:
        self._check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        self._check(0 < self.theta <= 1, f"theta must be in (0, 1], got {self.theta}")
        self._check(isinstance(self.period, int) and self.period >= 1,
                    f"period must be an integer >= 1, got {self.period}")
        self._check(self.tie is None or self.tie > 0, f"tie must be > 0, got {self.tie}")

    def check_topology(self, topology: Any) -> None:
        """Refuse time-varying and directed topologies."""
        _undirected_static(self, topology)

    def init(self, X0: torch.Tensor, oracle: Any, mixer: Any) -> ECLState:  # noqa: N803
        """Duals start at zero."""
        self.check_topology(mixer.topology)
        width = edge_slots(mixer.topology).neighbors.shape[1]
        return ECLState(x=X0.clone(), z=X0.new_zeros(X0.shape[0], width, *X0.shape[1:]))

    def penalty(self, degree: torch.Tensor, lr: float) -> torch.Tensor:
        """``α_i`` per node: ``alpha``, or the tied ``tie / (η (K|N_i| + K − tie|N_i|))``."""
        deg = degree.to(torch.float64)
        if self.tie is None:
            return torch.full_like(deg, self.alpha)
        K, piw = self.period, self.tie
        denom = lr * (K * deg + K - piw * deg)
        self._check(bool((denom > 0).all()), f"tie = {piw} with period {K} gives a negative "
                                             "penalty; use a smaller tie or a longer period")
        return piw / denom

    def _primal(self, state: ECLState, G: torch.Tensor, slots: EdgeSlots, rows: slice,
                lr: float, direction: Any = None) -> torch.Tensor:
        """ECL's closed-form primal step (``direction`` solves in another metric: NGPD)."""
        x, z = state.x, state.z
        sign = slots.sign[rows].to(x.dtype)
        deg = slots.degree[rows]
        alpha = self.penalty(deg, lr).to(x.dtype)
        az = torch.einsum("ks,ks...->k...", sign, z)        # Σ_j A_{i|j} z_{i|j}
        shape = (-1,) + (1,) * (x.dim() - 1)
        resid = G + alpha.view(shape) * (deg.to(x.dtype).view(shape) * x - az)
        if direction is None:
            return x - resid / (1.0 / lr + alpha * deg.to(x.dtype)).view(shape)
        return x - direction(resid, alpha * deg.to(x.dtype))

    def _exchange(self, z: torch.Tensor, x_new: torch.Tensor, slots: EdgeSlots, mixer: Any,
                  t: int) -> torch.Tensor:
        """Send ``y_{i|j} = z_{i|j} − 2 A_{i|j} x_i⁺`` along every edge; mix it into ``z``."""
        start = mixer.local_rows.start
        src, dst = (e.to(x_new.device) for e in mixer.edges(t))
        s_out = slots.slot(src, dst)
        sign_out = slots.sign[src, s_out].to(x_new.dtype)
        shape = (-1,) + (1,) * (x_new.dim() - 1)
        msg = z[src - start, s_out] - 2 * sign_out.view(shape) * x_new[src - start]
        got = mixer.exchange(msg, t)
        isrc, idst = (e.to(x_new.device) for e in mixer.in_edges(t))
        s_in = slots.slot(idst, isrc)
        z = z.clone()
        z[idst - start, s_in] = torch.lerp(z[idst - start, s_in], got, self.theta)
        return z

    def step(self, state: ECLState, batch: Any, oracle: Any, mixer: Any, lr: float) -> ECLState:
        """Primal step; duals exchanged every ``period`` steps."""
        self._check(lr > 0, f"the proximal weight is 1/lr, so lr must be > 0 (got {lr})")
        loss, G = oracle(state.x, batch)
        slots = _slots(mixer.topology, state.x.device)
        x = self._primal(state, G, slots, mixer.local_rows, lr)
        z = state.z
        if (state.t + 1) % self.period == 0:
            z = self._exchange(z, x, slots, mixer, state.t)
        return ECLState(x=x, z=z, t=state.t + 1, loss=loss)
