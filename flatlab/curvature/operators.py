"""Curvature as operators: ``v ↦ H v`` for a loss of a flat parameter vector, for n models at once.

Every estimator in :mod:`flatlab.curvature` needs only the map ``v ↦ Hv``
(docs/reference/measures.md §2). An *operator* here has

- ``size`` (``P``), ``batch`` (``None`` for one matrix, ``n`` for n matrices applied together),
  ``dtype``, ``device``;
- ``matvec(V)``: ``H V`` for ``V`` of shape ``[P]`` (one matrix) or ``[n, P]`` (row ``i`` multiplied
  by ``H_i``);
- ``num_matvecs``: how many products were taken (a batched product counts once: one product of
  every model).

Sources of operators:

- :func:`hessian_operator` for any scalar ``loss_fn(x)`` of a flat vector ``x`` ``[P]``, or a
  function of ``X`` ``[n, P]`` returning ``n`` separable losses ``[n]`` (node ``i``'s loss
  depends on row ``i`` only), whose Hessian is block diagonal: one backward pass multiplies
  every block.
  Products are double backward on a cached gradient graph (Pearlmutter; what PyHessian does; the
  fastest on the CPU, measures.md §2.1), or forward-over-reverse (``torch.func.jvp`` of
  ``torch.func.grad``; less memory on GPUs).
- :func:`as_operator` wraps a dense symmetric matrix ``[P, P]`` (or ``[n, P, P]``), any callable
  ``v -> Hv``, or an operator (returned as is), so every estimator runs on small exact cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flatlab.errors import CurvatureError

__all__ = ["CurvatureError", "Operator", "HessianOperator", "DenseOperator", "CallableOperator",
           "hvp", "hessian_operator", "as_operator", "batched_matvec", "HVP_METHODS"]

HVP_METHODS = ("double_backward", "forward_over_reverse")


class Operator:
    """Base of the operators: shape bookkeeping and the product counter."""

    size: int
    batch: int | None
    dtype: torch.dtype
    device: torch.device

    def __init__(self, size: int, batch: int | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.size, self.batch, self.dtype, self.device = int(size), batch, dtype, device
        self.num_matvecs = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """``(P, P)`` or ``(n, P, P)``."""
        return (self.size, self.size) if self.batch is None else (self.batch, self.size,
                                                                  self.size)

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """Shape of the vectors it multiplies: ``(P,)`` or ``(n, P)``."""
        return (self.size,) if self.batch is None else (self.batch, self.size)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` (``[P]``) or ``(H_i v_i)_i`` (``[n, P]``)."""
        if tuple(v.shape) != self.vector_shape:
            raise CurvatureError(f"operator multiplies vectors of shape {self.vector_shape}, "
                                 f"got {tuple(v.shape)}")
        self.num_matvecs += 1
        return self._matvec(v.to(self.dtype))

    __call__ = matvec

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The matrix (``P`` products; for tests on small problems)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        if self.batch is None:
            return torch.stack([self.matvec(e) for e in eye], dim=1)
        cols = [self.matvec(e.expand(self.batch, -1).contiguous()) for e in eye]
        return torch.stack(cols, dim=2)


class DenseOperator(Operator):
    """A dense symmetric matrix ``[P, P]`` (or a batch ``[n, P, P]``) as an operator."""

    def __init__(self, A: torch.Tensor | np.ndarray) -> None:  # noqa: N803
        device = A.device if isinstance(A, torch.Tensor) else "cpu"  # a tensor stays where it is
        A = torch.as_tensor(A, device=device)  # noqa: N806
        if not A.is_floating_point():
            A = A.double()  # noqa: N806
        if A.dim() not in (2, 3) or A.shape[-1] != A.shape[-2]:
            raise CurvatureError(f"a dense operator needs a square matrix [P, P] or a batch "
                                 f"[n, P, P], got shape {tuple(A.shape)}")
        if not torch.allclose(A, A.transpose(-1, -2), rtol=1e-6,
                              atol=1e-8 * float(A.abs().max().clamp_min(1.0))):
            raise CurvatureError("a dense operator must be symmetric (A = Aᵀ)")
        super().__init__(A.shape[-1], None if A.dim() == 2 else A.shape[0], A.dtype, A.device)
        self.A = A

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.A @ v if self.batch is None else torch.einsum("nij,nj->ni", self.A, v)


