"""Bias-corrected diffusion: Exact Diffusion (combine with ``(I + W)/2``) and D² (with ``W``).

One recursion, two combination matrices (docs/reference/algorithms.md §4, §16 items 6, 8)::

    X^{t+1} = W̄ (2 X^t − X^{t−1} − η (G^t − G^{t−1})),      X^1 = W̄ (X^0 − η G^0)

with ``W̄ = (I + W)/2`` (Exact Diffusion) or ``W̄ = W`` (D²). Both reach the exact minimizer with
a constant step; D² needs ``λ_min(W) > −1/3`` (:func:`flatlab.theory.d2_radius` < 1) and
diverges otherwise, which is why Exact Diffusion halves ``W``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from flatlab.algorithms.base import Algorithm, State, register
from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle
from flatlab.theory import d2_radius
from flatlab.topology import Topology

__all__ = ["ExactDiffusion", "D2", "BiasCorrectedState"]


@dataclass(kw_only=True)
class BiasCorrectedState(State):
    """``x`` and ``psi``: the last adapt step ``ψ^t = x^{t−1} − η G^{t−1}`` (``ψ^0 = x^0``)."""

    psi: torch.Tensor


class _AdaptCorrectCombine(Algorithm):
    exact = True

    def init(self, X0: torch.Tensor, oracle: Oracle,  # noqa: N803
             mixer: Mixer) -> BiasCorrectedState:
        """``ψ^0 = x^0``, so the first step has no correction (D² checks its topology first)."""
        mixer.require(self.check_topology)
        return BiasCorrectedState(x=X0.clone(), psi=X0.clone())

    def _combine(self, phi: torch.Tensor, mixer: Mixer, t: int) -> torch.Tensor:
        raise NotImplementedError

    def step(self, state: BiasCorrectedState, batch: Any, oracle: Oracle, mixer: Mixer,
             lr: float) -> BiasCorrectedState:
        """Adapt, correct, combine."""
        loss, G = oracle(state.x, batch)
        psi = torch.add(state.x, G, alpha=-lr)
        phi = psi + state.x - state.psi
        return BiasCorrectedState(x=self._combine(phi, mixer, state.t), psi=psi,
                                  t=state.t + 1, loss=loss)


@register("exact-diffusion", "ed")
@dataclass(frozen=True)
class ExactDiffusion(_AdaptCorrectCombine):
    """Exact Diffusion, adapt-correct-combine (Yuan, Ying, Zhao, Sayed, IEEE TSP 2019).

    With ``W̄_t = (I + W_t)/2`` (docs/reference/algorithms.md §4.1)::

        adapt:    ψ^{t+1} = x^t − η G(x^t)
        correct:  φ^{t+1} = ψ^{t+1} + x^t − ψ^t          (ψ^0 = x^0: no correction at t = 0)
        combine:  X^{t+1} = W̄_t Φ^{t+1}

    i.e. ``X⁺ = W̄ (2X − X_prev − η (G − G_prev))``. Messages: one vector (``φ_i``) per
    neighbour. State: ``x``, ``ψ``. Fixed point: exact. Stable for every doubly stochastic ``W``
    (the eigenvalues of ``W̄`` lie in ``[0, 1]``); its steady state under gradient noise has no
    heterogeneity term (§4.3).
    """

    def _combine(self, phi: torch.Tensor, mixer: Mixer, t: int) -> torch.Tensor:
        return mixer.mix(phi, t).add_(phi).mul_(0.5)


@register("d2", "d-squared")
@dataclass(frozen=True)
class D2(_AdaptCorrectCombine):
    """D² (Tang, Lian, Yan, Zhang, Liu, ICML 2018), Exact Diffusion's recursion with ``W``.

    ``X^{t+1} = W_t (2 X^t − X^{t−1} − η (G^t − G^{t−1}))``, ``X^1 = W_0 (X^0 − η G^0)``;
    implemented as adapt ``ψ⁺ = x − ηg``, correct ``φ = ψ⁺ + x − ψ``, combine ``X⁺ = W_t Φ``
    (docs/reference/algorithms.md §4.2; the form of epfml/quasi-global-momentum
    ``decentralized_d2.py``, weight decay in the gradient, no momentum).

    Messages: one vector per neighbour. State: ``x``, ``ψ``. Fixed point: exact, but only where
    the recursion is stable: ``λ_min(W) > −1/3`` for a symmetric ``W``, in general
    :func:`flatlab.theory.d2_radius` below 1. The ring of even ``n`` with weights 1/3
    (``λ_min = −1/3``), the torus and the hypercube with uniform weights fail it. Such a
    topology is refused (use ``exact-diffusion``, or ``topology.lazy``) unless
    ``allow_unstable``, which runs it with a warning (to show the divergence).

    Args:
        allow_unstable: Run on a topology where D² is unstable, with a warning.
    """

    allow_unstable: bool = False

    def check_topology(self, topology: Topology) -> None:
        """Refuse (or warn about) a topology on which D²'s recursion does not contract."""
        super().check_topology(topology)

        radius = d2_radius(topology)
        if radius < 1 - 1e-9:
            return
        label = getattr(topology, "label", "this topology")
        message = (f"is unstable on {label}: its disagreement recursion has radius {radius:.4g} "
                   f">= 1 (needs lambda_min(W) > -1/3); use exact-diffusion, topology.lazy, or "
                   f"allow_unstable=true")
        if self.allow_unstable:
            warnings.warn(f"d2 {message}", RuntimeWarning, stacklevel=3)
        else:
            self._check(False, message)

    def _combine(self, phi: torch.Tensor, mixer: Mixer, t: int) -> torch.Tensor:
        return mixer.mix(phi, t)
