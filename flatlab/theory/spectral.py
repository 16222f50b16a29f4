"""Spectral summaries of mixing matrices (docs/reference/theory.md §2-§4).

For a doubly stochastic ``W`` with ``J = 11^T / n``:

* ``rho = ||W - J||_2``; for symmetric ``W`` it is ``max(|lambda_2|, |lambda_n|)``;
* spectral gap ``1 - rho``; Koloskova et al.'s ``p = 1 - rho^2``, so that
  ``||W X - J X||_F^2 <= (1 - p) ||X - J X||_F^2``;
* mixing time to accuracy ``eps``: the rounds ``t`` with ``rho^t <= eps``,
  ``ceil(log(1/eps) / log(1/rho))``, which bound ``||W^t X - J X|| <= eps ||X - J X||``.

For a time-varying schedule with period ``tau`` the same quantities are taken for the product
``Pi = W_{tau-1} ... W_0`` of one period (``p_period = 1 - ||Pi - J||_2^2`` with window ``tau``,
as in Koloskova et al. 2020), and the mixing time counts rounds (``tau`` per period).

For a column-stochastic schedule (push-sum weights, ``Topology.stochastic == "column"``) ``J`` is
not the limit: ``Pi^k -> pi 1^T`` with ``pi`` the Perron vector (``Pi pi = pi``, ``1^T pi = 1``),
so the summary reports ``rho = ||Pi - pi 1^T||_2`` (which is ``||Pi - J||_2`` when ``pi = 1/n``,
and may exceed 1 for a non-normal ``Pi`` although ``Pi^k`` converges), ``slem = |lambda_2(Pi)|``,
the asymptotic rate per period at which push-sum's numerators approach ``pi 1^T x`` and its
ratios ``z = x / w`` the average, and ``perron_min = n min_i pi_i``, the smallest weight ``w_i``
that push-sum divides by in the limit (1 when doubly stochastic): the ratios' error is at most
``||Pi^k - pi 1^T|| / perron_min`` times the spread, asymptotically. ``lambda2``, ``lambda_min``
and Koloskova's ``p`` are doubly stochastic quantities and are ``None``; the bound calculators
(:mod:`flatlab.theory.bounds`) refuse such schedules. Each summary's ``note`` says which
definitions it used.

Three ways to compute them, chosen automatically:

* ``fft``: circulant matrices (ring, torus, hypercube, complete, the exponential graphs) are
  diagonalised by the discrete Fourier transform of their translation group, so the whole
  spectrum is ``n * ifftn(kernel)`` in ``O(n log n)``; products over a period multiply
  eigenvalues. Exact to rounding at any ``n`` (a 100,000-node ring takes milliseconds).
* ``dense``: ``numpy.linalg.eigvalsh`` (symmetric) or ``svd``/``eigvals`` (otherwise) for
  ``n <= DENSE_SPECTRAL_LIMIT``.
* ``sparse``: Lanczos on the operator ``W - 2J`` (``scipy.sparse.linalg.eigsh``; the trivial
  eigenvalue moves to -1, below the others) and ``svds`` of ``Pi - J`` for non-symmetric or
  periodic schedules, applied as a product of sparse matrix-vector products.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from flatlab.errors import TheoryError
from flatlab.theory.checks import doubly_stochastic, finite
from flatlab.topology import Topology, from_matrix

__all__ = [
    "SpectralSummary",
    "spectral",
    "eigenvalues",
    "circulant_eigenvalues",
    "mixing_time",
    "as_topology",
    "DENSE_SPECTRAL_LIMIT",
]

#: Largest ``n`` handled with dense linear algebra by ``method="auto"``.
DENSE_SPECTRAL_LIMIT = 1024
_METHODS = ("auto", "fft", "dense", "sparse")
_SPARSE_MIN_N = 8


@dataclass(frozen=True)
class SpectralSummary:
    """Spectral quantities of a topology (over one period when it is time-varying).

    Attributes:
        topology: Name of the topology.
        nodes: ``n``.
        weights: Weight rule (``"lazy metropolis"`` when the lazy modifier is on).
        period: Rounds per period ``tau`` (1 when static).
        symmetric: Whether the (period) matrix is symmetric, so that ``lambda2`` and
            ``lambda_min`` are real eigenvalues.
        rho: ``||W - J||_2`` (``||Pi - J||_2`` over a period).
        lambda2: Second-largest eigenvalue of ``W`` (``None`` when not symmetric).
        lambda_min: Smallest eigenvalue of ``W`` (``None`` when not symmetric).
        spectral_gap: ``1 - rho``.
        p: ``1 - rho^2`` (Koloskova et al.; over a window of ``period`` rounds).
        slem: Second-largest eigenvalue modulus (equals ``rho`` for normal matrices).
        rho_per_round: ``rho ** (1 / period)``, the average contraction per round.
        eps: Accuracy of ``mixing_time``.
        mixing_time: Gossip rounds after which ``||W^t X - JX|| <= eps ||X - JX||`` is
            guaranteed by ``rho`` (``None`` if ``rho >= 1``); for a column-stochastic schedule
            ``J`` is ``pi 1^T``.
        method: ``fft``, ``dense`` or ``sparse``.
        stochastic: ``"doubly"`` or ``"column"`` (push-sum weights): which definitions apply.
        perron_min: ``n min_i pi_i`` of the period product's Perron vector ``pi`` (1 when doubly
            stochastic): push-sum's smallest limit weight ``w_i``.
        note: One line saying what ``rho``, ``slem`` and ``p`` mean for this schedule.
    """

    topology: str
    nodes: int
    weights: str
    period: int
    symmetric: bool
    rho: float
    lambda2: float | None
    lambda_min: float | None
    spectral_gap: float
    p: float | None
    slem: float
    rho_per_round: float
    eps: float
    mixing_time: int | None
    method: str
    stochastic: str = "doubly"
    perron_min: float = 1.0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-ready)."""
        return asdict(self)


