"""Decentralized SGD in its three orders: consensus (DGD / D-PSGD), diffusion ATC and CTA.

The three orders are different algorithms with different fixed points and messages
(docs/reference/algorithms.md §1.5, §2, §3; pitfall 1). In the row convention ``X ← W X``:

==================  =====================================  ==========================
name                update                                 gradient at
==================  =====================================  ==========================
``consensus``       ``X⁺ = W_t X − η G(X)``                the pre-mix iterate
``diffusion``       ``X⁺ = W_t (X − η G(X))``              the own iterate (ATC)
``diffusion-cta``   ``Φ = W_t X``, ``X⁺ = Φ − η G(Φ)``     the combined point
==================  =====================================  ==========================

``dsgd`` is an alias of ``diffusion``, the form Koloskova et al. (2020) and most deep-learning
papers call DSGD. ``ad-psgd`` is the consensus order over an asynchronous pairwise network
(:class:`~flatlab.topology.faults.AsyncGossip`), with stale gradients where the run sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle
from flatlab.topology.core import Topology

__all__ = ["Consensus", "Diffusion", "DiffusionCTA", "ADPSGD"]


class _Gossip(Algorithm):
    #: Row-stochastic rounds (lost messages) too: the nodes still agree, the average drifts.
    mixing: ClassVar[tuple[str, ...]] = ("doubly", "row")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> State:  # noqa: N803
        """The state is the iterate only."""
        mixer.require(self.check_topology)
        return State(x=X0.clone())


@register("consensus", "dgd", "d-psgd")
@dataclass(frozen=True)
class Consensus(_Gossip):
    """Consensus / DGD / D-PSGD (Lian et al., NeurIPS 2017; Nedić & Ozdaglar; Sayed).

    ``x_i⁺ = Σ_j w_ij x_j − η ∇F_i(x_i; ξ_i)``, in matrix form ``X⁺ = W_t X − η G(X)``.

    The gradient is taken at the pre-mix iterate, so it can overlap the exchange. Messages: one
    vector (``x_j``) per neighbour. State: ``x``. Fixed point (constant ``η``, exact gradients):
    ``X = W X − η ∇F(X)``, biased by ``O(η ζ*/(1 − ρ))``, larger than diffusion's
    (docs/reference/algorithms.md §16 item 4).
    """

    def step(self, state: State, batch: Any, oracle: Oracle, mixer: Mixer, lr: float) -> State:
        """``X⁺ = W_t X − η G(X)``."""
        loss, G = oracle(state.x, batch)
        x = mixer.mix(state.x, state.t).add_(G, alpha=-lr)  # the mix output is ours
        return State(x=x, t=state.t + 1, loss=loss)


@register("diffusion", "dsgd", "diffusion-atc", "atc")
@dataclass(frozen=True)
class Diffusion(_Gossip):
    """Adapt-then-combine diffusion, DSGD (Koloskova et al., ICML 2020; Sayed's ATC).

    ``ψ_i = x_i − η ∇F_i(x_i; ξ_i)``, ``x_i⁺ = Σ_j w_ij ψ_j``; matrix form
    ``X⁺ = W_t (X − η G(X))``.

    Messages: one vector (``ψ_j``) per neighbour. State: ``x``. Fixed point:
    ``X = W (X − η ∇F(X))``, biased by ``O(η ζ* ρ/(1 − ρ))``. With ``W = J`` and equal starts it is
    centralized SGD exactly (docs/reference/algorithms.md §16 item 9).
    """

    def step(self, state: State, batch: Any, oracle: Oracle, mixer: Mixer, lr: float) -> State:
        """``X⁺ = W_t (X − η G(X))``."""
        loss, G = oracle(state.x, batch)
        x = mixer.mix(torch.add(state.x, G, alpha=-lr), state.t)
        return State(x=x, t=state.t + 1, loss=loss)


@register("diffusion-cta", "cta")
@dataclass(frozen=True)
class DiffusionCTA(_Gossip):
    """Combine-then-adapt diffusion (Sayed; Chen & Sayed 2012).

    ``φ_i = Σ_j w_ij x_j``, ``x_i⁺ = φ_i − η ∇F_i(φ_i; ξ_i)``; matrix form ``Φ = W_t X``,
    ``X⁺ = Φ − η G(Φ)``.

    The gradient is taken at the combined point, so communication and computation are
    sequential. Messages: one vector (``x_j``) per neighbour. State: ``x``. Fixed point:
    ``X = W X − η ∇F(W X)``, biased.
    """

    def step(self, state: State, batch: Any, oracle: Oracle, mixer: Mixer, lr: float) -> State:
        """``Φ = W_t X``, ``X⁺ = Φ − η G(Φ)``."""
        phi = mixer.mix(state.x, state.t)
        loss, G = oracle(phi, batch)
        return State(x=torch.add(phi, G, alpha=-lr), t=state.t + 1, loss=loss)


@register("ad-psgd", "adpsgd")
@dataclass(frozen=True)
class ADPSGD(Consensus):
    """Asynchronous decentralized parallel SGD, AD-PSGD (Lian, Zhang, Zhang, Liu; ICML 2018).

    Each node computes a gradient on the copy of its model it read when it started (possibly
    stale), averages atomically with one uniformly random neighbour, and applies the gradient.
    Over a round of ticks (:class:`~flatlab.topology.faults.AsyncGossip`, one unit of time):
    ``X⁺ = W_t X − η G(X̂)`` with ``W_t`` the product of the round's pairwise averages (doubly
    stochastic) and ``x̂_i`` node ``i``'s model ``d_i`` steps ago (``train.staleness``; none:
    ``X̂ = X``). The consensus order (Lian et al.'s Algorithm 1 averages before it applies the
    gradient computed on the earlier copy). Its network rate is the round's mean-square
    contraction ``λ₂(E[W_tᵀ W_t])``, closed form in :func:`flatlab.theory.async_gossip_spectrum`.

    Messages: one vector per tick a node takes part in (``x_j`` to the partner, and back).
    State: ``x`` (the stale points are the run's, :class:`~flatlab.engine.oracle.
    DelayedGradients`). With a constant step there is no fixed point: ``W_t`` is new every
    round, so the iterates keep moving by ``O(η)`` around the consensus-form bias.

    Runs on ``topology.faults: {model: async_gossip}`` only: on a static graph the same update is
    ``consensus`` (D-PSGD), the synchronous method.
    """

    def check_topology(self, topology: Topology) -> None:
        """Only the rounds of asynchronous pairwise gossip."""
        super().check_topology(topology)
        label = getattr(topology, "label", "this topology")
        self._check(getattr(topology, "params", {}).get("faults") == "async gossip",
                    f"averages with one random neighbour per tick, so it runs on "
                    f"topology.faults: {{model: async_gossip}} (flatlab.topology.faults."
                    f"AsyncGossip), not on {label}; accepted: that network, or consensus for "
                    "the synchronous D-PSGD")
