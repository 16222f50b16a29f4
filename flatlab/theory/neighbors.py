"""Effective number of neighbours (Vogels, Hendrikx, Jaggi, NeurIPS 2022, "Beyond spectral gap").

Model: a random walk ``x <- W (sqrt(gamma) x + xi)`` with i.i.d. standard noise ``xi`` at every
node. Its stationary covariance ``S`` solves ``S = W (gamma S + I) W^T``, and

    n_eff(gamma) = 1 / ((1 - gamma) * mean_i S_ii),

the number of i.i.d. samples a node's average is worth. For symmetric ``W = U diag(lambda) U^T``,
``mean_i S_ii = (1/n) sum_k lambda_k^2 / (1 - gamma lambda_k^2)``; ``W = I`` gives ``n_eff = 1``
and ``W = J`` gives ``n``. ``gamma ~ (1 - lr * h)^2`` ties it to the step size times the curvature.
The worst-case variant uses ``max_i S_ii`` instead of the mean (docs/reference/theory.md §5).

Circulant schedules (ring, torus, exponential, one-peer exponential) are solved frequency by
frequency with the FFT; other matrices densely: by the eigendecomposition when static and
symmetric, by a discrete Lyapunov equation over one period otherwise (averaging over the phases of
a time-varying schedule).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from flatlab.errors import TheoryError
from flatlab.theory.checks import doubly_stochastic, unit_interval
from flatlab.theory.spectral import DENSE_SPECTRAL_LIMIT, circulant_eigenvalues
from flatlab.topology import Topology

__all__ = ["effective_neighbors", "stationary_variances"]


def _check_gamma(gamma: float) -> float:
    return unit_interval("gamma", gamma)


def _dense_rounds(topology) -> list[np.ndarray]:
    if isinstance(topology, Topology):
        if topology.n > 2 * DENSE_SPECTRAL_LIMIT:
            raise TheoryError(f"effective_neighbors of a non-circulant topology needs dense "
                              f"matrices; n = {topology.n} is too large")
        return [w.toarray() for w in topology.rounds]
    mats = [topology] if (sp.issparse(topology) or np.ndim(topology) == 2) else list(topology)
    out = []
    for m in mats:
        a = m.toarray() if sp.issparse(m) else np.asarray(m, dtype=float)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise TheoryError(f"a mixing matrix must be square (got shape {a.shape})")
        out.append(a)
    return out


def stationary_variances(topology: Topology | np.ndarray | Sequence[np.ndarray],
                         gamma: float) -> np.ndarray:
    """Stationary per-node variances ``S_ii`` of ``x <- W_t (sqrt(gamma) x + xi)``, per phase.

    Args:
        topology: A :class:`~flatlab.topology.Topology`, a mixing matrix, or a list of them
            (one per round of a period). Raw matrices are not checked for connectivity, so
            ``W = I`` is allowed.
        gamma: Decay in ``[0, 1)``.

    Returns:
        Array ``[period, n]``: row ``t`` holds the variances right after round ``t``'s mixing.
    """
    gamma = _check_gamma(gamma)
    doubly_stochastic("the effective number of neighbours", topology)
    if isinstance(topology, Topology) and topology.group is not None:
        # Normal commuting circulants: one scalar recursion c <- |lambda_t|^2 (gamma c + 1) per
        # frequency; every node has the same variance, the mean of c over frequencies.
        lams = [np.abs(circulant_eigenvalues(k)) ** 2 for k in topology.kernels()]
        c = _periodic_fixed_point(lams, gamma)
        return np.repeat(np.array([ct.mean() for ct in c])[:, None], topology.n, axis=1)
    rounds = _dense_rounds(topology)
    n = rounds[0].shape[0]
    if len(rounds) == 1 and np.allclose(rounds[0], rounds[0].T, atol=1e-12):
        lam, u = np.linalg.eigh(rounds[0])
        weight = lam**2 / (1.0 - gamma * lam**2)
        return ((u**2) @ weight)[None, :]
    # Period map C -> gamma^tau Phi C Phi^T + Q, with Q the covariance built up in one period.
    phi, q = np.eye(n), np.zeros((n, n))
    for w in rounds:
        phi = w @ phi
        q = w @ (gamma * q + np.eye(n)) @ w.T
    s = sla.solve_discrete_lyapunov(np.sqrt(gamma ** len(rounds)) * phi, q)
    out = []
    for w in rounds:
        s = w @ (gamma * s + np.eye(n)) @ w.T
        out.append(np.diag(s).copy())
    return np.array(out)


def _periodic_fixed_point(lams: list[np.ndarray], gamma: float) -> list[np.ndarray]:
    """Stationary ``c_t`` of the scalar recursions ``c <- a_t (gamma c + 1)``, per phase."""
    a_total = np.ones_like(lams[0])
    b_total = np.zeros_like(lams[0])
    for a in lams:  # compose the affine maps c -> a (gamma c + 1)
        a_total, b_total = a * gamma * a_total, a * (gamma * b_total + 1.0)
    c = b_total / (1.0 - a_total)
    out = []
    for a in lams:
        c = a * (gamma * c + 1.0)
        out.append(c)
    return out


def effective_neighbors(topology: Topology | np.ndarray | Sequence[np.ndarray], gamma: float,
                        worst_case: bool = False) -> float:
    """Effective number of neighbours ``n_eff(gamma)`` of Vogels et al. (2022).

    Args:
        topology: A :class:`~flatlab.topology.Topology` or a (list of) mixing matrix.
        gamma: Decay ``gamma`` in ``[0, 1)``; about ``(1 - lr * curvature)^2``.
        worst_case: Use the largest node variance instead of the mean over nodes.

    Returns:
        ``1 / ((1 - gamma) * Var)`` with ``Var`` the mean (or max) stationary node variance,
        averaged over the phases of a time-varying schedule. It lies in ``[1, n]``.
    """
    var = stationary_variances(topology, gamma)
    per_phase = var.max(axis=1) if worst_case else var.mean(axis=1)
    return float(1.0 / ((1.0 - float(gamma)) * per_phase.mean()))
