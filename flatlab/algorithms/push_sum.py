"""Stochastic Gradient Push: push-sum gossip with local SGD, for directed and time-varying graphs.

Push-sum (Kempe, Dobra, Gehrke, FOCS 2003) averages over a column-stochastic ``P`` (each node
splits its mass over itself and its out-neighbours; rows need not sum to one, so ``P`` need not be
doubly stochastic and the graph may be directed): every node mixes a numerator ``x_i`` and a
scalar weight ``w_i`` with the same ``P``, and the ratio ``z_i = x_i / w_i`` converges to the
average of the starting ``x_i``. Subgradient-push (Nedić & Olshevsky, IEEE TAC 2016) and SGP
(Assran, Loizou, Ballas, Rabbat, ICML 2019) take the gradient step on the numerator, with the
gradient at the de-biased ``z_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle
from flatlab.topology import Topology

__all__ = ["SGP", "PushSumState"]


@dataclass(kw_only=True)
class PushSumState(State):
    """State of :class:`SGP`: numerators and weights, and the de-biased models as ``x``.

    Attributes:
        x: ``[n, P]`` the de-biased parameters ``z_i = x_i / w_i``: each node's model, the one its
            gradient is taken at and the one every measure reads (losses, curvature, consensus
            distance; the averaged model ``x̄`` is their plain mean ``(1/n) Σ_i z_i``).
        numerator: ``[n, P]`` push-sum numerators (the paper's ``x_i``). Mixing conserves their
            sum: ``Σ_i x_i^{t+1} = Σ_i x_i^t − η Σ_i g_i^t``, and ``(1/n) Σ_i x_i`` is the
            mass-conserving average that Assran et al.'s analysis tracks, equal to
            ``(1/n) Σ_i w_i z_i``: the mean of ``z`` weighted by ``w``.
        w: ``[n, 1]`` push-sum weights, ``w^0 = 1``, ``Σ_i w_i = n`` at every step; identically 1
            on a doubly stochastic topology.
    """

    numerator: torch.Tensor
    w: torch.Tensor


@register("sgp", "push-sum", "stochastic-gradient-push")
@dataclass(frozen=True)
class SGP(Algorithm):
    """Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, ICML 2019, Algorithm 1).

    At step ``t`` with the column-stochastic ``P_t`` (``P_t[j, i]`` the share node ``i`` sends to
    ``j``; ``1ᵀ P_t = 1ᵀ``)::

        x_i^{t+1/2} = x_i^t − η ∇F_i(z_i^t; ξ_i^t)
        x^{t+1}     = P_t x^{t+1/2}
        w^{t+1}     = P_t w^t
        z^{t+1}     = x^{t+1} / w^{t+1}          (row by row)

    with ``w^0 = 1`` and ``z^0 = x^0`` (push-sum: Kempe, Dobra, Gehrke 2003; the gradient form is
    Nedić & Olshevsky's subgradient-push, IEEE TAC 2016). In matrix form over the node stack,
    ``[X⁺ | w⁺] = P_t [X − η G(Z) | w]``: the weight travels as one more column of the same
    message, so numerator and weight are mixed by the same ``P_t`` in the same round, by either
    mixer. ``state.x`` is ``Z``, the de-biased models (see :class:`PushSumState`).

    On a doubly stochastic topology ``w`` stays 1, ``Z = X`` and SGP is ``diffusion`` (DSGD)
    exactly. It is the only registered method that accepts a column-stochastic (push-sum)
    topology (``topology.weights: push-sum``, e.g. the directed or one-peer exponential graph,
    SGP's default, or any strongly connected directed graph).

    Messages: one vector and one scalar (``x_i − η g_i`` and ``w_i``, scaled by ``P_t[j, i]``) per
    out-neighbour. State: ``x`` (= ``z``), ``numerator``, ``w`` (2 P + 1). Fixed point (constant
    ``η``, exact gradients): ``D z = P (D z − η ∇F(z))`` with ``D = diag(n π)``, ``π`` the Perron
    vector of ``P``; summing the rows, ``Σ_i ∇f_i(z_i) = 0``, but the ``z_i`` differ by ``O(η)``,
    so it is biased like diffusion. Momentum is not implemented.
    """

    mixing: ClassVar[tuple[str, ...]] = ("doubly", "column")

    def check_topology(self, topology: Topology) -> None:
        """Accept doubly and column-stochastic schedules; on the latter, every ``P_t[i, i] > 0``.

        Push-sum divides by ``w_i``: a positive self-weight in every round (Nedić & Olshevsky's
        assumption, which the push-sum rule meets) keeps ``w_i > 0``.
        """
        super().check_topology(topology)
        if getattr(topology, "stochastic", "doubly") != "column":
            return
        for t, p in enumerate(topology.rounds):
            diag = p.diagonal()
            if not (diag > 0).all():
                i = int(np.argmin(diag > 0))
                self._check(False, f"push-sum needs a positive self-weight in every round so "
                                   f"that w_i > 0; {topology.label} has P_{t}[{i}, {i}] = 0")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> PushSumState:  # noqa: N803
        """``w^0 = 1``, ``x^0 = X0``, ``z^0 = x^0``."""
        mixer.require(self.check_topology)
        return PushSumState(x=X0.clone(), numerator=X0.clone(),
                            w=X0.new_ones(X0.shape[0], 1))

    def step(self, state: PushSumState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> PushSumState:
        """``[X⁺ | w⁺] = P_t [X − η G(Z) | w]``, ``Z⁺ = X⁺ / w⁺``."""
        loss, G = oracle(state.x, batch)  # gradients at the de-biased z
        x = state.numerator
        P = x.shape[1]  # noqa: N806
        message = x.new_empty(x.shape[0], P + 1)
        torch.add(x, G, alpha=-lr, out=message[:, :P])
        message[:, P:] = state.w
        mixed = mixer.mix(message, state.t)
        numerator, w = mixed[:, :P], mixed[:, P:]
        return PushSumState(x=numerator / w, numerator=numerator, w=w, t=state.t + 1, loss=loss)
