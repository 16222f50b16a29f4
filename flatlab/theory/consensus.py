"""Predicted steady-state consensus distance of constant-step DSGD (docs/reference/theory.md §9).

With step ``lr``, ``rho = ||W - J||_2``, noise ``sigma^2`` and heterogeneity ``zeta^2``
(standard result; constants unspecified):

    diffusion (ATC, X+ = W (X - lr G)):  Xi^2 <~ lr^2 rho^2 sigma^2 / (1 - rho)
                                                + lr^2 rho^2 zeta^2 / (1 - rho)^2
    consensus (DGD, X+ = W X - lr G):     the same without the factor rho^2,

since the ATC form filters the injected gradients through ``W - J`` before they spread
(measures.md §10.3). ``Xi^2 = (1/n) ||X - 1 xbar^T||_F^2`` is what the runner measures as
``consensus_distance``; plot the measurement against this prediction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flatlab.errors import TheoryError
from flatlab.theory.checks import doubly_stochastic, positive, unit_interval
from flatlab.theory.spectral import spectral
from flatlab.topology import Topology

__all__ = ["ConsensusPrediction", "predicted_consensus_distance"]

_FORMS = ("diffusion", "consensus")
SOURCE = ("steady state of constant-step DSGD (e.g. Koloskova et al. 2020; Yuan et al. 2020); "
          "standard result, constants unspecified; ATC/DGD factor rho^2 derived in "
          "docs/reference/measures.md §10.3")


@dataclass(frozen=True)
class ConsensusPrediction:
    """Predicted ``Xi^2`` with its two terms (``noise`` and ``heterogeneity``)."""

    form: str
    terms: dict[str, float]
    total: float
    inputs: dict[str, Any]
    constants: str = "order of magnitude"
    source: str = SOURCE

    def __float__(self) -> float:
        return self.total

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-ready)."""
        return asdict(self)


def predicted_consensus_distance(
    lr: float,
    *,
    rho: float | None = None,
    topology: Topology | None = None,
    sigma2: float = 1.0,
    zeta2: float = 0.0,
    form: str = "diffusion",
    consts: Mapping[str, float] | None = None,
) -> ConsensusPrediction:
    """Steady-state consensus distance ``Xi^2`` of DSGD with a constant step.

    Args:
        lr: Step size ``eta``.
        rho: ``||W - J||_2`` (give it or a static ``topology``).
        topology: A static :class:`~flatlab.topology.Topology`.
        sigma2: Per-node gradient-noise variance.
        zeta2: Heterogeneity of the local gradients.
        form: ``"diffusion"`` (adapt-then-combine) or ``"consensus"`` (DGD).
        consts: Multipliers for the ``noise`` and ``heterogeneity`` terms (default 1).

    Returns:
        A :class:`ConsensusPrediction`; ``float(prediction)`` is the total.
    """
    if form not in _FORMS:
        raise TheoryError(f"unknown form {form!r}; accepted: {', '.join(_FORMS)}")
    if (rho is None) == (topology is None):
        raise TheoryError("give exactly one of rho and topology")
    if topology is not None:
        doubly_stochastic("the steady-state consensus distance", topology)
        if topology.time_varying:
            raise TheoryError("the steady-state formula is for a static W; pass rho explicitly "
                              "to use it as an approximation for a time-varying schedule")
        rho = spectral(topology).rho
    lr, sigma2, zeta2 = (positive(k, v, allow_zero=True)
                         for k, v in (("lr", lr), ("sigma2", sigma2), ("zeta2", zeta2)))
    rho = unit_interval("rho", rho)
    consts = dict(consts or {})
    unknown = sorted(set(consts) - {"noise", "heterogeneity"})
    if unknown:
        raise TheoryError(f"no term {unknown[0]!r}; terms: noise, heterogeneity")
    c_noise, c_het = (positive(f"constant {k}", consts.get(k, 1.0), allow_zero=True)
                      for k in ("noise", "heterogeneity"))
    filt = rho**2 if form == "diffusion" else 1.0
    terms = {
        "noise": c_noise * lr**2 * filt * sigma2 / (1 - rho),
        "heterogeneity": c_het * lr**2 * filt * zeta2 / (1 - rho) ** 2,
    }
    return ConsensusPrediction(form=form, terms=terms, total=sum(terms.values()),
                               inputs={"lr": lr, "rho": rho, "sigma2": sigma2, "zeta2": zeta2})
