"""Compressed gossip: CHOCO-SGD and AdaGossip (AdaG-SGD).

Sources: Koloskova, Stich, Jaggi, ICML 2019 and Koloskova, Lin, Stich, Jaggi, ICLR 2020
(CHOCO-SGD); Aketi, Hashemi, Roy 2024, arXiv 2404.05919, official code aparna-aketi/AdaG_SGD
``gossip_choco/distributed.py`` (AdaGossip); docs/reference/algorithms.md §9, pitfalls 10 and 11,
§16 items 10 and 11.

Each node keeps a public copy ``x̂_i`` of its model that every neighbour also holds (all start at
0, pitfall 10), and sends only the compressed change ``q_i = Q(x_i − x̂_i)``; the running weighted
sum of the copies it sees, ``s_i = Σ_j w_ij x̂_j``, replaces the neighbours' copies. The
compressors live in :mod:`flatlab.comm.compress`; the mixer counts the compressed message's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm import compress as C
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import LayeredOracle, Oracle
from flatlab.errors import AlgorithmError, FlatlabError
from flatlab.seeds import seed_for
from flatlab.topology import Topology

__all__ = ["AdaGossip", "CHOCO", "ChocoState", "AdaGossipState"]


@dataclass(kw_only=True)
class ChocoState(State):
    """``x``, the public copies ``x_hat``, ``s = W x̂`` and the momentum buffer ``m``.

    ``x_hat[i]`` is node ``i``'s own public copy; ``s[i] = Σ_j w_ij x̂_j`` (all ``[n, P]``);
    ``m`` is zero-sized without momentum.
    """

    x_hat: torch.Tensor
    s: torch.Tensor
    m: torch.Tensor


@dataclass(kw_only=True)
class AdaGossipState(ChocoState):
    """CHOCO's state plus ``u``, the running second moment of the gossip error (``[n, P]``)."""

    u: torch.Tensor


