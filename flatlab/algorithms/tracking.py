"""Gradient Tracking (DIGing and adapt-then-combine forms) and Momentum Tracking.

Both remove the heterogeneity bias: each node steps along a tracker ``y_i`` of the network-average
(gradient or momentum) rather than its own gradient, kept consistent by the invariant
``Σ_i y_i^t = Σ_i g_i^t`` (resp. ``Σ_i u_i^t``). With a constant step and exact gradients they
reach the exact minimizer (docs/reference/algorithms.md §6, §16 items 6, 7, 9; pitfalls 5, 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle

__all__ = ["GradientTracking", "TrackingState", "MomentumTracking", "MomentumTrackingState"]

GT_FORMS = ("diging", "atc")
MT_STARTS = ("average", "local")


@dataclass(kw_only=True)
class TrackingState(State):
    """State of :class:`GradientTracking`.

    Attributes:
        y: DIGing form: the mixed tracker ``W_{t−1} Y^{t−1}`` kept from the last exchange; ATC
            form: the tracker ``Y^{t−1}`` itself. Zero before the first step.
        g: ``G^{t−1}``, the gradient of the last step (zero before the first step).

    In both forms ``Σ_i y_i = Σ_i g_i`` after every step (the tracking invariant).
    """

    y: torch.Tensor
    g: torch.Tensor


@register("gradient-tracking", "gt", "diging")
@dataclass(frozen=True)
class GradientTracking(Algorithm):
    """Gradient tracking, in the DIGing form (default) or the adapt-then-combine form.

    DIGing (Nedić, Olshevsky, Shi 2017; the order of epfml/quasi-global-momentum
    ``decentralized_sgd_with_gradient_tracking.py``; docs/reference/algorithms.md §6.1)::

        X^{t+1} = W_t X^t − η Y^t
        Y^{t+1} = W_t Y^t + G^{t+1} − G^t,        Y^0 = G^0

    Implemented as: ``Y^t = y + G^t − g`` from the kept ``y = W_{t−1} Y^{t−1}`` and
    ``g = G^{t−1}`` (both zero at start, so ``Y^0 = G^0``); ``[X^t, Y^t]`` go out as one message
    of two vectors; ``x`` steps from its mixed value with the *un-mixed* ``Y^t``, and the mixed
    ``Y^t`` is kept. ATC-GT::

        Y^t     = W_t (Y^{t−1} + G^t − G^{t−1})    (Y^0 = G^0, no exchange at t = 0)
        X^{t+1} = W_t (X^t − η Y^t)

    two sequential exchanges of one vector each (``y`` first, then ``x``).

    Messages: two vectors per neighbour per step. State: ``x``, ``y``, ``g`` (3 P). Fixed point:
    exact (``x_i = x*``). Invariant: ``1ᵀY^t = 1ᵀG^t`` for every ``t``, which needs ``Y^0 = G^0``
    (``Y^0 = 0`` breaks it for good; pitfall 5). With ``W = J`` and equal starts the ATC form is
    centralized gradient descent exactly; the DIGing form is not (§16 item 9).

    Args:
        form: ``"diging"`` or ``"atc"``.
    """

    form: str = "diging"
    exact = True
    vectors_per_neighbor: ClassVar[int] = 2

    def __post_init__(self) -> None:
        self._check(self.form in GT_FORMS, f"form must be one of {', '.join(GT_FORMS)}, "
                                           f"got {self.form!r}")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> TrackingState:  # noqa: N803
        """``y = g = 0``, so that the first tracker is ``Y^0 = G^0``."""
        mixer.require(self.check_topology)
        return TrackingState(x=X0.clone(), y=torch.zeros_like(X0), g=torch.zeros_like(X0))

    def step(self, state: TrackingState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> TrackingState:
        """One tracking step in the chosen form."""
        loss, G = oracle(state.x, batch)
        if self.form == "diging":
            Y = state.y + G - state.g
            P = state.x.shape[1]
            mixed = mixer.mix(torch.cat([state.x, Y], dim=1), state.t)
            x = mixed[:, :P].sub(Y, alpha=lr)
            return TrackingState(x=x, y=mixed[:, P:].contiguous(), g=G, t=state.t + 1,
                                 loss=loss)
        if state.t == 0:
            Y = G.clone()
        else:
            Y = mixer.mix(state.y + G - state.g, state.t)
        x = mixer.mix(torch.add(state.x, Y, alpha=-lr), state.t)
        return TrackingState(x=x, y=Y, g=G, t=state.t + 1, loss=loss)


@dataclass(kw_only=True)
class MomentumTrackingState(State):
    """State of :class:`MomentumTracking`: the momentum ``u`` and the correction ``c``.

    The tracker used in a step is ``y^t = u^t − c^{t−1}``; ``Σ_i c_i`` never changes (it is 0 from
    either start), which is the invariant ``Σ_i y_i^t = Σ_i u_i^t``.
    """

    u: torch.Tensor
    c: torch.Tensor


@register("momentum-tracking", "mt")
@dataclass(frozen=True)
class MomentumTracking(Algorithm):
    """Momentum Tracking (Takezawa, Bao, Niwa, Sato, Yamada; TMLR; arXiv 2209.15505).

    Order of one step at node ``i`` in the official code (yukiTakezawa/MomentumTracking,
    ``momentum_tracking_optimizer.py``; docs/reference/algorithms.md §6.2)::

        first step, y0 = "average":  ḡ = (1/n) Σ_j g_j^0 (one all-reduce),
                                     c_i = u_i = (g_i^0 − ḡ)/(1 − β)
        u_i ← β u_i + g_i                            (g includes weight decay, from the oracle)
        x̃_i = Σ_j w_ij x_j                           (exchange of the pre-update x)
        x_i⁺ = x̃_i − η (u_i − c_i)
        c_i⁺ = u_i + Σ_j w_ij (c_j − u_j)            (exchange of c − u; j over N_i ∪ {i})

    ``x`` and ``c − u`` go out as one message of two vectors. In tracking form, with
    ``y^t = u^t − c^{t−1}``: ``X^{t+1} = W X^t − η Y^t``, ``Y^{t+1} = W Y^t + U^{t+1} − U^t``,
    ``U^{t+1} = β U^t + G^{t+1}`` — DIGing applied to the momentum.

    Starts: ``"average"`` (the authors' code) gives every node the exact network-average
    gradient, ``y_i^0 = ḡ^0``, at the price of one global all-reduce; ``"local"`` is purely
    decentralized, ``u = c = 0``, so ``y_i^0 = g_i^0`` as in gradient tracking. Either keeps
    ``Σ_i c_i = 0``, hence ``Σ_i y_i^t = Σ_i u_i^t`` at every step.

    Weight decay enters ``g`` (the oracle adds it) before the momentum, hence inside the
    tracked quantity, as the method requires (pitfall 6); the official code's hard-coded
    ``λ = 0.001`` is ``optim.weight_decay = 0.001``.

    Messages: two vectors per neighbour per step (plus one all-reduce at ``t = 0`` with
    ``y0 = "average"``). State: ``x``, ``u``, ``c`` (3 P). Fixed point: exact, for any
    ``β ∈ [0, 1)``. Not equal to centralized momentum SGD when ``W = J`` (§16 item 9).

    Args:
        momentum: ``β ∈ [0, 1)`` (``make(..., beta=0.9)`` is accepted too).
        y0: ``"average"`` or ``"local"``.
    """

    momentum: float = 0.9
    y0: str = "average"
    exact = True
    vectors_per_neighbor: ClassVar[int] = 2
    hparam_aliases: ClassVar[dict[str, str]] = {"beta": "momentum"}

    def __post_init__(self) -> None:
        self._check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        self._check(self.y0 in MT_STARTS, f"y0 must be one of {', '.join(MT_STARTS)}, "
                                          f"got {self.y0!r}")

    def init(self, X0: torch.Tensor, oracle: Oracle,  # noqa: N803
             mixer: Mixer) -> MomentumTrackingState:
        """``u = c = 0``; the ``"average"`` start sets them at the first step, from ``g^0``."""
        mixer.require(self.check_topology)
        return MomentumTrackingState(x=X0.clone(), u=torch.zeros_like(X0),
                                     c=torch.zeros_like(X0))

    def step(self, state: MomentumTrackingState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> MomentumTrackingState:
        """One step in the official order."""
        loss, G = oracle(state.x, batch)
        u, c = state.u, state.c
        if state.t == 0 and self.y0 == "average":
            u = (G - mixer.mean(G)).div_(1.0 - self.momentum)
            c = u
        u = torch.add(G, u, alpha=self.momentum)
        P = state.x.shape[1]
        mixed = mixer.mix(torch.cat([state.x, c - u], dim=1), state.t)
        x = mixed[:, :P].sub(u - c, alpha=lr)
        c_next = mixed[:, P:] + u
        return MomentumTrackingState(x=x, u=u, c=c_next, t=state.t + 1, loss=loss)