def as_topology(topology: Topology | np.ndarray | sp.sparray) -> Topology:
    """Accept a :class:`Topology` or a mixing matrix (validated as a doubly stochastic ``W``)."""
    if isinstance(topology, Topology):
        return topology
    if not (sp.issparse(topology) or isinstance(topology, (np.ndarray, list, tuple))):
        hint = (f"; build it first: topology.make({topology!r}, n)"
                if isinstance(topology, str) else "")
        raise TheoryError(f"expected a Topology (flatlab.topology.make(...)) or a mixing matrix, "
                          f"got {type(topology).__name__} {topology!r}"[:200] + hint)
    return from_matrix(topology, name="matrix")


def mixing_time(rho: float, eps: float, period: int = 1) -> int | None:
    """Rounds ``tau * ceil(log(1/eps) / log(1/rho))`` that guarantee relative accuracy ``eps``.

    Args:
        rho: Contraction factor over one period (``||W - J||_2`` when static).
        eps: Target relative disagreement, in ``(0, 1)``.
        period: Rounds per period.

    Returns:
        Number of rounds, ``period`` when ``rho == 0`` and ``None`` when ``rho >= 1``.
    """
    if not 0 < eps < 1:
        raise TheoryError(f"eps must be in (0, 1) (got {eps})")
    rho = finite("rho", rho)
    if rho >= 1:
        return None
    if rho <= 0:
        return period
    periods = math.ceil(math.log(1 / eps) / -math.log(rho) - 1e-12)
    return period * max(periods, 1)


def circulant_eigenvalues(kernel: np.ndarray) -> np.ndarray:
    """Eigenvalues of the circulant ``W[i, j] = K[(j - i) mod shape]``, one per frequency.

    ``(W x)(i) = sum_m K[m] x(i + m)``, so the Fourier mode ``f`` has eigenvalue
    ``sum_m K[m] exp(2 pi i <f, m / shape>) = n * ifftn(K)[f]``; index 0 is the constant mode.
    """
    return (np.fft.ifftn(kernel) * kernel.size).ravel()


def _fft_spectrum(topo: Topology) -> np.ndarray:
    """All eigenvalues of the period product (the circulants commute, so eigenvalues multiply)."""
    lam = np.ones(topo.n, dtype=complex)
    for k in topo.kernels():
        lam = lam * circulant_eigenvalues(k)
    return lam


def _period_product_dense(topo: Topology) -> np.ndarray:
    prod = np.eye(topo.n)
    for t in range(topo.period):
        prod = topo.rounds[t] @ prod
    return prod


def _from_real_eigs(eigs: np.ndarray) -> tuple[float, float, float]:
    """(lambda2, lambda_min, rho) from all eigenvalues of a symmetric doubly stochastic matrix."""
    eigs = np.sort(np.asarray(eigs, dtype=float))
    rest = eigs[:-1]  # drop one copy of the top eigenvalue 1 (the consensus direction)
    lam2, lam_min = float(rest[-1]), float(rest[0])
    return lam2, lam_min, max(abs(lam2), abs(lam_min))


