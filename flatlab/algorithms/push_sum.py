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
from flatlab.engine.oracle import DecayOracle, Oracle
from flatlab.topology import Topology

__all__ = ["SGP", "PushSumState", "DECAY_POINTS"]

#: where :class:`SGP` takes the weight decay: the de-biased model, or the push-sum numerator
DECAY_POINTS = ("z", "numerator")


@dataclass(kw_only=True)
class PushSumState(State):
    """State of :class:`SGP`: numerators, weights and momentum, and the de-biased models as ``x``.

    Attributes:
        x: ``[n, P]`` the de-biased parameters ``z_i = x_i / w_i``: each node's model, the one its
            gradient is taken at and the one every measure reads (losses, curvature, consensus
            distance; the averaged model ``x̄`` is their plain mean ``(1/n) Σ_i z_i``).
        numerator: ``[n, P]`` push-sum numerators (the paper's ``x_i``). Mixing conserves their
            sum: ``Σ_i x_i^{t+1} = Σ_i x_i^t − η Σ_i d_i^t`` (``d = g`` without momentum), and
            ``(1/n) Σ_i x_i`` is the mass-conserving average that Assran et al.'s analysis
            tracks, equal to ``(1/n) Σ_i w_i z_i``: the mean of ``z`` weighted by ``w``.
        w: ``[n, 1]`` push-sum weights, ``w^0 = 1``, ``Σ_i w_i = n`` at every step; identically 1
            on a doubly stochastic topology.
        m: ``[n, P]`` each node's momentum buffer ``u_i`` (``torch.optim.SGD``'s
            ``momentum_buffer``), never communicated and never de-biased; ``None`` when
            ``momentum = 0``.
    """

    numerator: torch.Tensor
    w: torch.Tensor
    m: torch.Tensor | None = None


