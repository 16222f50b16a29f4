"""Disagreement between nodes acting through the curvature: ``tr(HΣ)``, the gap, the alignment.

For node models ``x_i = x̄ + d_i`` near a point with Hessian ``H = ∇²f(x̄)``, a second-order
Taylor expansion of the nodes' mean loss gives (Zhu et al., ICML 2023, "Decentralized SGD and
average-direction SAM are asymptotically equivalent", eq. for the D-SGD objective)::

    (1/n) Σ_i f(x_i) = f(x̄) + ∇f(x̄)ᵀ (1/n) Σ_i d_i + ½ tr(H Σ) + O(‖d‖³),
    Σ = (1/n) Σ_i d_i d_iᵀ = (1/n) Dᵀ D,      D = X − 1 x̄ᵀ   ([n, P]),

and ``Σ_i d_i = 0`` when ``x̄`` is the nodes' mean, so the *gap* ``(1/n) Σ_i f(x_i) − f(x̄)``
is ``½ tr(HΣ)`` up to third order: the disagreement acts as a perturbation of ``x̄`` weighted by
the curvature. On a quadratic the two are equal. The free functions here measure each side:

- :func:`disagreement_curvature`: ``tr(HΣ) = (1/n) Σ_i d_iᵀ H d_i`` exactly (``n``
  Hessian-vector products), or by ``k`` Rademacher probes ``z = Σ_i ε_i d_i / √n`` with
  ``E[zᵀHz] = tr(HΣ)`` (the cross terms vanish as ``E ε_i ε_l = δ_il``), with its standard error:
  ``k`` products whatever ``n``.
- :func:`disagreement_gap`: the gap on the same loss, beside ``½ tr(HΣ)`` and their ratio (how
  much of the gap the curvature explains).
- :func:`disagreement_alignment`: the share of ``‖D‖_F²`` in a ``k``-dimensional eigenspace of
  ``H`` (``Σ_j ‖D v_j‖² / ‖D‖_F²`` for orthonormal ``v_j``), beside ``k / P``, the expected share
  of a uniformly random direction.

Each takes an operator (:func:`~flatlab.curvature.hessian_operator`; a dense matrix or a callable
also works) and the deviations ``D`` (``[n, P]``); docs/reference/measures.md §10.4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flatlab.curvature.lanczos import random_probes
from flatlab.curvature.operators import Operator, as_operator
from flatlab.errors import CurvatureError

__all__ = ["DisagreementCurvature", "DisagreementGap", "Alignment", "deviations",
           "disagreement_curvature", "disagreement_gap", "disagreement_alignment"]


@dataclass(frozen=True)
class DisagreementCurvature:
    """``tr(HΣ)`` with its standard error (0 when exact) and what it cost.

    Attributes:
        value: The estimate of ``tr(HΣ) = (1/n) Σ_i d_iᵀ H d_i``.
        stderr: Its standard error over probes (0.0 when exact; nan with one probe).
        probes: Probes used (0: the exact sum over nodes).
        num_matvecs: Hessian-vector products taken.
        consensus_distance: ``Ξ² = tr Σ = (1/n) ‖D‖_F²`` (no products).
    """

    value: float
    stderr: float
    probes: int
    num_matvecs: int
    consensus_distance: float

    @property
    def rayleigh(self) -> float:
        """``tr(HΣ) / tr(Σ)``: the curvature the disagreement sees on average (nan at Ξ² = 0)."""
        return self.value / self.consensus_distance if self.consensus_distance > 0 else math.nan


@dataclass(frozen=True)
class DisagreementGap:
    """The gap ``(1/n) Σ_i f(x_i) − f(x̄)`` beside its second-order prediction ``½ tr(HΣ)``.

    Attributes:
        gap: ``(1/n) Σ_i f(x̄ + d_i) − f(x̄)`` (float64 accumulation of the losses).
        predicted: ``½ tr(HΣ)``.
        ratio: ``gap / predicted`` (nan when the prediction is 0).
        loss: ``f(x̄)``.
    """

    gap: float
    predicted: float
    ratio: float
    loss: float


@dataclass(frozen=True)
class Alignment:
    """The share of the disagreement in a ``k``-dimensional subspace, and a random one's.

    Attributes:
        share: ``Σ_j ‖D v_j‖² / ‖D‖_F²`` in ``[0, 1]`` (nan when ``D = 0``).
        chance: ``k / P``, the expected share of a uniformly random direction.
        per_direction: ``[k]`` each direction's share ``‖D v_j‖² / ‖D‖_F²``.
    """

    share: float
    chance: float
    per_direction: torch.Tensor

    @property
    def enrichment(self) -> float:
        """``share / chance``: how many times more than a random subspace of the same size."""
        return self.share / self.chance


def deviations(X: torch.Tensor, xbar: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
    """``D = X − 1 x̄ᵀ`` in float64 (``x̄`` the rows' mean unless given)."""
    X = _matrix(X, "X")  # noqa: N806
    mean = X.double().mean(0) if xbar is None else xbar.detach().double().to(X.device)
    if mean.shape != X.shape[1:]:
        raise CurvatureError(f"x̄ must have shape {tuple(X.shape[1:])}, got {tuple(mean.shape)}")
    return X.double() - mean


def _matrix(D: torch.Tensor, name: str) -> torch.Tensor:  # noqa: N803
    if not isinstance(D, torch.Tensor) or D.dim() != 2 or not D.is_floating_point() \
            or D.shape[0] == 0 or D.shape[1] == 0:
        got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise CurvatureError(f"{name} must be a non-empty floating tensor [n, P] (one row per "
                             f"node), got {got}")
    return D.detach()


def _one_matrix(op) -> Operator:
    op = as_operator(op)
    if op.batch is not None:
        raise CurvatureError("the disagreement measures take the Hessian at x̄ (one matrix "
                             f"[P, P]); got a batch of {op.batch}")
    return op


def disagreement_curvature(op: Operator | torch.Tensor, D: torch.Tensor, *, probes: int = 0,  # noqa: N803
                           seed: int = 0) -> DisagreementCurvature:
    """``tr(HΣ)`` for ``Σ = (1/n) Dᵀ D``: exact, or from ``probes`` Rademacher combinations.

    Args:
        op: The Hessian at ``x̄`` as an operator ``[P, P]`` (or a dense matrix / callable).
        D: ``[n, P]`` deviations ``x_i − x̄`` (:func:`deviations`).
        probes: 0 for the exact ``(1/n) Σ_i d_iᵀ H d_i`` (``n`` products); ``k ≥ 1`` for the
            unbiased estimate from ``z_j = Σ_i ε_ji d_i / √n`` (``k`` products, standard error
            from the spread of ``z_jᵀ H z_j``). A row of zeros costs no product (``H 0 = 0``):
            nodes that agree exactly with ``x̄`` (at the start) cost nothing.
        seed: Seed of the Rademacher signs.

    Returns:
        A :class:`DisagreementCurvature`.
    """
    op = _one_matrix(op)
    D = _matrix(D, "D").double()  # noqa: N806
    n, P = D.shape  # noqa: N806
    if P != op.size:
        raise CurvatureError(f"D has {P} columns but the operator is {op.size} x {op.size}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise CurvatureError(f"probes must be an integer >= 0 (0: exact), got {probes!r}")
    xi2 = float(D.pow(2).sum()) / n
    start = op.num_matvecs
    D = D.to(op.device)  # noqa: N806 - the products run where the operator lives
    if probes == 0:
        rows = D
    else:  # signs drawn on the CPU (device-independent), combined where D is
        eps = random_probes((probes, n), seed=seed, dtype=torch.float64, device=D.device)
        rows = eps @ D / math.sqrt(n)
    zero = torch.zeros((), dtype=torch.float64, device=D.device)
    nonzero = rows.any(dim=1).tolist()  # one device round trip, not one per row
    samples = torch.stack([(r * op.matvec(r.to(op.dtype)).double()).sum() if nz else zero
                           for r, nz in zip(rows, nonzero, strict=True)]).cpu()  # H 0 = 0
    if probes == 0:
        value, err = float(samples.sum()) / n, 0.0
    else:
        value = float(samples.mean())
        err = float(samples.std(correction=1)) / math.sqrt(probes) if probes > 1 else math.nan
    return DisagreementCurvature(value, err, probes, op.num_matvecs - start, xi2)


def disagreement_gap(loss_fn: Callable[[torch.Tensor], torch.Tensor], xbar: torch.Tensor,
                     D: torch.Tensor, curvature: float) -> DisagreementGap:  # noqa: N803
    """``(1/n) Σ_i f(x̄ + d_i) − f(x̄)`` on ``loss_fn``, beside ``½ tr(HΣ)`` (``curvature``).

    Args:
        loss_fn: ``x [P] -> scalar`` (the loss whose Hessian gave ``curvature``: same data, same
            buffers, so that the expansion holds term by term).
        xbar: ``[P]`` the averaged model.
        D: ``[n, P]`` the deviations.
        curvature: ``tr(HΣ)`` (:func:`disagreement_curvature`).
    """
    D = _matrix(D, "D")  # noqa: N806
    with torch.no_grad():
        f0 = float(loss_fn(xbar))
        x64 = xbar.detach().double()
        D64 = D.double()  # noqa: N806
        fs = [float(loss_fn((x64 + d.to(x64)).to(xbar.dtype))) if nz else f0
              for d, nz in zip(D64, D64.any(dim=1).tolist(), strict=True)]  # x̄ + 0 is x̄
    gap = math.fsum(fs) / len(fs) - f0
    predicted = 0.5 * float(curvature)
    return DisagreementGap(gap, predicted, gap / predicted if predicted != 0 else math.nan, f0)


def disagreement_alignment(vectors: torch.Tensor, D: torch.Tensor) -> Alignment:  # noqa: N803
    """The share of ``‖D‖_F²`` in the span of ``vectors`` (``[k, P]``, e.g. top-k Ritz vectors).

    The vectors are orthonormalized first (QR in float64), so Ritz vectors that are not exactly
    orthogonal count each direction once.
    """
    V = _matrix(vectors, "vectors").double()  # noqa: N806
    D = _matrix(D, "D").double().to(V.device)  # noqa: N806
    k, P = V.shape  # noqa: N806
    if D.shape[1] != P:
        raise CurvatureError(f"D has {D.shape[1]} columns but the vectors have {P}")
    if k > P:
        raise CurvatureError(f"{k} vectors cannot be independent in dimension {P}")
    Q, R = torch.linalg.qr(V.T)  # noqa: N806 - [P, k]
    if bool((R.diagonal().abs() <= 1e-10 * R.diagonal().abs().max()).any()):
        raise CurvatureError("the vectors are linearly dependent; give k independent directions")
    total = float(D.pow(2).sum())
    per = (D @ Q).pow(2).sum(0).cpu()
    share = per / total if total > 0 else torch.full((k,), math.nan, dtype=torch.float64,
                                                     device="cpu")
    return Alignment(float(share.sum()), k / P, share)
