"""Primal-dual decentralized learning: Edge-Consensus Learning (ECL, PDMM/ADMM) and NGPD.

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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.curvature.kfac import (
    FISHER_TYPES,
    Eigenbasis,
    eigenbasis,
    kfac_factors,
    kfac_layers,
    kfac_solve,
)

__all__ = ["ECL", "ECLState", "NGPD", "NGPDState", "EdgeSlots", "edge_slots"]


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


_EDGE_INDEX: dict[tuple[int, int, str], tuple[Any, tuple[torch.Tensor, ...]]] = {}


def _edge_index(slots: EdgeSlots, mixer: Any, t: int, device: torch.device
                ) -> tuple[torch.Tensor, ...]:
    """Local rows and slots of round ``t``'s outgoing and incoming edges, computed once.

    Returns ``(src, s_out, sign_out, dst, s_in)``: the message of edge ``e`` is formed from
    ``z[src[e], s_out[e]]`` and ``x[src[e]]`` (rows local to this process) with sign
    ``A_{src|dst}``; the ``e``-th received message goes to ``z[dst[e], s_in[e]]``.
    """
    key = (id(mixer), t % mixer.topology.period, str(device))
    hit = _EDGE_INDEX.get(key)
    if hit is None or hit[0] is not mixer:
        start = mixer.local_rows.start
        src, dst = (e.to(device) for e in mixer.edges(t))
        s_out = slots.slot(src, dst)
        isrc, idst = (e.to(device) for e in mixer.in_edges(t))
        hit = (mixer, (src - start, s_out, slots.sign[src, s_out], idst - start,
                       slots.slot(idst, isrc)))
        _EDGE_INDEX[key] = hit
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
        dual_init: ``"zero"`` (the paper's and the reference's) or ``"x0"``:
            ``z_{i|j} = A_{i|j} x_i⁰``, the duals of consensus at the start, so the penalty
            pulls towards ``x_i⁰`` instead of 0 (then ``2x_j``, …) in the first rounds. Local
            to each node; the fixed point is the same.
    """

    alpha: float = 1.0
    theta: float = 1.0
    period: int = 1
    tie: float | None = None
    dual_init: str = "zero"
    exact = True

    def __post_init__(self) -> None:
        self._check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        self._check(0 < self.theta <= 1, f"theta must be in (0, 1], got {self.theta}")
        self._check(isinstance(self.period, int) and self.period >= 1,
                    f"period must be an integer >= 1, got {self.period}")
        self._check(self.tie is None or self.tie > 0, f"tie must be > 0, got {self.tie}")
        self._check(self.dual_init in ("zero", "x0"),
                    f"dual_init must be 'zero' or 'x0', got {self.dual_init!r}")

    def check_topology(self, topology: Any) -> None:
        """Refuse time-varying and directed topologies."""
        _undirected_static(self, topology)

    def init(self, X0: torch.Tensor, oracle: Any, mixer: Any) -> ECLState:  # noqa: N803
        """Duals start at zero, or at ``z_{i|j} = A_{i|j} x_i⁰`` (``dual_init="x0"``)."""
        self.check_topology(mixer.topology)
        slots = _slots(mixer.topology, X0.device)
        z = X0.new_zeros(X0.shape[0], slots.neighbors.shape[1], *X0.shape[1:])
        if self.dual_init == "x0":
            sign = slots.sign[mixer.local_rows].to(X0.dtype)
            z = sign.view(*sign.shape, *(1,) * (X0.dim() - 1)) * X0.unsqueeze(1)
        return ECLState(x=X0.clone(), z=z)

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
        src, s_out, sign_out, dst, s_in = _edge_index(slots, mixer, t, x_new.device)
        shape = (-1,) + (1,) * (x_new.dim() - 1)
        msg = z[src, s_out] - 2 * sign_out.to(x_new.dtype).view(shape) * x_new[src]
        got = mixer.exchange(msg, t)
        return z.index_put((dst, s_in), torch.lerp(z[dst, s_in], got, self.theta))

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