def eigenvalues(topology: Topology | np.ndarray, method: str = "auto") -> np.ndarray:
    """All eigenvalues of ``W`` (of the period product when time-varying), sorted descending.

    Real for symmetric ``W``, complex otherwise (sorted by modulus). Uses the FFT for circulant
    topologies and dense linear algebra otherwise.
    """
    topo = as_topology(topology)
    if topo.group is not None and method in ("auto", "fft"):
        lam = _fft_spectrum(topo)
    elif method == "sparse":
        raise TheoryError("eigenvalues() computes the full spectrum; use method fft or dense")
    else:
        _dense_guard(topo)
        prod = _period_product_dense(topo)
        lam = np.linalg.eigvalsh(prod) if _is_symmetric(prod) else np.linalg.eigvals(prod)
    if np.allclose(lam.imag, 0, atol=1e-12):
        return np.sort(lam.real)[::-1]
    return lam[np.argsort(-np.abs(lam), kind="stable")]


def _is_symmetric(a: np.ndarray | sp.sparray, tol: float = 1e-12) -> bool:
    d = a - a.T
    if sp.issparse(d):
        return d.nnz == 0 or abs(d).max() <= tol
    return bool(np.abs(d).max() <= tol)


def _dense_guard(topo: Topology) -> None:
    if topo.n > 4 * DENSE_SPECTRAL_LIMIT:
        raise TheoryError(f"dense spectra of n = {topo.n} nodes would take too long; use "
                          "method='sparse' (or 'fft' for circulant topologies)")


def _spectral_fft(topo: Topology):
    lam = _fft_spectrum(topo)
    nontrivial = np.abs(lam[1:])
    rho = float(nontrivial.max())
    symmetric = topo.symmetric and topo.period == 1
    if symmetric:
        real = lam[1:].real
        return rho, float(real.max()), float(real.min()), rho, True
    return rho, None, None, rho, False  # circulants are normal: slem = rho


def _spectral_dense(topo: Topology):
    prod = _period_product_dense(topo)
    if _is_symmetric(prod):
        lam2, lam_min, rho = _from_real_eigs(np.linalg.eigvalsh(prod))
        return rho, lam2, lam_min, rho, True
    rho = float(np.linalg.norm(prod - 1.0 / topo.n, 2))
    mod = np.sort(np.abs(np.linalg.eigvals(prod)))
    return rho, None, None, float(mod[-2]), False


