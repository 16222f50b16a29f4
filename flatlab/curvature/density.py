"""The spectral density of a Hessian by stochastic Lanczos quadrature (SLQ).

Following docs/reference/measures.md §7 (Ghorbani, Krishnan, Xiao 2019; Ubaru, Chen, Saad 2017):
for each of ``num_runs`` Rademacher unit start vectors run ``m`` Lanczos steps, take the
eigenpairs ``(θ_k, s_k)`` of ``T_m`` and the weights ``τ_k = (e_1ᵀ s_k)²`` (they sum to 1), and
smooth: ``φ(t) = (1/runs) Σ_runs Σ_k τ_k N(t; θ_k, σ²)``. The implied trace is
``P Σ_k τ_k θ_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatlab.curvature.lanczos import random_probes, tridiagonalize
from flatlab.curvature.operators import Operator, as_operator
from flatlab.errors import CurvatureError
from flatlab.seeds import seed_for

__all__ = ["SpectralDensity", "spectral_density", "smooth_density"]


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed spectral density from stochastic Lanczos quadrature.

    Attributes:
        grid: ``[G]`` points.
        density: ``[G]`` (or ``[n, G]``) values; each integrates to 1 over the real line.
        nodes: Ritz values ``[runs, m]`` (or ``[n, runs, m]``).
        weights: Their weights ``τ`` (same shape; each run's sum to 1).
        sigma: Width of the Gaussian kernel.
        trace: The implied trace ``P · mean_runs Σ_k τ_k θ_k`` (a float or ``[n]``).
        num_matvecs: Products taken.
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    trace: float | torch.Tensor
    num_matvecs: int


def smooth_density(nodes: torch.Tensor, weights: torch.Tensor, *, sigma: float | None,
                   steps: int, num_grid_points: int = 1000, grid_padding: float = 0.1
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``φ(t) = mean_runs Σ_k τ_k N(t; θ_k, σ²)`` on a grid, for nodes/weights ``[..., runs, m]``.

    Returns ``(grid [G], density [..., G], sigma)``; ``sigma`` defaults to the range of the nodes
    over ``steps``, the grid spans the nodes plus ``grid_padding`` of their range and ``3σ``.
    """
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sig = float(sigma) if sigma is not None else width / steps
    pad = grid_padding * width + 3 * sig
    grid = torch.linspace(lo - pad, hi + pad, int(num_grid_points), dtype=torch.float64,
                          device=nodes.device)
    z = (grid - nodes.double()[..., None]) / sig
    kernel = torch.exp(-0.5 * z ** 2) / (sig * math.sqrt(2 * math.pi))
    return grid, (weights.double()[..., None] * kernel).sum(-2).mean(-2), sig


def spectral_density(op: Operator | torch.Tensor, *, num_runs: int = 10, lanczos_steps: int = 80,
                     num_grid_points: int = 1000, sigma: float | None = None,
                     grid_padding: float = 0.1, seed: int = 0) -> SpectralDensity:
    """The spectral density of ``H`` by stochastic Lanczos quadrature.

    Args:
        op: An operator, a dense symmetric matrix or anything
            :func:`~flatlab.curvature.as_operator` accepts.
        num_runs: Independent start vectors.
        lanczos_steps: Lanczos steps per run (at most ``P``).
        num_grid_points: Points of the grid (spanning the Ritz values plus ``grid_padding`` of
            their range on each side).
        sigma: Kernel width; default: the range of the Ritz values over ``lanczos_steps``.
        grid_padding: Relative padding of the grid.
        seed: Seed of the start vectors.
    """
    op = as_operator(op)
    if int(num_runs) < 1 or int(lanczos_steps) < 1 or int(num_grid_points) < 2:
        raise CurvatureError("spectral_density needs num_runs >= 1, lanczos_steps >= 1 and "
                             "num_grid_points >= 2")
    if sigma is not None and not sigma > 0:
        raise CurvatureError(f"sigma must be > 0, got {sigma}")
    B = op.batch or 1  # noqa: N806
    start = op.num_matvecs
    nodes, weights = [], []
    for r in range(int(num_runs)):
        run_seed = seed_for(seed, "probes", r)
        q0 = random_probes((B, op.size), seed=run_seed, dtype=op.dtype, device=op.device)
        T = tridiagonalize(op, q0, lanczos_steps, seed=run_seed)[0]  # noqa: N806
        theta, S = torch.linalg.eigh(T)  # noqa: N806
        nodes.append(theta)
        weights.append(S[:, 0, :] ** 2)
    th = torch.stack(nodes, 1)  # [B, runs, m]
    tau = torch.stack(weights, 1)
    grid, dens, sig = smooth_density(th, tau, sigma=sigma, steps=int(lanczos_steps),
                                     num_grid_points=num_grid_points, grid_padding=grid_padding)
    tr = op.size * (tau * th).sum(2).mean(1)
    if op.batch is None:
        return SpectralDensity(grid, dens[0], th[0], tau[0], sig, float(tr[0]),
                               op.num_matvecs - start)
    return SpectralDensity(grid, dens, th, tau, sig, tr, op.num_matvecs - start)