# ---------------------------------------------------------------------------------- NGPD
@dataclass(kw_only=True)
class NGPDState(ECLState):
    """ECL's state plus the local curvature, node-stacked and never communicated.

    Attributes:
        factors: ``[n, F]`` running averages of the metric's factors, packed (every covered
            layer's ``A`` then ``G``, flattened; or the dense ``[d, d]`` metric of an oracle).
        basis: ``[n, E]`` their eigendecompositions, packed (``Q_A, d_A, Q_G, d_G`` per layer),
            refreshed every ``inverse_every`` steps.
    """

    factors: torch.Tensor
    basis: torch.Tensor


class _Blocks:
    """Packing of a metric made of Kronecker blocks ``G ⊗ A`` over slices of ``[W | b]``."""

    def __init__(self, layers: list[Any], P: int, dense: bool = False) -> None:  # noqa: N803
        self.layers, self.P, self.dense = layers, P, dense
        self.sizes = [(ly.a_dim, ly.g_dim) for ly in layers]
        self.F = sum(a * a + g * g for a, g in self.sizes)
        self.E = sum(a * a + a + g * g + g for a, g in self.sizes)
        covered = torch.zeros(P, dtype=torch.bool)
        for ly in layers:
            covered[ly.weight[0]] = True
            if ly.bias is not None:
                covered[ly.bias[0]] = True
        self.uncovered = ~covered

    def pack(self, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([t.flatten(1) for pair in factors for t in pair], dim=1)

    def unpack(self, packed: torch.Tensor, with_eigs: bool = False) -> list[tuple]:
        out, pos, n = [], 0, packed.shape[0]

        def take(*shape: int) -> torch.Tensor:
            nonlocal pos
            size = math.prod(shape)
            v = packed[:, pos:pos + size].reshape(n, *shape)
            pos += size
            return v

        for a, g in self.sizes:
            if with_eigs:
                out.append((take(a, a), take(a), take(g, g), take(g)))
            else:
                out.append((take(a, a), take(g, g)))
        return out

    def basis(self, factors: torch.Tensor) -> torch.Tensor:
        parts = []
        for A, G in self.unpack(factors):  # noqa: N806
            b = eigenbasis(A, G)
            parts += [b.q_a.flatten(1), b.d_a, b.q_g.flatten(1), b.d_g]
        return torch.cat(parts, dim=1)

    def solve(self, R: torch.Tensor, basis: torch.Tensor, mu: float, shift: torch.Tensor,  # noqa: N803
              tikhonov: bool, factors: torch.Tensor) -> torch.Tensor:
        """``(μ F + shift_i I)⁻¹ r_i`` per node, blockwise; ``shift`` is ``[n]``."""
        out = R / shift.unsqueeze(1)  # parameters no block covers: the damping alone
        eigs = self.unpack(basis, with_eigs=True)
        facs = self.unpack(factors)
        for ly, (q_a, d_a, q_g, d_g), (A, G) in zip(self.layers, eigs, facs, strict=True):  # noqa: N806
            V = ly.matrix(R)  # noqa: N806
            if self.dense:
                V = V.unsqueeze(-1)  # noqa: N806
            sol = kfac_solve(V, A, G, shift, scale=mu, basis=Eigenbasis(q_a, d_a, q_g, d_g),
                             tikhonov=tikhonov)
            if self.dense:
                sol = sol.squeeze(-1)
            ly.scatter(sol, out)
        return out


@dataclass(frozen=True)
class _DenseLayer:
    """The whole vector as one 'layer' ``[d, 1]`` with ``A = [1]`` and ``G`` the dense metric."""

    d: int

    @property
    def weight(self) -> tuple[slice, torch.Size]:
        return slice(0, self.d), torch.Size([self.d])

    bias = None

    @property
    def a_dim(self) -> int:
        return 1

    @property
    def g_dim(self) -> int:
        return self.d

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scatter(self, m: torch.Tensor, out: torch.Tensor) -> None:
        out[..., :self.d] = m


def _basis_or_flag(blocks: _Blocks, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenbases of the packed factors, and which nodes' factors could be decomposed.

    Rows with non-finite factors, or whose eigendecomposition fails even in float64, get the
    basis of zero factors (the damping alone) and ``False``.
    """
    ok = torch.isfinite(factors).all(dim=1)
    clean = torch.where(ok.unsqueeze(1), factors, torch.zeros_like(factors))
    try:
        return blocks.basis(clean), ok
    except torch.linalg.LinAlgError:
        pass
    rows = []
    for i in range(clean.shape[0]):
        try:
            rows.append(blocks.basis(clean[i:i + 1].double()).to(clean.dtype))
        except torch.linalg.LinAlgError:
            ok[i] = False
            rows.append(blocks.basis(torch.zeros_like(clean[i:i + 1])))
    return torch.cat(rows), ok


_METRICS: dict[int, tuple[Any, _Blocks]] = {}


def _blocks(oracle: Any, P: int) -> _Blocks:  # noqa: N803
    hit = _METRICS.get(id(oracle))
    if hit is None or hit[0] is not oracle:
        if hasattr(oracle, "stack"):
            blocks = _Blocks(kfac_layers(oracle.stack.module), P)
        else:
            blocks = _Blocks([_DenseLayer(P)], P, dense=True)
        hit = (oracle, blocks)
        _METRICS[id(oracle)] = hit
    return hit[1]


@register("ngpd", "natural-gradient-primal-dual")
@dataclass(frozen=True)
class NGPD(ECL):
    """Natural Gradient Primal-Dual: ECL's primal step in a damped K-FAC Fisher metric.

    A **reconstruction** from the abstract of Niwa, Ishii, Sawada, Fujino, Harada, Yokota,
    IEEE TSIPN 10:417–433, 2024 (no full text or code is available; reference/algorithms.md
    §7.2), to be checked against the paper when it is. ECL's Euclidean proximal term becomes the
    Fisher metric ``F̃_i = F_i + λ I`` (``F_i`` node ``i``'s K-FAC Fisher, block-diagonal
    ``G_ℓ ⊗ A_ℓ`` per layer; ``λ = damping``)::

        x_i⁺ = argmin_x ⟨g_i, x⟩ + (μ/2)(x − x_i)ᵀ F̃_i (x − x_i) + Σ_j (α/2)‖A_{i|j} x − z_{i|j}‖²
             = x_i − (μ F̃_i + α|N_i| I)⁻¹ [ g_i + α Σ_j (x_i − A_{i|j} z_{i|j}) ]

    with ``μ = 1/lr``; the per-layer inverse of ``μ (G ⊗ A) + (μλ + α|N_i|) I`` is exact in the
    Kronecker eigenbasis (or factored Tikhonov, ``tikhonov=True``). Parameters no K-FAC block
    covers (normalization scales) get the damping alone. Duals, messages and their period are
    ECL's; the curvature stays local.

    Factors are recomputed every ``factor_every`` steps from that step's minibatch (empirical or
    true Fisher; an extra forward and backward pass) and kept as a running average
    ``F ← ξ F + (1 − ξ) F_batch`` (``ξ = ema``, the weight on the old value, kfac-pytorch's
    convention); eigendecompositions are refreshed every ``inverse_every`` steps. On a
    written-down objective the oracle's ``metric_fn`` (``simulate(..., metric_fn=...)``) replaces
    K-FAC as ``F_i``; with the exact Hessians of quadratics the method reaches ``x*``.

    Messages: one vector per edge per exchange (as ECL). State: ``x``, the duals ``z``, the
    packed running factors and their eigenbases. Fixed point: exact (consensus at ``x*``).

    Args:
        alpha, theta, period, tie, dual_init: ECL's (see :class:`ECL`).
        damping: ``λ > 0`` added to the Fisher.
        fisher: ``"empirical"`` or ``"true"`` (labels sampled from the model, seeded per step).
        factor_every: Steps between factor updates ``T_f``.
        inverse_every: Steps between eigendecompositions ``T_inv`` (a multiple of
            ``factor_every`` is natural, not required).
        ema: Weight ``ξ ∈ [0, 1)`` of the old factors in the running average.
        tikhonov: Factored Tikhonov damping instead of the exact eigenbasis inverse.
        seed: Seed of the true Fisher's sampled labels.
    """

    damping: float = 1e-3
    fisher: str = "empirical"
    factor_every: int = 10
    inverse_every: int = 10
    ema: float = 0.95
    tikhonov: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(self.damping > 0, f"damping must be > 0, got {self.damping}")
        self._check(self.fisher in FISHER_TYPES, f"fisher must be one of "
                                                 f"{', '.join(FISHER_TYPES)}, got {self.fisher!r}")
        for name in ("factor_every", "inverse_every"):
            v = getattr(self, name)
            self._check(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v}")
        self._check(0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}")

    def init(self, X0: torch.Tensor, oracle: Any, mixer: Any) -> NGPDState:  # noqa: N803
        """ECL's start; factors and bases are filled at the first step."""
        ecl = super().init(X0, oracle, mixer)
        blocks = _blocks(oracle, X0.shape[1])
        return NGPDState(x=ecl.x, z=ecl.z, factors=X0.new_zeros(X0.shape[0], blocks.F),
                         basis=X0.new_zeros(X0.shape[0], blocks.E))

    def _batch_factors(self, oracle: Any, blocks: _Blocks, X: torch.Tensor, batch: Any,  # noqa: N803
                       t: int) -> torch.Tensor:
        if blocks.dense:
            M = oracle.metric(X, batch)  # noqa: N806
            return blocks.pack([(M.new_ones(M.shape[0], 1, 1), M)])
        inputs, targets = batch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        f = kfac_factors(oracle.stack, X, inputs, targets, fisher=self.fisher, generator=gen,
                         layers=blocks.layers)
        return blocks.pack([f[ly.module] for ly in blocks.layers])

    def step(self, state: NGPDState, batch: Any, oracle: Any, mixer: Any, lr: float) -> NGPDState:
        """Curvature update (on its schedule), metric primal step, ECL duals."""
        self._check(lr > 0, f"the proximal weight is 1/lr, so lr must be > 0 (got {lr})")
        loss, G = oracle(state.x, batch)
        blocks = _blocks(oracle, state.x.shape[1])
        factors, basis = state.factors, state.basis
        if state.t % self.factor_every == 0:
            new = self._batch_factors(oracle, blocks, state.x, batch, state.t)
            factors = new if state.t == 0 else torch.lerp(new, factors, self.ema)
        if state.t % self.inverse_every == 0 or state.t == 0:
            basis, ok = _basis_or_flag(blocks, factors)
            if not bool(ok.all()):
                # a node's curvature blew up (its run is diverging): its loss reads NaN, so the
                # runner records the divergence on every process after this step's exchange
                # (an oracle without losses gets one: 0, NaN where the curvature failed)
                base = loss if loss is not None else state.x.new_zeros(ok.shape)
                loss = torch.where(ok.to(base.device), base, torch.full_like(base, math.nan))
        mu = 1.0 / lr

        def direction(resid: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return blocks.solve(resid, basis, mu, mu * self.damping + c, self.tikhonov, factors)

        slots = _slots(mixer.topology, state.x.device)
        x = self._primal(state, G, slots, mixer.local_rows, lr, direction)
        z = state.z
        if (state.t + 1) % self.period == 0:
            z = self._exchange(z, x, slots, mixer, state.t)
        return NGPDState(x=x, z=z, factors=factors, basis=basis, t=state.t + 1, loss=loss)