def _centered_product_operator(topo: Topology) -> spla.LinearOperator:
    """``Pi - J`` as a LinearOperator, applying ``W_0, W_1, ...`` in turn."""
    n = topo.n

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        y = x
        for w in topo.rounds:
            y = w @ y
        return y - x.mean()

    def rmatvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        y = x
        for w in reversed(topo.rounds):
            y = w.T @ y
        return y - x.mean()

    return spla.LinearOperator((n, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)


def _spectral_sparse(topo: Topology, seed: int = 0):
    n = topo.n
    v0 = np.random.default_rng(seed).standard_normal(n)
    if topo.symmetric and topo.period == 1:
        w = topo.rounds[0]
        # W - 2J sends the consensus direction to -1 <= lambda_min: its top eigenvalue is lambda_2.
        shifted = spla.LinearOperator(
            (n, n), matvec=lambda x: w @ x - 2.0 * np.mean(x), dtype=np.float64
        )
        lam2 = float(spla.eigsh(shifted, k=1, which="LA", tol=0, v0=v0,
                                return_eigenvectors=False)[0])
        lam_min = float(spla.eigsh(w, k=1, which="SA", tol=0, v0=v0,
                                   return_eigenvectors=False)[0])
        rho = max(abs(lam2), abs(lam_min))
        return rho, lam2, lam_min, rho, True
    op = _centered_product_operator(topo)
    if np.linalg.norm(op @ v0) <= 1e-13 * np.linalg.norm(v0):
        return 0.0, None, None, 0.0, False  # Pi = J: exact averaging (ARPACK needs Pi != J)
    rho = float(spla.svds(op, k=1, tol=0, v0=v0, return_singular_vectors=False)[0])
    slem = float(np.abs(spla.eigs(op, k=1, which="LM", tol=0, v0=v0,
                                  return_eigenvectors=False)[0]))
    return rho, None, None, slem, False


_NOTE_DOUBLY = ("doubly stochastic: rho = ||W - J||_2 (||Pi - J||_2 of the period product Pi), "
                "J = 11^T/n; spectral_gap = 1 - rho, p = 1 - rho^2")
_NOTE_COLUMN = ("column-stochastic (push-sum): rho = ||Pi - pi 1^T||_2 with pi the Perron vector "
                "of the period product Pi (Pi^k -> pi 1^T); slem = |lambda_2(Pi)| is the "
                "asymptotic rate per period of push-sum's ratios x/w to the average, scaled by "
                "1/perron_min; lambda2, lambda_min and p (doubly stochastic quantities) do not "
                "apply")


def _perron(apply, n: int, v0: np.ndarray, dense: np.ndarray | None = None) -> np.ndarray:
    """The Perron vector ``pi`` of a column-stochastic ``Pi`` (``Pi pi = pi``, ``1^T pi = 1``)."""
    if dense is not None:
        vals, vecs = np.linalg.eig(dense)
        v = vecs[:, int(np.argmin(np.abs(vals - 1.0)))].real
    else:
        op = spla.LinearOperator((n, n), matvec=apply, dtype=np.float64)
        _, vecs = spla.eigs(op, k=1, which="LM", tol=0, v0=v0)
        v = vecs[:, 0].real
    return v / v.sum()


def _spectral_column(topo: Topology, method: str, seed: int = 0) -> tuple[float, float, float]:
    """``(rho, slem, perron_min)`` of a column-stochastic schedule (see the module docstring)."""
    n = topo.n
    if method == "fft":  # a circulant column-stochastic matrix is doubly stochastic: pi = 1/n
        rho, _, _, slem, _ = _spectral_fft(topo)
        return rho, slem, 1.0
    if method == "dense":
        prod = _period_product_dense(topo)
        pi = _perron(None, n, None, dense=prod)
        limit = np.outer(pi, np.ones(n))
        rho = float(np.linalg.norm(prod - limit, 2))
        mod = np.sort(np.abs(np.linalg.eigvals(prod - limit)))
        return rho, float(mod[-1]), float(n * pi.min())

    def apply(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x).ravel()
        for w in topo.rounds:
            y = w @ y
        return y

    def apply_t(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x).ravel()
        for w in reversed(topo.rounds):
            y = w.T @ y
        return y

    v0 = np.random.default_rng(seed).standard_normal(n)
    pi = _perron(apply, n, np.abs(v0) + 1.0)
    op = spla.LinearOperator(
        (n, n), matvec=lambda x: apply(x) - pi * np.sum(x),
        rmatvec=lambda y: apply_t(y) - np.dot(pi, np.asarray(y).ravel()), dtype=np.float64)
    if np.linalg.norm(op @ v0) <= 1e-13 * np.linalg.norm(v0):
        return 0.0, 0.0, float(n * pi.min())  # Pi = pi 1^T: exact in one period
    rho = float(spla.svds(op, k=1, tol=0, v0=v0, return_singular_vectors=False)[0])
    slem = float(np.abs(spla.eigs(op, k=1, which="LM", tol=0, v0=v0,
                                  return_eigenvectors=False)[0]))
    return rho, slem, float(n * pi.min())


def spectral(
    topology: Topology | np.ndarray | sp.sparray,
    *,
    eps: float = 1e-3,
    method: str = "auto",
) -> SpectralSummary:
    """Spectral summary of a topology or a mixing matrix.

    A column-stochastic topology (push-sum weights) is summarised by the quantities that apply
    to it, ``||Pi - pi 1^T||_2``, ``|lambda_2(Pi)|`` and ``n min pi`` (module docstring); its
    ``note`` says so.

    Args:
        topology: A :class:`~flatlab.topology.Topology`, or a doubly stochastic matrix.
        eps: Accuracy for the mixing time.
        method: ``auto`` (FFT for circulant topologies, dense up to
            :data:`DENSE_SPECTRAL_LIMIT` nodes, sparse above), ``fft``, ``dense`` or ``sparse``.

    Returns:
        A :class:`SpectralSummary`.

    Raises:
        TheoryError: for an unknown method, ``fft`` on a non-circulant topology, or ``eps``
            outside ``(0, 1)``.
    """
    topo = as_topology(topology)
    if method not in _METHODS:
        raise TheoryError(f"unknown spectral method {method!r}; accepted: {', '.join(_METHODS)}")
    if method == "auto":
        if topo.group is not None:
            method = "fft"
        elif topo.n <= DENSE_SPECTRAL_LIMIT:
            method = "dense"
        else:
            method = "sparse"
    if method == "fft" and topo.group is None:
        raise TheoryError(f"method 'fft' needs a circulant topology; {topo.name} is not one "
                          "(accepted here: dense, sparse)")
    if method == "dense":
        _dense_guard(topo)
    elif method == "sparse" and topo.n < _SPARSE_MIN_N:
        method = "dense"  # ARPACK needs k < n - 1; tiny problems are exact densely
    if topo.column_stochastic:
        rho, slem, perron_min = _spectral_column(topo, method)
        return _summary(topo, rho, None, None, slem, False, eps, method, perron_min)
    if method == "fft":
        rho, lam2, lam_min, slem, symmetric = _spectral_fft(topo)
    elif method == "dense":
        rho, lam2, lam_min, slem, symmetric = _spectral_dense(topo)
    else:
        rho, lam2, lam_min, slem, symmetric = _spectral_sparse(topo)
    return _summary(topo, rho, lam2, lam_min, slem, symmetric, eps, method, 1.0)


def _summary(topo: Topology, rho: float, lam2: float | None, lam_min: float | None, slem: float,
             symmetric: bool, eps: float, method: str, perron_min: float) -> SpectralSummary:
    rho = min(max(rho, 0.0), 1.0) if rho < 1 + 1e-9 else rho
    column = topo.column_stochastic
    weights = f"lazy {topo.weights}" if topo.lazy else topo.weights
    return SpectralSummary(
        topology=topo.name,
        nodes=topo.n,
        weights=weights,
        period=topo.period,
        symmetric=symmetric,
        rho=rho,
        lambda2=lam2,
        lambda_min=lam_min,
        spectral_gap=1.0 - rho,
        p=None if column else 1.0 - rho**2,
        slem=slem,
        rho_per_round=rho ** (1.0 / topo.period),
        eps=eps,
        mixing_time=mixing_time(rho, eps, topo.period),
        method=method,
        stochastic=topo.stochastic,
        perron_min=perron_min,
        note=_NOTE_COLUMN if column else _NOTE_DOUBLY,
    )


def d2_radius(topology: Topology | np.ndarray | sp.sparray) -> float:
    """Per-round contraction of D²'s disagreement recursion; D² is stable for small steps iff < 1.

    Without gradients D² (Tang et al. 2018; docs/reference/algorithms.md §4.2) iterates
    ``X^{t+1} = W_t (2 X^t − X^{t−1})``. On the disagreement ``(I − J) X`` this is the linear map
    ``[X^{t+1}; X^t] = [[2 W̃_t, −W̃_t], [I − J, 0]] [X^t; X^{t−1}]`` with ``W̃_t = W_t − J``; the
    returned value is the spectral radius of its product over one period, to the power
    ``1/period``. For a static ``W`` each eigenvalue ``λ ≠ 1`` gives the mode
    ``z² − 2λ z + λ = 0``; for a symmetric ``W`` the radius is below 1 exactly when
    ``λ_min(W) > −1/3`` (ring of even ``n`` with weights 1/3: ``λ_min = −1/3``, radius 1).
    Exact Diffusion uses ``(I + W)/2``, whose eigenvalues are in ``[0, 1]``, and is always stable.

    Circulant topologies are computed per Fourier mode (the rounds commute); others densely.
    A column-stochastic (push-sum) topology is refused: D² is derived for doubly stochastic W.
    """
    topo = as_topology(topology)
    doubly_stochastic("d2_radius", topo)

    def companion(lam: complex) -> np.ndarray:
        return np.array([[2 * lam, -lam], [1.0, 0.0]], dtype=complex)

    if topo.group is not None:
        per_round = [circulant_eigenvalues(k)[1:] for k in topo.kernels()]  # drop the mean mode
        radius = 0.0
        for f in range(topo.n - 1):
            prod = np.eye(2, dtype=complex)
            for lam in per_round:
                prod = companion(lam[f]) @ prod
            radius = max(radius, float(np.abs(np.linalg.eigvals(prod)).max()))
        return radius ** (1.0 / topo.period)
    _dense_guard(topo)
    n = topo.n
    centre = np.eye(n) - 1.0 / n
    if topo.period == 1 and _is_symmetric(topo.rounds[0]):
        lam = np.sort(np.linalg.eigvalsh(topo.rounds[0].toarray()))[:-1]  # drop one λ = 1
        roots = [np.roots([1.0, -2 * v, v]) for v in lam]
        return float(max((np.abs(r).max() for r in roots), default=0.0))
    prod = np.eye(2 * n)
    for w in topo.rounds:
        wt = w.toarray() - 1.0 / n
        prod = np.block([[2 * wt, -wt], [centre, np.zeros((n, n))]]) @ prod
    return float(np.abs(np.linalg.eigvals(prod)).max()) ** (1.0 / topo.period)
