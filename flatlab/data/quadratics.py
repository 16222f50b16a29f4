"""Heterogeneous quadratics, the standard test problem of docs/reference/algorithms.md §16.

Node ``i`` holds ``f_i(x) = 1/2 (x - b_i)^T H_i (x - b_i)``; the global objective is
``f = (1/n) sum_i f_i`` with minimizer ``x* = (sum_i H_i)^{-1} sum_i H_i b_i`` and heterogeneity
at the optimum ``zeta*^2 = (1/n) sum_i ||H_i (x* - b_i)||^2``. Gradients are computed for all
nodes at once, ``[n, d]`` in and out, ready for ``flatlab.simulate(..., grad_fn, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flatlab.data.dataset import check_float, check_int, check_seed
from flatlab.errors import DataError
from flatlab.seeds import seed_for

__all__ = ["QuadraticProblem", "heterogeneous_quadratics"]


@dataclass(frozen=True, eq=False)
class QuadraticProblem:
    """``f_i(x) = 1/2 (x - b_i)^T H_i (x - b_i)`` for ``n`` nodes in dimension ``d``.

    Attributes:
        H: Hessians ``[n, d, d]`` (symmetric positive definite).
        b: Local minimizers ``[n, d]``.
        x_star: Minimizer of the average ``[d]``.
        zeta2_star: ``(1/n) sum_i ||grad f_i(x*)||^2``.
        L: Largest eigenvalue over all ``H_i`` (smoothness of every ``f_i``).
        mu: Smallest eigenvalue of the average Hessian (strong convexity of ``f``).
    """

    H: torch.Tensor
    b: torch.Tensor
    x_star: torch.Tensor
    zeta2_star: float
    L: float
    mu: float

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.b.shape[0])

    @property
    def d(self) -> int:
        """Dimension."""
        return int(self.b.shape[1])

    def _check(self, X: torch.Tensor) -> None:  # noqa: N803
        if tuple(X.shape) != (self.n, self.d):
            raise DataError(f"quadratics: expected iterates [n, d] = [{self.n}, {self.d}] "
                            f"(got {tuple(X.shape)})")

    def grad(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """Local gradients ``H_i (x_i - b_i)``.

        Args:
            X: One point per node ``[n, d]``.

        Returns:
            ``[n, d]``, in ``X``'s dtype and device.
        """
        self._check(X)
        H, b = self.H.to(X), self.b.to(X)  # noqa: N806
        return torch.einsum("nij,nj->ni", H, X - b)

    def loss(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """Local losses ``f_i(x_i)``.

        Args:
            X: One point per node ``[n, d]``.

        Returns:
            ``[n]``.
        """
        self._check(X)
        H, b = self.H.to(X), self.b.to(X)  # noqa: N806
        diff = X - b
        return 0.5 * torch.einsum("ni,nij,nj->n", diff, H, diff)

    def global_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x) = (1/n) sum_i f_i(x)`` at one point ``x`` ``[d]`` (a scalar tensor)."""
        if tuple(x.shape) != (self.d,):
            raise DataError(f"quadratics: global_loss expects one point [d] = [{self.d}] "
                            f"(got {tuple(x.shape)})")
        return self.loss(x.expand(self.n, self.d)).mean()

    def grad_fn(self, noise: float = 0.0,
                seed: int = 0) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """A gradient oracle ``grad_fn(X, t)``: exact gradients plus optional Gaussian noise.

        Args:
            noise: Standard deviation of the noise added to every coordinate.
            seed: Seed of the noise; step ``t`` draws from a CPU generator seeded by
                ``(seed, t)``, so the noise is a deterministic function of ``(seed, t)``.

        Returns:
            ``grad_fn(X [n, d], t) -> [n, d]``.
        """
        noise = check_float(noise, "quadratics noise", minimum=0.0)
        seed = check_seed(seed)

        def grad_fn(X: torch.Tensor, t: int) -> torch.Tensor:  # noqa: N803
            g = self.grad(X)
            if noise == 0.0:
                return g
            gen = torch.Generator(device="cpu").manual_seed(
                seed_for(seed, "noise", check_int(t, "step t", minimum=0)))
            eps = torch.randn(self.n, self.d, generator=gen, dtype=torch.float64, device="cpu")
            return g + noise * eps.to(g)

        return grad_fn


def _random_orthogonal(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, d, d)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar measure


def heterogeneous_quadratics(n: int, d: int, seed: int = 0, *, heterogeneity: float = 1.0,
                             condition: float = 10.0, equal_curvature: bool = False,
                             curvature: float = 1.0,
                             dtype: torch.dtype = torch.float64) -> QuadraticProblem:
    """Random heterogeneous quadratics ``f_i(x) = 1/2 (x - b_i)^T H_i (x - b_i)``.

    ``H_i = Q_i diag(lambda_i) Q_i^T`` with a Haar-random orthogonal ``Q_i`` per node and
    eigenvalues uniform in ``[1, condition]``, the two ends included when ``d >= 2`` (so every
    ``H_i`` has condition number ``condition``). ``equal_curvature=True`` gives
    ``H_i = curvature * I`` instead (the case with closed-form fixed points). ``b_i =
    heterogeneity * N(0, I_d)``. Everything comes from ``numpy.random.default_rng(seed)`` in
    ``float64``; the tensors are then cast to ``dtype``.

    Args:
        n: Number of nodes.
        d: Dimension.
        seed: Seed of the draw.
        heterogeneity: Scale of the local minimizers ``b_i``.
        condition: Largest eigenvalue (the smallest is 1).
        equal_curvature: Use ``H_i = curvature * I``.
        curvature: The common curvature when ``equal_curvature``.
        dtype: Floating dtype of the tensors.

    Returns:
        The problem, with ``x_star``, ``zeta2_star``, ``L`` and ``mu``.
    """
    n = check_int(n, "quadratics n", minimum=1)
    d = check_int(d, "quadratics d", minimum=1)
    seed = check_seed(seed)
    heterogeneity = check_float(heterogeneity, "quadratics heterogeneity", minimum=0.0)
    condition = check_float(condition, "quadratics condition", minimum=1.0)
    curvature = check_float(curvature, "quadratics curvature", positive=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"quadratics dtype must be a floating torch dtype (got {dtype!r})")
    rng = np.random.default_rng(seed)
    if equal_curvature:
        hess = np.broadcast_to(curvature * np.eye(d), (n, d, d)).copy()
    else:
        eig = rng.uniform(1.0, condition, size=(n, d))
        if d >= 2:
            eig[:, 0], eig[:, 1] = 1.0, condition
        q = _random_orthogonal(rng, n, d)
        hess = np.einsum("nij,nj,nkj->nik", q, eig, q)
        hess = 0.5 * (hess + hess.transpose(0, 2, 1))
    b = heterogeneity * rng.standard_normal((n, d))
    x_star = np.linalg.solve(hess.sum(axis=0), np.einsum("nij,nj->i", hess, b))
    g_star = np.einsum("nij,nj->ni", hess, x_star - b)
    zeta2 = float(np.mean(np.sum(g_star**2, axis=1)))
    big = float(np.linalg.eigvalsh(hess)[:, -1].max())
    small = float(np.linalg.eigvalsh(hess.mean(axis=0))[0])
    return QuadraticProblem(
        H=torch.as_tensor(hess, dtype=dtype, device="cpu"),
        b=torch.as_tensor(b, dtype=dtype, device="cpu"),
        x_star=torch.as_tensor(x_star, dtype=dtype, device="cpu"),
        zeta2_star=zeta2,
        L=big,
        mu=small,
    )
