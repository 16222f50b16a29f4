"""Momentum variants of decentralized SGD: DSGDm, QG-DSGDm and DecentLaM.

Each keeps a local momentum buffer that is never gossiped; they differ in what the buffer
accumulates and so in their fixed points (docs/reference/algorithms.md §5, §14, pitfall 4). With a
constant step ``η`` and exact gradients:

==============  ===========================================  ==================================
name            buffer accumulates                           fixed point
==============  ===========================================  ==================================
``dsgdm``       the local gradient                           DSGD-ATC with ``η/(1 − β)``
``qg-dsgdm``    the displacement ``(x^t − x^{t+1})/η``        DSGD-ATC with ``η`` (heavy ball)
``decentlam``   the corrected gradient ``(x − W(x − ηg))/η``  DSGD-ATC with ``η``
==============  ===========================================  ==================================

Local momentum amplifies the heterogeneity bias of DSGD by ``1/(1 − β)``; QG-DSGDm and DecentLaM
remove that amplification but not the bias itself (the tracking methods do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle

__all__ = ["DSGDm", "QGDSGDm", "DecentLaM", "MomentumState"]


@dataclass(kw_only=True)
class MomentumState(State):
    """``x`` and the local momentum buffer ``m`` (``[n, P]``; never communicated)."""

    m: torch.Tensor


class _Momentum(Algorithm):
    momentum: float
    hparam_aliases: ClassVar[dict[str, str]] = {"beta": "momentum"}

    def __post_init__(self) -> None:
        self._check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        self._check(not getattr(self, "nesterov", False) or self.momentum > 0,
                    "nesterov needs momentum > 0")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> MomentumState:  # noqa: N803
        """Momentum buffers start at zero."""
        mixer.require(self.check_topology)
        return MomentumState(x=X0.clone(), m=torch.zeros_like(X0))

    def _positive_lr(self, lr: float) -> None:
        self._check(lr > 0, f"divides by the step size, so lr must be > 0 (got {lr})")


@register("dsgdm", "dmsgd")
@dataclass(frozen=True)
class DSGDm(_Momentum):
    """Decentralized SGD with local heavy-ball or Nesterov momentum, then gossip (ATC).

    Order of operations (docs/reference/algorithms.md §5.1; official code: yukiTakezawa/
    MomentumTracking ``GossipOptimizer``, epfml/quasi-global-momentum ``decentralized_sgd``)::

        g_i  = ∇F_i(x_i; ξ_i)  (+ weight decay, from the oracle)
        m_i⁺ = β m_i + g_i
        d_i  = m_i⁺                 (heavy ball)     d_i = g_i + β m_i⁺   (Nesterov)
        X⁺   = W_t (X − η D)

    Messages: one vector (``x_i − η d_i``) per neighbour; the momentum is not gossiped. State:
    ``x``, ``m``. Fixed point (constant ``η``, exact gradients): the DSGD-ATC fixed point with
    step ``η/(1 − β)``, so the heterogeneity bias is amplified by ``1/(1 − β)`` (§16 item 5).
    With ``W = J`` and equal starts the local momenta average to the global buffer and it is
    centralized momentum SGD exactly (§16 item 9).

    Args:
        momentum: ``β ∈ [0, 1)``.
        nesterov: Nesterov's direction instead of heavy ball.
    """

    momentum: float = 0.9
    nesterov: bool = False

    def step(self, state: MomentumState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> MomentumState:
        """``M⁺ = β M + G``, ``X⁺ = W_t (X − η D)``."""
        loss, G = oracle(state.x, batch)
        m = torch.add(G, state.m, alpha=self.momentum)
        d = torch.add(G, m, alpha=self.momentum) if self.nesterov else m
        x = mixer.mix(torch.add(state.x, d, alpha=-lr), state.t)
        return MomentumState(x=x, m=m, t=state.t + 1, loss=loss)


@register("qg-dsgdm", "qgm", "quasi-global-momentum")
@dataclass(frozen=True)
class QGDSGDm(_Momentum):
    """Quasi-global momentum (Lin, Karimireddy, Stich, Jaggi, ICML 2021).

    Order of operations of the official code (epfml/quasi-global-momentum,
    ``decentralized_qg_sgd.py``; docs/reference/algorithms.md §5.2)::

        g_i   = ∇F_i(x_i^t; ξ_i)  (+ weight decay, from the oracle)
        v_i   = β m̂_i + g_i
        d_i   = v_i   (heavy ball)           d_i = g_i + β v_i   (Nesterov)
        X⁺    = W_t (X^t − η D)
        δ_i   = (x_i^t − x_i^{t+1}) / η       (includes the neighbours' progress)
        m̂_i⁺ = (1 − c) m̂_i + c δ_i

    The paper writes ``m̂ ← μ m̂ + (1 − μ) δ`` with ``μ = β``, i.e. ``c = 1 − β = 0.1``.
    Messages: one vector per neighbour. State: ``x``, ``m̂`` (the copy of ``x^t`` lives within
    a step). Fixed point: ``δ = 0`` forces ``m̂ → 0``, so heavy ball stops at the DSGD-ATC fixed
    point with step ``η`` (no momentum amplification; the heterogeneity bias remains) and
    Nesterov, whose direction tends to ``(1 + β) g``, at the one with step ``(1 + β) η``.
    ``δ`` divides by ``η``, so the step size must be positive.

    Args:
        momentum: ``β ∈ [0, 1)``.
        nesterov: Nesterov's direction (the paper's default) instead of heavy ball.
        c: Rate of the quasi-global buffer, in ``(0, 1]``.
    """

    momentum: float = 0.9
    nesterov: bool = False
    c: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(0.0 < self.c <= 1.0, f"c must be in (0, 1], got {self.c}")

    def step(self, state: MomentumState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> MomentumState:
        """Local momentum step, gossip, then ``m̂`` from the displacement."""
        self._positive_lr(lr)
        loss, G = oracle(state.x, batch)
        v = torch.add(G, state.m, alpha=self.momentum)
        d = torch.add(G, v, alpha=self.momentum) if self.nesterov else v
        x = mixer.mix(torch.add(state.x, d, alpha=-lr), state.t)
        delta = (state.x - x).div_(lr)
        m = torch.lerp(state.m, delta, self.c)
        return MomentumState(x=x, m=m, t=state.t + 1, loss=loss)


@register("decentlam")
@dataclass(frozen=True)
class DecentLaM(_Momentum):
    """Decentralized large-batch momentum (Yuan et al., ICCV 2021).

    Order of operations of the official code (``decentlam_optimizer.py`` in
    yukiTakezawa/MomentumTracking; docs/reference/algorithms.md §5.3)::

        ω_i  = x_i − η g_i                    (the message; g includes weight decay)
        g̃_i  = (x_i − Σ_j w_ij ω_j) / η  =  Σ_j w_ij g_j + ((I − W_t) X)_i / η
        m_i⁺ = β m_i + g̃_i
        x_i⁺ = x_i − η m_i⁺

    Messages: one vector (``ω_i``) per neighbour. State: ``x``, ``m``. Fixed point: ``m = 0`` and
    ``g̃ = 0``, i.e. ``X = W (X − η ∇F(X))``, the DSGD-ATC fixed point with step ``η``: the
    momentum-induced bias of DSGDm is removed, the heterogeneity bias remains. ``g̃`` divides by
    ``η``, so the step size must be positive.

    Args:
        momentum: ``β ∈ [0, 1)``.
    """

    momentum: float = 0.9

    def step(self, state: MomentumState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> MomentumState:
        """Gossip ``X − η G``, corrected gradient, momentum step."""
        self._positive_lr(lr)
        loss, G = oracle(state.x, batch)
        mixed = mixer.mix(torch.add(state.x, G, alpha=-lr), state.t)
        g_tilde = (state.x - mixed).div_(lr)
        m = torch.add(g_tilde, state.m, alpha=self.momentum)
        x = torch.add(state.x, m, alpha=-lr)
        return MomentumState(x=x, m=m, t=state.t + 1, loss=loss)
