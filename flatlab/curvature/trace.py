"""Trace estimates with a standard error, and the spectral density by stochastic Lanczos quadrature.

Trace (reference/measures.md §6), with a fixed number of products (no running-mean stopping
rule, which misbehaves in PyHessian):

- Hutchinson: ``tr(H) ≈ (1/m) Σ_j v_jᵀ H v_j`` with Rademacher (or Gaussian) probes; the standard
  error is the sample standard deviation over ``√m``.
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with ``s = m/3``, ``Q = orth(H S)`` for a random
  ``S`` ``[P, s]``, ``tr(H) ≈ tr(Qᵀ H Q) + (1/(m − 2s)) Σ_j g_jᵀ (I − QQᵀ) H (I − QQᵀ) g_j``:
  the top of the spectrum exactly, Hutchinson on the rest. Unbiased given ``Q``; its standard
  error is that of the Hutchinson part.

Spectral density (§7; Ghorbani, Krishnan, Xiao 2019; Ubaru, Chen, Saad 2017): for each of
``num_runs`` Rademacher unit start vectors run ``m`` Lanczos steps, take the eigenpairs
``(θ_k, s_k)`` of ``T_m`` and the weights ``τ_k = (e_1ᵀ s_k)²`` (they sum to 1), and smooth:
``φ(t) = (1/runs) Σ_runs Σ_k τ_k N(t; θ_k, σ²)``. The implied trace is ``P Σ_k τ_k θ_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatlab.curvature.lanczos import _batched, random_probes, tridiagonalize
from flatlab.curvature.operators import CurvatureError, as_operator

__all__ = ["TraceResult", "trace", "SpectralDensity", "spectral_density", "smooth_density",
           "TRACE_METHODS"]

TRACE_METHODS = ("hutch++", "hutchinson")


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate.

    Attributes:
        estimate: ``tr(H)`` (a float; ``[n]`` for a batched operator).
        stderr: Its standard error (same shape).
        samples: The stochastic part's per-probe values ``[m']`` (or ``[n, m']``).
        num_matvecs: Products taken.
        method: ``hutch++`` or ``hutchinson``.
        distribution: ``rademacher`` or ``gaussian``.
    """

    estimate: float | torch.Tensor
    stderr: float | torch.Tensor
    samples: torch.Tensor
    num_matvecs: int
    method: str
    distribution: str


def trace(op, num_matvecs: int = 100, *, method: str = "hutch++",
          distribution: str = "rademacher", seed: int = 0) -> TraceResult:
    """Estimate ``tr(H)`` with ``num_matvecs`` products (see the module docstring).

    Args:
        op: An operator, a dense symmetric matrix or anything
            :func:`~flatlab.curvature.as_operator` accepts; batched operators give ``[n]``.
        num_matvecs: Products to spend (Hutch++ needs at least 3, Hutchinson 2).
        method: ``hutch++`` (default) or ``hutchinson``.
        distribution: ``rademacher`` (default) or ``gaussian`` probes.
        seed: Seed of the probes.
    """
    op = as_operator(op)
    if method not in TRACE_METHODS:
        raise CurvatureError(f"trace method {method!r} is unknown; accepted: "
                             f"{', '.join(TRACE_METHODS)}")
    low = 3 if method == "hutch++" else 2
    if int(num_matvecs) < low:
        raise CurvatureError(f"{method} needs num_matvecs >= {low} (got {num_matvecs})")
    mv = _batched(op)
    B, P, m = op.batch or 1, op.size, int(num_matvecs)  # noqa: N806
    start = op.num_matvecs
    exact = torch.zeros(B, dtype=torch.float64)
    if method == "hutch++":
        s = min(m // 3, P)  # a sketch wider than P is the whole space
        S = random_probes((s, B, P), seed=seed, distribution=distribution, dtype=op.dtype,  # noqa: N806
                          device=op.device)
        HS = torch.stack([mv(S[j]) for j in range(s)], dim=2)  # [B, P, s]  # noqa: N806
        Q = torch.linalg.qr(HS.double())[0].to(op.dtype)  # [B, P, s]  # noqa: N806
        HQ = torch.stack([mv(Q[:, :, j].contiguous()) for j in range(s)], dim=2)  # noqa: N806
        exact = torch.einsum("bps,bps->b", Q.double(), HQ.double()).cpu()
        probes = random_probes((m - 2 * s, B, P), seed=seed + 1, distribution=distribution,
                               dtype=op.dtype, device=op.device)
        probes = probes - torch.einsum("bps,jbs->jbp", Q,
                                       torch.einsum("bps,jbp->jbs", Q, probes))
    else:
        probes = random_probes((m, B, P), seed=seed, distribution=distribution, dtype=op.dtype,
                               device=op.device)
    samples = torch.stack([(g.double() * mv(g).double()).sum(1) for g in probes]).cpu()  # [m', B]
    est = exact + samples.mean(0)
    err = samples.std(0, correction=1) / math.sqrt(samples.shape[0]) if samples.shape[0] > 1 \
        else torch.full((B,), float("nan"), dtype=torch.float64)
    if op.batch is None:
        return TraceResult(float(est[0]), float(err[0]), samples[:, 0],
                           op.num_matvecs - start, method, distribution)
    return TraceResult(est, err, samples.T, op.num_matvecs - start, method, distribution)


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
    grid = torch.linspace(lo - pad, hi + pad, int(num_grid_points), dtype=torch.float64)
    z = (grid - nodes.double()[..., None]) / sig
    kernel = torch.exp(-0.5 * z ** 2) / (sig * math.sqrt(2 * math.pi))
    return grid, (weights.double()[..., None] * kernel).sum(-2).mean(-2), sig


def spectral_density(op, *, num_runs: int = 10, lanczos_steps: int = 80,
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
        q0 = random_probes((B, op.size), seed=seed + 7919 * r, dtype=op.dtype, device=op.device)
        T = tridiagonalize(op, q0, lanczos_steps, seed=seed + 7919 * r)[0]  # noqa: N806
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
