"""Trace estimates with a standard error (the spectral density is in :mod:`.density`).

Trace (docs/reference/measures.md §6), with a fixed number of products (no running-mean stopping
rule, which misbehaves in PyHessian):

- Hutchinson: ``tr(H) ≈ (1/m) Σ_j v_jᵀ H v_j`` with Rademacher (or Gaussian) probes; the standard
  error is the sample standard deviation over ``√m``.
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with ``s = m/3``, ``Q = orth(H S)`` for a random
  ``S`` ``[P, s]``, ``tr(H) ≈ tr(Qᵀ H Q) + (1/(m − 2s)) Σ_j g_jᵀ (I − QQᵀ) H (I − QQᵀ) g_j``:
  the top of the spectrum exactly, Hutchinson on the rest. Unbiased given ``Q``; its standard
  error is that of the Hutchinson part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flatlab.curvature.lanczos import random_probes
from flatlab.curvature.operators import as_operator, batched_matvec
from flatlab.errors import CurvatureError
from flatlab.seeds import seed_for

__all__ = ["TraceResult", "trace", "TRACE_METHODS"]

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


def _probes(m: int, B: int, P: int, seed: int | Sequence[int], distribution: str,  # noqa: N803
            op) -> torch.Tensor:
    """``[m, B, P]`` probes: from one ``seed``, or row ``b`` from ``seed[b]``."""
    if isinstance(seed, int):
        return random_probes((m, B, P), seed=seed, distribution=distribution, dtype=op.dtype,
                             device=op.device)
    return torch.cat([random_probes((m, 1, P), seed=s, distribution=distribution,
                                    dtype=op.dtype, device=op.device) for s in seed], dim=1)


def trace(op, num_matvecs: int = 100, *, method: str = "hutch++",
          distribution: str = "rademacher", seed: int | Sequence[int] = 0) -> TraceResult:
    """Estimate ``tr(H)`` with ``num_matvecs`` products (see the module docstring).

    Args:
        op: An operator, a dense symmetric matrix or anything
            :func:`~flatlab.curvature.as_operator` accepts; batched operators give ``[n]``.
        num_matvecs: Products to spend (Hutch++ needs at least 3, Hutchinson 2).
        method: ``hutch++`` (default) or ``hutchinson``.
        distribution: ``rademacher`` (default) or ``gaussian`` probes.
        seed: Seed of the probes; for a batched operator of ``n`` matrices also a sequence of
            ``n`` seeds, matrix ``b``'s probes drawn from ``seed[b]``: each row's estimate is
            then the one its matrix alone gets with that seed (up to rounding), however the
            matrices are batched.
    """
    op = as_operator(op)
    if method not in TRACE_METHODS:
        raise CurvatureError(f"trace method {method!r} is unknown; accepted: "
                             f"{', '.join(TRACE_METHODS)}")
    low = 3 if method == "hutch++" else 2
    if int(num_matvecs) < low:
        raise CurvatureError(f"{method} needs num_matvecs >= {low} (got {num_matvecs})")
    mv = batched_matvec(op)
    B, P, m = op.batch or 1, op.size, int(num_matvecs)  # noqa: N806
    if isinstance(seed, (list, tuple)):
        seed = [int(s) for s in seed]
        if len(seed) != B or op.batch is None:
            raise CurvatureError(f"a sequence of seeds needs a batched operator and one seed per "
                                 f"matrix; got {len(seed)} seeds for "
                                 f"{op.batch or 'one matrix (give one int)'}")
    else:
        seed = int(seed)
    start = op.num_matvecs
    exact = torch.zeros(B, dtype=torch.float64, device="cpu")
    if method == "hutch++":
        s = min(m // 3, P)  # a sketch wider than P is the whole space
        S = _probes(s, B, P, seed, distribution, op)  # noqa: N806
        HS = torch.stack([mv(S[j]) for j in range(s)], dim=2)  # [B, P, s]  # noqa: N806
        Q = torch.linalg.qr(HS.double())[0].to(op.dtype)  # [B, P, s]  # noqa: N806
        HQ = torch.stack([mv(Q[:, :, j].contiguous()) for j in range(s)], dim=2)  # noqa: N806
        exact = torch.einsum("bps,bps->b", Q.double(), HQ.double()).cpu()
        second = (seed_for(seed, "probes", 1) if isinstance(seed, int) else
                  [seed_for(r, "probes", 1) for r in seed])
        probes = _probes(m - 2 * s, B, P, second, distribution, op)
        probes = probes - torch.einsum("bps,jbs->jbp", Q,
                                       torch.einsum("bps,jbp->jbs", Q, probes))
    else:
        probes = _probes(m, B, P, seed, distribution, op)
    samples = torch.stack([(g.double() * mv(g).double()).sum(1) for g in probes]).cpu()  # [m', B]
    est = exact + samples.mean(0)
    err = samples.std(0, correction=1) / math.sqrt(samples.shape[0]) if samples.shape[0] > 1 \
        else torch.full((B,), float("nan"), dtype=torch.float64, device="cpu")
    if op.batch is None:
        return TraceResult(float(est[0]), float(err[0]), samples[:, 0],
                           op.num_matvecs - start, method, distribution)
    return TraceResult(est, err, samples.T, op.num_matvecs - start, method, distribution)