class CallableOperator(Operator):
    """Any function ``v -> Hv`` with known size (and batch)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], size: int, *,
                 batch: int | None = None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(size, batch, dtype, torch.device(device))
        self.fn = fn

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.fn(v)


class HessianOperator(Operator):
    """``v ↦ ∇²L(x) v`` for a scalar loss of ``x`` ``[P]``, or for n separable losses of ``X``.

    Args:
        loss_fn: ``x [P] -> scalar``, or ``X [n, P] -> [n]`` (node ``i``'s loss of row ``i``).
        x: The point: ``[P]``, or ``[n, P]`` for a separable batch of losses.
        method: ``double_backward`` (default: the gradient graph is built once and reused for
            every product) or ``forward_over_reverse`` (``jvp`` of ``grad``, nothing cached).
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                 method: str = "double_backward") -> None:
        if method not in HVP_METHODS:
            raise CurvatureError(f"HVP method {method!r} is unknown; accepted: "
                                 f"{', '.join(HVP_METHODS)}")
        if x.dim() not in (1, 2) or not x.is_floating_point():
            raise CurvatureError(f"the point must be a floating vector [P] or a stack [n, P], "
                                 f"got shape {tuple(x.shape)} of {x.dtype}")
        super().__init__(x.shape[-1], None if x.dim() == 1 else x.shape[0], x.dtype, x.device)
        self.loss_fn, self.method = loss_fn, method
        self.x = x.detach().clone()
        self._grad: torch.Tensor | None = None
        self._xg: torch.Tensor | None = None
        self.loss = float("nan")

    def _total(self, x: torch.Tensor) -> torch.Tensor:
        out = self.loss_fn(x)
        want = () if self.batch is None else (self.batch,)
        if tuple(out.shape) != want:
            raise CurvatureError(f"loss_fn must return {'a scalar' if not want else 'shape [n]'}"
                                 f" for a point of shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return out.sum()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.method == "forward_over_reverse":
            return torch.func.jvp(torch.func.grad(self._total), (self.x,), (v,))[1]
        if self._grad is None:
            with torch.enable_grad():
                self._xg = self.x.clone().requires_grad_(True)
                total = self._total(self._xg)
                self.loss = float(total.detach()) / (1 if self.batch is None else self.batch)
                (self._grad,) = torch.autograd.grad(total, self._xg, create_graph=True)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(self._grad, self._xg, grad_outputs=v, retain_graph=True)
        return hv.detach()


def hessian_operator(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                     method: str = "double_backward") -> HessianOperator:
    """The Hessian of ``loss_fn`` at ``x`` as an operator (see :class:`HessianOperator`)."""
    return HessianOperator(loss_fn, x, method=method)


def hvp(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor, *,
        method: str = "double_backward") -> torch.Tensor:
    """One Hessian-vector product ``∇²L(x) v`` (for many, build :func:`hessian_operator` once)."""
    return HessianOperator(loss_fn, x, method=method).matvec(v)


def as_operator(A: Any, *, size: int | None = None, batch: int | None = None,  # noqa: N803
                dtype: torch.dtype = torch.float64) -> Operator:
    """An operator from an operator, a dense symmetric matrix, or a callable ``v -> Hv``.

    A callable needs ``size`` (and ``batch`` when it multiplies ``[n, P]`` stacks).
    """
    if isinstance(A, Operator):
        return A
    if isinstance(A, torch.Tensor | np.ndarray):
        return DenseOperator(A)
    if callable(A):
        if size is None:
            raise CurvatureError("a callable operator needs size=P (the length of v)")
        return CallableOperator(A, size, batch=batch, dtype=dtype)
    raise CurvatureError(f"cannot use a {type(A).__name__} as an operator; accepted: a flatlab "
                         "operator, a dense symmetric matrix, or a callable v -> Hv with size=P")


def batched_matvec(op: Operator) -> Callable[[torch.Tensor], torch.Tensor]:
    """``V ↦ H V`` on ``[B, P]`` stacks whatever the operator's batch (``B = 1`` for one matrix).

    What the batched estimators (Lanczos, power iteration, traces) multiply with: a batched
    operator's own product, or one matrix's product on the single row of a ``[1, P]`` stack.
    """
    if op.batch is None:
        return lambda V: op.matvec(V[0])[None]  # noqa: N803
    return op.matvec
