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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flatlab.errors import MeasureError

__all__ = ["GradientNoise", "gradient_noise"]


@dataclass(frozen=True)
class GradientNoise:
    """``σ²``, ``ζ²`` and ``‖∇f(x)‖²`` at one model, with the number of minibatch draws."""

    sigma2: float
    zeta2: float
    grad_norm2: float
    draws: int
    batch_size: int


def gradient_noise(oracle, sampler, x: torch.Tensor, *, draws: int = 8,
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