@register("sgp", "push-sum", "stochastic-gradient-push")
@dataclass(frozen=True)
class SGP(Algorithm):
    """Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, ICML 2019, Algorithm 1).

    At step ``t`` with the column-stochastic ``P_t`` (``P_t[j, i]`` the share node ``i`` sends to
    ``j``; ``1ᵀ P_t = 1ᵀ``)::

        g_i         = ∇F_i(z_i^t; ξ_i^t) + λ y_i       (y_i = z_i^t by default, see below)
        u_i^{t+1}   = β u_i^t + g_i                    (u^0 = 0; no buffer when β = 0)
        d_i         = u_i^{t+1}   (heavy ball)          d_i = g_i + β u_i^{t+1}   (Nesterov)
        x_i^{t+1/2} = x_i^t − η d_i                     (d_i = g_i when β = 0)
        x^{t+1}     = P_t x^{t+1/2}
        w^{t+1}     = P_t w^t
        z^{t+1}     = x^{t+1} / w^{t+1}          (row by row)

    with ``w^0 = 1`` and ``z^0 = x^0`` (push-sum: Kempe, Dobra, Gehrke 2003; the gradient form is
    Nedić & Olshevsky's subgradient-push, IEEE TAC 2016). In matrix form over the node stack,
    ``U⁺ = β U + G``, ``[X⁺ | w⁺] = P_t [X − η D | w]``: the weight travels as one more column of
    the same message, so numerator and weight are mixed by the same ``P_t`` in the same round, by
    either mixer. ``state.x`` is ``Z``, the de-biased models (see :class:`PushSumState`).

    Momentum is the authors' (facebookresearch/stochastic_gradient_push: ``gossip_sgd.py`` builds
    ``torch.optim.SGD(momentum=0.9, nesterov=..., weight_decay=1e-4)`` by default, and its job
    scripts pass ``--nesterov True``) with ``torch.optim.SGD``'s conventions: dampening 0, weight
    decay added to the gradient before the buffer, the buffer holding gradients taken at ``z``
    and the step going to the numerator, never de-biased nor mixed. ``GossipDataParallel``
    (``gossip/distributed.py``) de-biases the parameters before the forward pass and multiplies
    them back into numerators after the backward pass, so the optimizer steps numerators; its
    ``PushSum`` gossiper (``gossip/gossiper.py``) then pushes the numerator and ``w`` with the same
    uniform weights. ``β = 0`` (the default) is the paper's Algorithm 1 and today's numbers.

    Weight decay ``λ`` (``optim.weight_decay``, the oracle's): ``weight_decay_on="z"`` (default)
    takes it at the de-biased model, ``y_i = z_i``, as the oracle does for every algorithm: each
    node's objective is ``f_i(z) + (λ/2)‖z‖²`` at the model whose gradient is taken, the
    regularised problem the paper's analysis covers. ``"numerator"`` takes it at ``y_i = x_i =
    w_i z_i``, as the authors' code does (its ``torch.optim.SGD`` decays the parameters it
    steps, which hold the numerators): node ``i`` decays by ``λ w_i`` (not the gradient of a
    fixed objective of ``z_i`` where ``w_i`` varies), and the mass-conserving average decays as
    in centralized SGD, ``x̄⁺ = (1 − ηλ) x̄ − (η/n) Σ_i ∇F_i(z_i)`` (``β = 0``). The two agree
    where ``w = 1`` (every doubly stochastic topology; every graph the authors' code ships is
    regular with uniform weights, so ``w`` stays 1 in its synchronous runs) and drift apart at
    ``O(ηλ |w − 1| ‖z‖)`` per step where ``w ≠ 1``. The numerator form moves the oracle's term,
    ``G + λ (X − Z) = ∇F(Z) + λ X`` (exact up to rounding), so it needs an oracle that states
    its decay (:class:`~flatlab.engine.oracle.DecayOracle`).

    On a doubly stochastic topology ``w`` stays 1, ``Z = X`` and SGP is ``diffusion`` (DSGD)
    exactly, and with momentum it is ``dsgdm`` (adapt-then-combine, the same buffer and
    direction), with either decay point. It is the only registered method that mixes over a
    column-stochastic (push-sum) topology (``topology.weights: push-sum``, e.g. the directed or
    one-peer exponential graph, SGP's default, or any strongly connected directed graph).

    Messages: one vector and one scalar (``x_i − η d_i`` and ``w_i``, scaled by ``P_t[j, i]``) per
    out-neighbour. State: ``x`` (= ``z``), ``numerator``, ``w``, and ``m`` with momentum
    (2 P + 1, or 3 P + 1). Fixed point (constant ``η``, exact gradients, ``λ = 0``):
    ``D z = P (D z − η' ∇F(z))`` with ``D = diag(n π)``, ``π`` the Perron vector of ``P``, and
    ``η' = η/(1 − β)`` (heavy ball and Nesterov alike, since ``u = g/(1 − β)`` there); summing
    the rows, ``Σ_i ∇f_i(z_i) = 0``, but the ``z_i`` differ by ``O(η')``, so it is biased like
    diffusion, with the bias amplified by ``1/(1 − β)`` as for ``dsgdm``.

    Args:
        momentum: ``β ∈ [0, 1)`` (``make(..., beta=0.9)`` is accepted too); the authors' code
            uses 0.9.
        nesterov: Nesterov's direction (needs ``β > 0``).
        weight_decay_on: ``"z"`` (default) or ``"numerator"`` (the authors' code).
    """

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay_on: str = "z"
    mixing: ClassVar[tuple[str, ...]] = ("doubly", "column")
    hparam_aliases: ClassVar[dict[str, str]] = {"beta": "momentum"}

    def __post_init__(self) -> None:
        self._check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        self._check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        self._check(self.weight_decay_on in DECAY_POINTS,
                    f"weight_decay_on must be one of {', '.join(DECAY_POINTS)}, "
                    f"got {self.weight_decay_on!r}")

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
        """``w^0 = 1``, ``x^0 = X0``, ``z^0 = x^0``, ``u^0 = 0``."""
        mixer.require(self.check_topology)
        self._check(self.weight_decay_on == "z" or isinstance(oracle, DecayOracle),
                    "weight_decay_on = numerator moves the oracle's weight decay to the "
                    "numerators, so the oracle must state it (a weight_decay attribute, as "
                    f"GradientOracle and FunctionOracle have); {type(oracle).__name__} does not")
        return PushSumState(x=X0.clone(), numerator=X0.clone(), w=X0.new_ones(X0.shape[0], 1),
                            m=torch.zeros_like(X0) if self.momentum else None)

    def step(self, state: PushSumState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> PushSumState:
        """``U⁺ = β U + G``, ``[X⁺ | w⁺] = P_t [X − η D | w]``, ``Z⁺ = X⁺ / w⁺``."""
        loss, G = oracle(state.x, batch)  # gradients at the de-biased z, decayed at z
        x = state.numerator
        if self.weight_decay_on == "numerator" and oracle.weight_decay:
            G = torch.add(G, x - state.x, alpha=oracle.weight_decay)  # λ z -> λ x, exactly
        m = None
        if self.momentum:
            m = torch.add(G, state.m, alpha=self.momentum)
            G = torch.add(G, m, alpha=self.momentum) if self.nesterov else m
        P = x.shape[1]  # noqa: N806
        message = x.new_empty(x.shape[0], P + 1)
        torch.add(x, G, alpha=-lr, out=message[:, :P])
        message[:, P:] = state.w
        mixed = mixer.mix(message, state.t)
        numerator, w = mixed[:, :P], mixed[:, P:]
        return PushSumState(x=numerator / w, numerator=numerator, w=w, m=m, t=state.t + 1,
                            loss=loss)
