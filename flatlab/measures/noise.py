"""Gradient noise ``σ²`` and heterogeneity ``ζ²`` at one model: the inputs of the theory.

The bounds and the steady-state consensus distance of ``flatlab.theory`` (docs/reference/theory.md
§§ 4, 9) take the per-node gradient-noise variance and the heterogeneity of the local gradients.
:func:`gradient_noise` measures both at one model ``x`` (every node at ``x``), with the run's own
oracle (train mode, its weight decay) and minibatches::

    ∇f_i(x)  the full local gradient of node i (all of its m samples)
    ∇f(x)    = (1/n) Σ_i ∇f_i(x)
    σ²       = (1/(n D)) Σ_d Σ_i ‖g_i^(d)(x) − ∇f_i(x)‖²   (D minibatch draws g^(d))
    ζ²       = (1/n) Σ_i ‖∇f_i(x) − ∇f(x)‖²

``σ²`` is the variance of one node's minibatch gradient at the run's batch size (sampled
without replacement from its local data, as the run samples); ``ζ²`` is the heterogeneity at
``x`` (the bounds use its supremum over ``x``; a value at the end of training is what the
steady state sees).

:func:`noise_along` resolves both along given directions ``v_j`` (the top Hessian eigenvectors),
which is what the stationary disagreement of :func:`flatlab.theory.stationary_disagreement`
takes: with the minibatch deviations ``ξ_i^(d) = g_i^(d)(x) − ∇f_i(x)`` and ``S̄`` their mean
second moment over nodes and draws,

    s_j    = v_jᵀ S̄ v_j = (1/(nD)) Σ_{i,d} (v_jᵀ ξ_i^(d))²       (noise along v_j)
    Z v_j  = (∇f_i(x) − ∇f(x))ᵀ v_j, one entry per node            (heterogeneity along v_j)
    tr(HS̄) = E[zᵀ H z],  z = Σ_{i,d} ε_id ξ_i^(d) / √(nD)         (Rademacher ε: the cross
                                                                      terms cancel)

the last from ``probes`` Hessian-vector products, with its standard error; ``tr(HS̄) − Σ_j h_j
s_j`` is the curvature-weighted noise left outside the listed directions (the theory's
``bulk_hs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatlab.curvature.disagreement import disagreement_curvature
from flatlab.curvature.operators import Operator
from flatlab.data.sampler import NodeSampler
from flatlab.engine.oracle import GradientOracle
from flatlab.errors import MeasureError

__all__ = ["GradientNoise", "gradient_noise", "NoiseAlong", "noise_along"]


@dataclass(frozen=True)
class GradientNoise:
    """``σ²``, ``ζ²`` and ``‖∇f(x)‖²`` at one model, with the number of minibatch draws."""

    sigma2: float
    zeta2: float
    grad_norm2: float
    draws: int
    batch_size: int


def gradient_noise(oracle: GradientOracle, sampler: NodeSampler, x: torch.Tensor, *, draws: int = 8,
                   first_step: int = 0) -> GradientNoise:
    """Minibatch noise and heterogeneity of the local gradients at ``x`` (all nodes at ``x``).

    Args:
        oracle: The run's gradient oracle (``oracle(X, (inputs, targets)) -> (losses, G)``).
        sampler: The run's :class:`~flatlab.data.NodeSampler` (local data ``x``, ``y`` of shape
            ``[n, m, ...]`` and its minibatches).
        x: ``[P]`` the model.
        draws: Minibatches per node (the sampler's steps ``first_step ...``).
        first_step: First sampler step used.

    Returns:
        A :class:`GradientNoise`.
    """
    if draws < 1:
        raise MeasureError(f"draws must be >= 1, got {draws}")
    if x.dim() != 1:
        raise MeasureError(f"x must be one model's flat parameters [P], got {tuple(x.shape)}")
    n = sampler.x.shape[0]
    X = x.detach().expand(n, -1).contiguous()  # noqa: N806 - the paper's stacked X
    _, full = oracle(X, (sampler.x, sampler.y))  # [n, P] full local gradients
    mean = full.mean(0)
    zeta2 = float((full - mean).pow(2).sum(1).mean())
    sigma2 = 0.0
    for d in range(draws):
        _, g = oracle(X, sampler.batch(first_step + d))
        sigma2 += float((g - full).pow(2).sum(1).mean()) / draws
    return GradientNoise(sigma2=sigma2, zeta2=zeta2, grad_norm2=float(mean @ mean), draws=draws,
                         batch_size=int(sampler.batch_size))


@dataclass(frozen=True)
class NoiseAlong:
    """Gradient noise and heterogeneity along directions ``v_j``, and ``tr(H S̄)``.

    Attributes:
        noise: ``[k]`` ``s_j = v_jᵀ S̄ v_j``, one node's minibatch-noise variance along ``v_j``
            (the mean over nodes and draws).
        heterogeneity: ``[n, k]`` ``(∇f_i(x) − ∇f(x))ᵀ v_j``: each node's gradient offset along
            ``v_j`` (columns sum to zero).
        sigma2: ``tr S̄`` (:attr:`GradientNoise.sigma2`).
        trace_hs: ``tr(H S̄)`` estimated from ``probes`` products (nan without a Hessian).
        trace_hs_stderr: Its standard error (nan with fewer than 2 probes).
        draws: Minibatches per node.
        batch_size: The run's batch size.
    """

    noise: torch.Tensor
    heterogeneity: torch.Tensor
    sigma2: float
    trace_hs: float
    trace_hs_stderr: float
    draws: int
    batch_size: int


def noise_along(oracle: GradientOracle, sampler: NodeSampler, x: torch.Tensor,
                vectors: torch.Tensor, *, hessian: Operator | None = None,
                probes: int = 8, draws: int = 8, first_step: int = 0,
                seed: int = 0) -> NoiseAlong:
    """Noise and heterogeneity along ``vectors`` at ``x``, and ``tr(H S̄)`` (module docstring).

    Args:
        oracle: The run's gradient oracle.
        sampler: The run's :class:`~flatlab.data.NodeSampler`.
        x: ``[P]`` the model (every node at ``x``).
        vectors: ``[k, P]`` directions (orthonormal: the Ritz vectors of ``H(x)``).
        hessian: The Hessian at ``x`` as an operator (:func:`flatlab.curvature.hessian_operator`)
            for ``tr(H S̄)``; ``None`` to skip it.
        probes: Rademacher combinations of the ``n · draws`` deviations for ``tr(H S̄)``.
        draws: Minibatches per node (the sampler's steps ``first_step ...``).
        first_step: First sampler step used.
        seed: Seed of the Rademacher signs.

    Returns:
        A :class:`NoiseAlong`.
    """
    if draws < 1:
        raise MeasureError(f"draws must be >= 1, got {draws}")
    if probes < 0:
        raise MeasureError(f"probes must be >= 0, got {probes}")
    if x.dim() != 1:
        raise MeasureError(f"x must be one model's flat parameters [P], got {tuple(x.shape)}")
    if vectors.dim() != 2 or vectors.shape[1] != x.shape[0]:
        raise MeasureError(f"vectors must be [k, {x.shape[0]}] (one direction per row), got "
                           f"{tuple(vectors.shape)}")
    n = sampler.x.shape[0]
    X = x.detach().expand(n, -1).contiguous()  # noqa: N806 - the paper's stacked X
    _, full = oracle(X, (sampler.x, sampler.y))  # [n, P] full local gradients
    V = vectors.detach().to(full)  # noqa: N806
    het = ((full - full.mean(0)) @ V.T).double().cpu()
    xis = []
    for d in range(draws):
        _, g = oracle(X, sampler.batch(first_step + d))
        xis.append((g - full).double())
    xi = torch.cat(xis)  # [n D, P]
    s = (xi @ V.double().T).pow(2).mean(0).cpu()
    sigma2 = float(xi.pow(2).sum(1).mean())
    trace, err = math.nan, math.nan
    if hessian is not None and probes > 0:
        # (1/(nD)) Σ ξᵀHξ is tr(HΣ) of the deviations ξ: the same probe estimator
        t = disagreement_curvature(hessian, xi, probes=probes, seed=seed)
        trace, err = t.value, t.stderr
    return NoiseAlong(s, het, sigma2, trace, err, draws, int(sampler.batch_size))
