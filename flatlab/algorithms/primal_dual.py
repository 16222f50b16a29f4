"""Primal-dual decentralized learning: Edge-Consensus Learning (ECL, PDMM/ADMM) and NGPD.

Source: Niwa, Harada, Zhang, Kleijn, "Edge-consensus learning", KDD 2020; the exchange period
and the tied penalty of nttcslab/ecl-isvr (ICML 2021); docs/reference/algorithms.md §7.1, §16
items 6 and 12, pitfall 8.

The problem ``min Σ_i f_i(x_i)`` subject to ``A_{i|j} x_i + A_{j|i} x_j = 0`` on every edge, with
``A_{i|j} = +I`` if ``i < j`` and ``−I`` otherwise. Each node keeps one dual ``z_{i|j}`` per
neighbour; the duals are stored node-stacked as ``z[i, s]`` for the ``s``-th neighbour of ``i``
in increasing order (padded with zeros up to the largest degree), so a distributed run splits
them with the nodes. The slots come from the mixer (``mixer.edge_slots``, no graph object): ``init``
turns them into :class:`EdgeLinks` and keeps them in the state as derived data, never saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flatlab.algorithms.base import Algorithm, State, derived, register
from flatlab.comm.protocols import Mixer
from flatlab.curvature.kfac import FISHER_TYPES, Eigenbasis, eigenbasis, kfac_solve
from flatlab.engine.oracle import FusedMetricOracle, MetricBlock, MetricOracle, Oracle
from flatlab.seeds import seed_for
from flatlab.topology import Topology

__all__ = ["ECL", "ECLState", "NGPD", "NGPDState", "EdgeLinks"]


@dataclass(frozen=True)
class EdgeLinks:
    """ECL's view of the held nodes' edges, from the mixer's edge slots (derived by ``init``).

    Row ``r`` is the ``r``-th node this process holds; slot ``s`` its ``s``-th neighbour
    (:class:`~flatlab.comm.EdgeSlots`). All on the state's device.

    Attributes:
        sign: ``[k, D]`` float64 ``A_{i|j}``: ``+1`` if ``i < j``, ``−1`` if ``i > j``, 0 on
            padding.
        degree: ``[k]`` int64 number of neighbours ``|N_i|``.
        src: ``[E_out]`` local row of the sender of each exchanged message (``mixer.edges``).
        s_out: ``[E_out]`` the receiver's slot in the sender's row: the message is formed from
            ``z[src, s_out] = z_{i|j}``.
        sign_out: ``[E_out]`` ``A_{i|j}`` of each sent message.
        dst: ``[E_in]`` local row of the receiver of each received message (``mixer.in_edges``).
        s_in: ``[E_in]`` the sender's slot in the receiver's row: the message updates
            ``z[dst, s_in] = z_{j|i}``.
    """

    sign: torch.Tensor
    degree: torch.Tensor
    src: torch.Tensor
    s_out: torch.Tensor
    sign_out: torch.Tensor
    dst: torch.Tensor
    s_in: torch.Tensor

    @classmethod
    def of(cls, mixer: Mixer, device: torch.device) -> EdgeLinks:
        """The links of round 0's edges (the primal-dual methods need a static topology)."""
        slots = mixer.edge_slots(0).to(device)
        rows = mixer.local_rows
        node = torch.arange(rows.start, rows.start + slots.degree.numel(), device=device)
        one = torch.ones(slots.neighbors.shape, dtype=torch.float64, device=device)
        sign = torch.where(slots.neighbors < mixer.n,
                           torch.where(node.unsqueeze(1) < slots.neighbors, one, -one),
                           torch.zeros_like(one))
        return cls(sign, slots.degree, slots.out_rows, slots.out_slots,
                   sign[slots.out_rows, slots.out_slots], slots.in_rows, slots.in_slots)


@dataclass(kw_only=True)
class ECLState(State):
    """``x`` and the per-edge duals ``z`` (``[n, D, P]``, ``D`` the largest degree).

    ``links`` (derived, not saved) locates every edge's dual and message.
    """

    z: torch.Tensor
    links: EdgeLinks | None = derived()


