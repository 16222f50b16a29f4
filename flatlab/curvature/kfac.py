"""K-FAC's damped inverse: ``(G ⊗ A + λ I)⁻¹`` in the Kronecker eigenbasis, on the node stack.

Sources: Martens & Grosse 2015 (K-FAC), Grosse & Martens 2016 (KFC for convolutions);
docs/reference/algorithms.md §8, §16 item 13.

The factors ``A`` and ``G`` of each Linear, Conv1d and Conv2d layer are computed in the engine
(:mod:`flatlab.engine.kfac`: :func:`kfac_layers`, :func:`kfac_factors`, re-exported here).
The damped inverse ``(G ⊗ A + λ I)⁻¹ vec V = vec(Q_G [(Q_Gᵀ V Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ)`` is
exact in the Kronecker eigenbasis (:func:`kfac_solve`); factored Tikhonov damping,
``(G + (√λ/π) I)⁻¹ V (A + π√λ I)⁻¹`` with ``π² = (tr A/dim A)/(tr G/dim G)``, is the cheaper
approximation (``tikhonov=True``).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flatlab.engine.kfac import FISHER_TYPES, KFACLayer, kfac_factors, kfac_layers

__all__ = [
    "KFACLayer",
    "kfac_layers",
    "kfac_factors",
    "Eigenbasis",
    "eigenbasis",
    "kfac_solve",
    "kron_matvec",
    "FISHER_TYPES",
]

@dataclass(frozen=True)
class Eigenbasis:
    """Eigendecompositions ``A = Q_A diag(d_A) Q_Aᵀ``, ``G = Q_G diag(d_G) Q_Gᵀ`` (batched)."""

    q_a: torch.Tensor
    d_a: torch.Tensor
    q_g: torch.Tensor
    d_g: torch.Tensor


def eigenbasis(A: torch.Tensor, G: torch.Tensor) -> Eigenbasis:  # noqa: N803
    """The Kronecker eigenbasis of ``G ⊗ A`` (eigenvalues clipped at 0: factors are PSD)."""
    d_a, q_a = torch.linalg.eigh(A)
    d_g, q_g = torch.linalg.eigh(G)
    return Eigenbasis(q_a, d_a.clamp_min(0), q_g, d_g.clamp_min(0))


def kfac_solve(V: torch.Tensor, A: torch.Tensor, G: torch.Tensor, damping: Any, *,  # noqa: N803
               scale: float = 1.0, basis: Eigenbasis | None = None,
               tikhonov: bool = False) -> torch.Tensor:
    """``(scale · G ⊗ A + damping · I)⁻¹ vec V`` for ``V`` ``[..., g, a]`` (row-major vec).

    Args:
        V: ``[..., g_dim, a_dim]`` (batched over leading dimensions, e.g. nodes).
        A: ``[..., a, a]`` input factor.
        G: ``[..., g, g]`` output-gradient factor.
        damping: ``λ > 0``, a number or a tensor broadcasting over the leading dimensions.
        scale: Multiplier of the Kronecker product (NGPD's ``μ``).
        basis: A precomputed :func:`eigenbasis` of ``(A, G)`` (computed here when ``None``).
        tikhonov: Factored Tikhonov damping instead of the exact eigenbasis inverse.

    Returns:
        ``[..., g_dim, a_dim]``.
    """
    lam = torch.as_tensor(damping, dtype=V.dtype, device=V.device)
    lam = lam.reshape(lam.shape + (1, 1)) if lam.dim() else lam
    if tikhonov:
        lam_s = lam / scale                                    # scale·(G⊗A + lam_s I)
        dim_a, dim_g = A.shape[-1], G.shape[-1]
        tr_a = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1) / dim_a
        tr_g = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1) / dim_g
        pi = torch.sqrt(tr_a.clamp_min(1e-30) / tr_g.clamp_min(1e-30))
        pi = pi.reshape(pi.shape + (1, 1))
        eye_a = torch.eye(dim_a, dtype=A.dtype, device=A.device)
        eye_g = torch.eye(dim_g, dtype=G.dtype, device=G.device)
        a_d = A + pi * lam_s.sqrt() * eye_a
        g_d = G + lam_s.sqrt() / pi * eye_g
        left = torch.linalg.solve(g_d, V)
        return torch.linalg.solve(a_d, left.transpose(-1, -2)).transpose(-1, -2) / scale
    b = eigenbasis(A, G) if basis is None else basis
    inner = b.q_g.transpose(-1, -2) @ V @ b.q_a
    inner = inner / (scale * b.d_g.unsqueeze(-1) * b.d_a.unsqueeze(-2) + lam)
    return b.q_g @ inner @ b.q_a.transpose(-1, -2)


def kron_matvec(A: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """``(G ⊗ A) vec V = vec(G V Aᵀ)`` with row-major ``vec`` (``V`` ``[..., g, a]``)."""
    return G @ V @ A.transpose(-1, -2)