@register("choco", "choco-sgd")
@dataclass(frozen=True)
class CHOCO(Algorithm):
    """CHOCO-SGD: a local step, then gossip of compressed differences to public copies.

    One iteration (docs/reference/algorithms.md §9.2)::

        x_i^{t+½} = x_i^t − η d_i              (d: the gradient, or heavy-ball/Nesterov momentum)
        q_i       = Q(x_i^{t+½} − x̂_i)         (sent to every neighbour)
        x̂_j      ← x̂_j + q_j  for j ∈ N_i ∪ {i}, i.e.  x̂_i ← x̂_i + q_i,  s_i ← s_i + Σ_j w_ij q_j
        x_i^{t+1} = x_i^{t+½} + γ Σ_j w_ij (x̂_j − x̂_i)  =  x_i^{t+½} + γ (s_i − x̂_i)

    (the last form uses ``Σ_j w_ij = 1``). With the identity compressor and ``γ = 1`` it is
    DSGD-ATC (``diffusion``); with any compressor, a common scalar ``γ`` and a doubly stochastic
    ``W`` it preserves the network mean of the half step exactly. CHOCO-gossip (``lr = 0``)
    reaches consensus for a small enough ``γ``. Needs a static topology.

    Messages: one compressed vector per node per step, broadcast to its neighbours (counted at
    :func:`~flatlab.comm.compress.payload_bytes` each). State: ``x``, ``x̂``, ``s`` (and the
    momentum buffer). Fixed point: not exact (DSGD's heterogeneity bias, no tracking).

    Args:
        gamma: Consensus step ``γ ∈ (0, 1]``; tuned per compressor and ratio in practice.
        compressor: ``identity``, ``top-k``, ``random-k``, ``sign`` or ``qsgd``.
        fraction: Share of coordinates kept by ``top-k`` and ``random-k`` (1% compression keeps
            ``0.01``).
        levels: ``s`` of ``qsgd``.
        scaled: ``random-k`` scaled by ``d/k`` (unbiased; not a contraction).
        biased: ``qsgd`` scaled by ``1/(1 + τ)`` (CHOCO's contraction; default).
        per_layer: Compress each parameter tensor separately (Aketi's code) instead of the whole
            vector.
        momentum: ``β`` of the local step (0: plain SGD).
        nesterov: Nesterov's direction instead of heavy ball.
        seed: Seed of the random compressors' draws (one stream per step).
    """

    gamma: float = 0.5
    compressor: str = "top-k"
    fraction: float = 0.01
    levels: int = 16
    scaled: bool = False
    biased: bool = True
    per_layer: bool = True
    momentum: float = 0.0
    nesterov: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self._check(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        self._check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        self._check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        self.q  # noqa: B018 - an unknown compressor or a bad parameter fails at construction

    def check_topology(self, topology: Topology) -> None:
        """Refuse time-varying topologies: ``s = Σ_τ W q^τ`` is ``W x̂`` only for a fixed ``W``."""
        super().check_topology(topology)
        self._check(topology.period == 1,
                    f"needs a static topology (the public copies' running sum s = W x_hat holds "
                    f"only for a fixed W); {topology.label} changes every round")

    @property
    def q(self) -> C.Compressor:
        """The compression operator named by ``compressor`` and its parameters."""
        params: dict[str, Any] = {
            "top-k": {"fraction": self.fraction},
            "random-k": {"fraction": self.fraction, "scaled": self.scaled},
            "qsgd": {"levels": self.levels, "biased": self.biased},
        }.get(self.compressor, {})
        try:
            return C.make(self.compressor, **params)
        except FlatlabError as e:
            raise AlgorithmError(f"{self.name}: {e}") from None

    def blocks(self, oracle: Oracle) -> list[slice] | None:
        """The parameter tensors' slices (``per_layer``) or ``None`` (the whole vector).

        Per-layer compression needs an oracle that names its tensors
        (:class:`~flatlab.engine.oracle.LayeredOracle`); a written-down objective has none.
        """
        if not self.per_layer or not isinstance(oracle, LayeredOracle):
            return None
        return oracle.parameter_slices()

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> ChocoState:  # noqa: N803
        """Public copies and their weighted sums start at 0 on every node (pitfall 10)."""
        mixer.require(self.check_topology)
        zeros = torch.zeros_like(X0)
        m = torch.zeros_like(X0) if self.momentum > 0 else X0.new_zeros(X0.shape[0], 0)
        return ChocoState(x=X0.clone(), x_hat=zeros, s=zeros.clone(), m=m)

    def _half_step(self, state: ChocoState, G: torch.Tensor, lr: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x − η d`` and the new momentum buffer."""
        if self.momentum == 0:
            return torch.add(state.x, G, alpha=-lr), state.m
        m = torch.add(G, state.m, alpha=self.momentum)
        d = torch.add(G, m, alpha=self.momentum) if self.nesterov else m
        return torch.add(state.x, d, alpha=-lr), m

    def _gossip(self, state: ChocoState, x_half: torch.Tensor, oracle: Oracle, mixer: Mixer
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress, send, update the copies: ``(x̂⁺, s⁺)``."""
        P = x_half.shape[1]  # noqa: N806
        blocks = self.blocks(oracle)
        q = C.compress(x_half - state.x_hat, self.q, blocks=blocks,
                       seed=seed_for(self.seed, "compressor", state.t), rows=mixer.local_rows,
                       n=mixer.n)
        x_hat = state.x_hat + q
        s = state.s + mixer.mix(q, state.t, row_bytes=C.payload_bytes(self.q, P, blocks))
        return x_hat, s

    def step(self, state: ChocoState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> ChocoState:
        """Local step, compressed gossip of the change, consensus step ``γ``."""
        loss, G = oracle(state.x, batch)
        x_half, m = self._half_step(state, G, lr)
        x_hat, s = self._gossip(state, x_half, oracle, mixer)
        x = torch.add(x_half, s - x_hat, alpha=self.gamma)
        return ChocoState(x=x, x_hat=x_hat, s=s, m=m, t=state.t + 1, loss=loss)


@register("adagossip", "adag-sgd")
@dataclass(frozen=True)
class AdaGossip(CHOCO):
    """AdaGossip (AdaG-SGD): CHOCO with a per-coordinate consensus step from the gossip error.

    After CHOCO's copy update (docs/reference/algorithms.md §9.3, as the official code does it)::

        e_i  = Σ_j w_ij (x̂_j − x̂_i) = s_i − x̂_i            (gossip error)
        u_i ← β u_i + (1 − β) e_i ⊙ e_i
        û_i  = u_i / (1 − β^{t+1})                          (bias correction)
        γ_i  = min(γ / (√û_i + ε), 1)                       (per coordinate)
        x_i^{t+1} = x_i^{t+½} + γ_i ⊙ e_i

    The per-node, per-coordinate ``γ_i`` does not preserve the network mean (pitfall 11). The
    code's lazy application of the consensus update (at the next forward pass) happens before
    the next gradient, so it is this order. Defaults are the code's: ``β = 0.999``,
    ``ε = 1e-8``, ``γ = 1``; its QGM option is not reproduced.

    Messages: CHOCO's (one compressed vector per node per step). State: CHOCO's plus ``u``
    (``[n, P]``, never sent). Fixed point: not exact (the heterogeneity bias remains).

    The other arguments (``gamma``, ``compressor``, ``fraction``, ``levels``, ``scaled``,
    ``biased``, ``per_layer``, ``momentum``, ``nesterov``, ``seed``) are CHOCO's (see
    :class:`CHOCO`).

    Args:
        beta: ``β ∈ [0, 1)`` of the second moment.
        eps: ``ε > 0``.
    """

    gamma: float = 1.0
    beta: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(0.0 <= self.beta < 1.0, f"beta must be in [0, 1), got {self.beta}")
        self._check(self.eps > 0, f"eps must be > 0, got {self.eps}")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> AdaGossipState:  # noqa: N803
        """CHOCO's start with ``u = 0``."""
        c = super().init(X0, oracle, mixer)
        return AdaGossipState(x=c.x, x_hat=c.x_hat, s=c.s, m=c.m, u=torch.zeros_like(X0))

    def step(self, state: AdaGossipState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> AdaGossipState:
        """Local step, compressed gossip, per-coordinate consensus step ``γ_i``."""
        loss, G = oracle(state.x, batch)
        x_half, m = self._half_step(state, G, lr)
        x_hat, s = self._gossip(state, x_half, oracle, mixer)
        e = s - x_hat
        u = torch.lerp(e * e, state.u, self.beta)
        u_hat = u / (1.0 - self.beta ** (state.t + 1))
        gamma = (self.gamma / (u_hat.sqrt() + self.eps)).clamp_(max=1.0)
        x = x_half + gamma * e
        return AdaGossipState(x=x, x_hat=x_hat, s=s, m=m, u=u, t=state.t + 1, loss=loss)
