"""The centralized baseline: all-reduce mini-batch SGD with optional heavy-ball momentum.

Source: docs/reference/algorithms.md §10 (C-PSGD; epfml/quasi-global-momentum ``centralized_sgd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle

__all__ = ["Centralized", "CentralizedState"]


@dataclass(kw_only=True)
class CentralizedState(State):
    """State of :class:`Centralized`: ``x`` and the global momentum ``m`` (rows equal).

    ``m`` is ``None`` when ``momentum = 0``.
    """

    m: torch.Tensor | None = None


@register("centralized", "c-psgd", "allreduce")
@dataclass(frozen=True)
class Centralized(Algorithm):
    """All-reduce mini-batch SGD, the baseline every decentralized method is compared with.

    Update, with ``ḡ = (1/n) Σ_i g_i(x)`` the all-reduced gradient over the nodes' minibatches
    (total batch ``n · b``, the same as the decentralized runs)::

        m⁺ = β m + ḡ                                  (m⁰ = 0)
        x⁺ = x − η m⁺             (heavy ball)
        x⁺ = x − η (ḡ + β m⁺)     (Nesterov)

    With ``β = 0`` this is ``x⁺ = x − η ḡ``. ``init`` starts every node at the network average of
    ``X0`` (one all-reduce). Messages: one all-reduce of a gradient per step (a ring all-reduce
    sends ``2(n − 1)/n · P`` numbers per node). State: ``x`` (rows equal) and the global
    momentum ``m``. Fixed point: exact (``ḡ = 0``).

    It never mixes: ``mixer.mean`` is the exact network average whatever the topology, so the
    topology's matrices play no part and any kind is accepted, doubly or column-stochastic
    (push-sum weights, as in an ``sgp`` run it is the baseline of).

    Args:
        momentum: ``β ∈ [0, 1)``.
        nesterov: Nesterov's variant (needs ``β > 0``).
    """

    momentum: float = 0.0
    nesterov: bool = False
    exact = True
    hparam_aliases: ClassVar[dict[str, str]] = {"beta": "momentum"}
    mixing: ClassVar[tuple[str, ...]] = ("doubly", "column")

    def __post_init__(self) -> None:
        self._check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        self._check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> CentralizedState:  # noqa: N803
        """All nodes at the average of ``X0``; momentum zero."""
        mixer.require(self.check_topology)
        xbar = mixer.mean(X0)
        x = xbar.expand_as(X0).clone()
        m = torch.zeros_like(x) if self.momentum else None
        return CentralizedState(x=x, m=m)

    def step(self, state: CentralizedState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> CentralizedState:
        """One all-reduce SGD step."""
        loss, G = oracle(state.x, batch)
        g = mixer.mean(G).expand_as(state.x)
        if self.momentum:
            m = torch.add(g, state.m, alpha=self.momentum)
            d = torch.add(g, m, alpha=self.momentum) if self.nesterov else m
        else:
            m, d = None, g
        return CentralizedState(x=torch.add(state.x, d, alpha=-lr), m=m, t=state.t + 1,
                                loss=loss)
