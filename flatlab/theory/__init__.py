"""Spectral-gap quantities and convergence bounds, for use without training (no torch).

* :func:`spectral`: ``rho = ||W - J||_2``, ``lambda_2``, ``lambda_min``, the gap ``1 - rho``,
  Koloskova's ``p = 1 - rho^2``, mixing time; over one period for time-varying schedules.
* :func:`d2_radius`: whether D² is stable on a topology (``lambda_min > -1/3`` when symmetric).
* :func:`effective_neighbors`: Vogels et al.'s ``n_eff(gamma)``.
* :func:`bound`: each term of a convergence rate, total, dominant term, iterations to ``eps``
  and transient iterations, for centralized SGD, the DSGD family (diffusion, consensus,
  diffusion-cta: one bound), gradient tracking, Momentum Tracking, CHOCO-SGD and the lower bound,
  named as the algorithm registry names them (:func:`bound_algorithms`).
* :func:`predicted_consensus_distance`: steady-state ``Xi^2`` of constant-step DSGD.
* :func:`stationary_disagreement`: the exact stationary disagreement curvature ``tr(H Sigma)``
  and ``Xi^2`` of constant-step DSGD (diffusion, consensus, diffusion-cta) near a minimum, per
  eigenmode of ``W`` and ``H``, with local steps, time-varying ``W`` and a small-step bulk.
* :func:`spectral_gap_study`: the gap and transients against ``n``, as a tidy table.
* :func:`link_failure_spectrum`: links that fail i.i.d. in each round: ``E[W]``, ``E[WᵀW]``,
  the mean-square bound ``λ₂(E[WᵀW])`` and the exact rate ``ρ(E[(W − J) ⊗ (W − J)])``;
  :func:`consensus_value_variance`: one-way message drops, the variance of the agreed value.
"""

from flatlab.theory.bounds import Bound, RateTerm, bound, bound_algorithms
from flatlab.theory.consensus import ConsensusPrediction, predicted_consensus_distance
from flatlab.theory.disagreement import DisagreementPrediction, stationary_disagreement
from flatlab.theory.faults import (
    DelayedDisagreement,
    DropConsensus,
    FaultSpectrum,
    FaultyDisagreement,
    async_gossip_spectrum,
    consensus_value_variance,
    fault_spectrum,
    link_failure_spectrum,
    ring_metropolis_mean_weight,
    stationary_disagreement_under_delays,
    stationary_disagreement_under_faults,
)
from flatlab.theory.neighbors import effective_neighbors, stationary_variances
from flatlab.theory.spectral import (
    SpectralSummary,
    circulant_eigenvalues,
    d2_radius,
    eigenvalues,
    mixing_time,
    spectral,
)
from flatlab.theory.study import spectral_gap_study

__all__ = [
    "SpectralSummary",
    "spectral",
    "eigenvalues",
    "circulant_eigenvalues",
    "d2_radius",
    "mixing_time",
    "effective_neighbors",
    "stationary_variances",
    "Bound",
    "RateTerm",
    "bound",
    "bound_algorithms",
    "ConsensusPrediction",
    "predicted_consensus_distance",
    "DisagreementPrediction",
    "stationary_disagreement",
    "spectral_gap_study",
    "FaultSpectrum",
    "link_failure_spectrum",
    "fault_spectrum",
    "async_gossip_spectrum",
    "ring_metropolis_mean_weight",
    "DropConsensus",
    "consensus_value_variance",
    "FaultyDisagreement",
    "stationary_disagreement_under_faults",
    "DelayedDisagreement",
    "stationary_disagreement_under_delays",
]