def _undirected_static(algo: Algorithm, topology: Topology) -> None:
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
    (docs/reference/algorithms.md §7.1)::

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

    def check_topology(self, topology: Topology) -> None:
        """Refuse column-stochastic, time-varying and directed topologies."""
        super().check_topology(topology)
        _undirected_static(self, topology)

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> ECLState:  # noqa: N803
        """Duals start at zero, or at ``z_{i|j} = A_{i|j} x_i⁰`` (``dual_init="x0"``)."""
        mixer.require(self.check_topology)
        links = EdgeLinks.of(mixer, X0.device)
        z = X0.new_zeros(X0.shape[0], links.sign.shape[1], *X0.shape[1:])
        if self.dual_init == "x0":
            sign = links.sign.to(X0.dtype)
            z = sign.view(*sign.shape, *(1,) * (X0.dim() - 1)) * X0.unsqueeze(1)
        return ECLState(x=X0.clone(), z=z, links=links)

    @staticmethod
    def _links(state: ECLState, mixer: Mixer) -> EdgeLinks:
        """The state's links (a state built by hand gets them from the mixer)."""
        return state.links if state.links is not None else EdgeLinks.of(mixer, state.x.device)

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

    def _primal(self, state: ECLState, G: torch.Tensor, links: EdgeLinks, lr: float,
                direction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        """ECL's closed-form primal step (``direction`` solves in another metric: NGPD)."""
        x, z = state.x, state.z
        sign = links.sign.to(x.dtype)
        deg = links.degree
        alpha = self.penalty(deg, lr).to(x.dtype)
        az = torch.einsum("ks,ks...->k...", sign, z)        # Σ_j A_{i|j} z_{i|j}
        shape = (-1,) + (1,) * (x.dim() - 1)
        resid = G + alpha.view(shape) * (deg.to(x.dtype).view(shape) * x - az)
        if direction is None:
            return x - resid / (1.0 / lr + alpha * deg.to(x.dtype)).view(shape)
        return x - direction(resid, alpha * deg.to(x.dtype))

    def _exchange(self, z: torch.Tensor, x_new: torch.Tensor, links: EdgeLinks, mixer: Mixer,
                  t: int) -> torch.Tensor:
        """Send ``y_{i|j} = z_{i|j} − 2 A_{i|j} x_i⁺`` along every edge; mix it into ``z``."""
        src, s_out, sign_out = links.src, links.s_out, links.sign_out
        dst, s_in = links.dst, links.s_in
        shape = (-1,) + (1,) * (x_new.dim() - 1)
        msg = z[src, s_out] - 2 * sign_out.to(x_new.dtype).view(shape) * x_new[src]
        got = mixer.exchange(msg, t)
        return z.index_put((dst, s_in), torch.lerp(z[dst, s_in], got, self.theta))

    def step(self, state: ECLState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> ECLState:
        """Primal step; duals exchanged every ``period`` steps."""
        self._check(lr > 0, f"the proximal weight is 1/lr, so lr must be > 0 (got {lr})")
        loss, G = oracle(state.x, batch)
        links = self._links(state, mixer)
        x = self._primal(state, G, links, lr)
        z = state.z
        if (state.t + 1) % self.period == 0:
            z = self._exchange(z, x, links, mixer, state.t)
        return ECLState(x=x, z=z, t=state.t + 1, loss=loss, links=links)


# ---------------------------------------------------------------------------------- NGPD
@dataclass(kw_only=True)
class NGPDState(ECLState):
    """ECL's state plus the local curvature, node-stacked and never communicated.

    Attributes:
        factors: ``[n, F]`` running averages of the metric's factors, packed (every covered
            layer's ``A`` then ``G``, flattened; or the dense ``[d, d]`` metric of an oracle).
        basis: ``[n, E]`` their eigendecompositions, packed (``Q_A, d_A, Q_G, d_G`` per layer),
            refreshed every ``inverse_every`` steps.
        metric: The metric's block structure, from the oracle (derived, not saved).
    """

    factors: torch.Tensor
    basis: torch.Tensor
    metric: _Blocks | None = derived()


class _Blocks:
    """Packing of a metric made of Kronecker blocks ``G ⊗ A`` over slices of ``[W | b]``.

    The blocks come from the oracle (:meth:`~flatlab.engine.oracle.MetricOracle.metric_blocks`):
    a model's K-FAC layers, or one dense block for a written-down objective.
    """

    def __init__(self, layers: list[MetricBlock], P: int) -> None:  # noqa: N803
        self.layers, self.P = layers, P
        self.sizes = [(ly.a_dim, ly.g_dim) for ly in layers]
        self.F = sum(a * a + g * g for a, g in self.sizes)
        self.E = sum(a * a + a + g * g + g for a, g in self.sizes)
        covered = torch.zeros(P, dtype=torch.bool, device="cpu")
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
            sol = kfac_solve(V, A, G, shift, scale=mu, basis=Eigenbasis(q_a, d_a, q_g, d_g),
                             tikhonov=tikhonov)
            ly.scatter(sol, out)
        return out


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


def _metric_oracle(algo: Algorithm, oracle: Oracle) -> MetricOracle:
    """``oracle`` as a :class:`MetricOracle`, or a one-line refusal."""
    algo._check(isinstance(oracle, MetricOracle),
                f"needs an oracle with a curvature metric (a GradientOracle's K-FAC, or "
                f"simulate(..., metric_fn=...)); a {type(oracle).__name__} has none")
    return oracle


def _metric_of(algo: Algorithm, oracle: Oracle, P: int) -> _Blocks:  # noqa: N803
    """The block structure of ``oracle``'s metric over ``P`` parameters, or a refusal."""
    layers = _metric_oracle(algo, oracle).metric_blocks(P)
    algo._check(layers is not None,
                f"needs an oracle with a curvature metric (a GradientOracle's K-FAC, or "
                f"simulate(..., metric_fn=...)); this {type(oracle).__name__} has no metric_fn")
    return _Blocks(layers, P)


@register("ngpd", "natural-gradient-primal-dual")
@dataclass(frozen=True)
class NGPD(ECL):
    """Natural Gradient Primal-Dual: ECL's primal step in a damped K-FAC Fisher metric.

    A **reconstruction** from the abstract of Niwa, Ishii, Sawada, Fujino, Harada, Yokota,
    IEEE TSIPN 10:417–433, 2024 (no full text or code is available; docs/reference/algorithms.md
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
    true Fisher) and kept as a running average
    ``F ← ξ F + (1 − ξ) F_batch`` (``ξ = ema``, the weight on the old value, kfac-pytorch's
    convention); eigendecompositions are refreshed every ``inverse_every`` steps. The empirical
    Fisher's factors come from the step's own gradient pass when the oracle can give both
    (:class:`~flatlab.engine.oracle.FusedMetricOracle`, as :class:`~flatlab.engine.GradientOracle`
    does); the true Fisher's sampled labels need a second forward and backward. On a
    written-down objective the oracle's ``metric_fn`` (``simulate(..., metric_fn=...)``) replaces
    K-FAC as ``F_i``; with the exact Hessians of quadratics the method reaches ``x*``. The metric
    is a capability of the oracle (:class:`~flatlab.engine.oracle.MetricOracle`); an oracle
    without one is refused by ``init``.

    Messages: one vector per edge per exchange (as ECL). State: ``x``, the duals ``z``, the
    packed running factors and their eigenbases. Fixed point: exact (consensus at ``x*``).

    The arguments ``alpha``, ``theta``, ``period``, ``tie`` and ``dual_init`` are ECL's (see
    :class:`ECL`).

    Args:
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

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> NGPDState:  # noqa: N803
        """ECL's start; factors and bases are filled at the first step.

        Raises:
            AlgorithmError: The oracle gives no curvature metric (:class:`MetricOracle`).
        """
        ecl = super().init(X0, oracle, mixer)  # the topology is checked first, as ECL's
        blocks = _metric_of(self, oracle, X0.shape[1])
        return NGPDState(x=ecl.x, z=ecl.z, links=ecl.links, metric=blocks,
                         factors=X0.new_zeros(X0.shape[0], blocks.F),
                         basis=X0.new_zeros(X0.shape[0], blocks.E))

    def _batch_factors(self, oracle: Oracle, blocks: _Blocks, X: torch.Tensor, batch: Any,  # noqa: N803
                       t: int) -> torch.Tensor:
        """This step's factors from the oracle's metric, packed (true Fisher seeded by ``t``)."""
        gen = torch.Generator().manual_seed(seed_for(self.seed, "kfac", t))
        return blocks.pack(_metric_oracle(self, oracle).metric_factors(
            X, batch, blocks.layers, fisher=self.fisher, generator=gen))

    def step(self, state: NGPDState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> NGPDState:
        """Curvature update (on its schedule), metric primal step, ECL duals."""
        self._check(lr > 0, f"the proximal weight is 1/lr, so lr must be > 0 (got {lr})")
        blocks = state.metric if state.metric is not None else \
            _metric_of(self, oracle, state.x.shape[1])
        factors, basis = state.factors, state.basis
        if state.t % self.factor_every == 0:
            if self.fisher == "empirical" and isinstance(oracle, FusedMetricOracle):
                # the gradient's own pass gives the factors (the same batch and point)
                loss, G, f = oracle.grads_and_factors(state.x, batch, blocks.layers)  # noqa: N806
                new = blocks.pack(f)
            else:
                loss, G = oracle(state.x, batch)  # noqa: N806
                new = self._batch_factors(oracle, blocks, state.x, batch, state.t)
            factors = new if state.t == 0 else torch.lerp(new, factors, self.ema)
        else:
            loss, G = oracle(state.x, batch)  # noqa: N806
        if state.t % self.inverse_every == 0 or state.t == 0:
            basis, ok = _basis_or_flag(blocks, factors)
            # a node's curvature blew up (its run is diverging): its loss reads NaN, so the
            # runner records the divergence on every process after this step's exchange (an
            # oracle without losses gets one: 0, NaN where the curvature failed; only then is
            # the flag read on the host)
            if loss is not None or not bool(ok.all()):
                base = loss if loss is not None else state.x.new_zeros(ok.shape)
                loss = torch.where(ok.to(base.device), base, torch.full_like(base, math.nan))
        mu = 1.0 / lr

        def direction(resid: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return blocks.solve(resid, basis, mu, mu * self.damping + c, self.tikhonov, factors)

        links = self._links(state, mixer)
        x = self._primal(state, G, links, lr, direction)
        z = state.z
        if (state.t + 1) % self.period == 0:
            z = self._exchange(z, x, links, mixer, state.t)
        return NGPDState(x=x, z=z, factors=factors, basis=basis, t=state.t + 1, loss=loss,
                         links=links, metric=blocks)
