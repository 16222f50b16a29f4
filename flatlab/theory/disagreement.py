"""Predicted stationary disagreement curvature ``tr(H Σ)`` of decentralized SGD near a minimum.

Model (docs/reference/theory.md §9.1; derived here, exact for the model). ``n`` nodes, rows of
``X`` are the node parameters. Near a minimum ``x*`` every node sees the same quadratic
``f_i(x) = ½ (x − x*)ᵀ H (x − x*) + ζ_iᵀ x`` with ``H = Σ_j h_j v_j v_jᵀ`` (``h_j ≥ 0``), and
stochastic gradients ``g_i = H (x_i − x*) + ζ_i + ξ_i``: a constant offset ``ζ_i`` (the
heterogeneity, ``Σ_i ζ_i = 0`` so that ``x*`` is the minimum; 0 unless given) and a noise ``ξ_i``
independent across nodes and steps with covariance ``S``; ``s_j = v_jᵀ S v_j`` is the noise
variance along ``v_j``. With the deviations ``D = (I − 11ᵀ/n) X`` and ``Σ = (1/n) Dᵀ D``:

    consensus distance       Ξ² = tr Σ = (1/n) ||D||_F²
    disagreement curvature   tr(H Σ) = (1/n) Σ_i d_iᵀ H d_i = (1/n) Σ_j h_j ||D v_j||².

**Per direction and mode.** Take ``x* = 0``, a symmetric ``W = Σ_k λ_k u_k u_kᵀ`` with
``u_1 = 1/√n`` and the coordinate ``y = u_kᵀ X v_j``, with noise ``ε = u_kᵀ Ξ v_j`` (``Ξ`` the
noise rows ``ξ_iᵀ``), ``Var ε = Σ_i u_ki² s_j = s_j``, independent over steps. Because
``(X H) v_j = h_j X v_j`` the three orders of DSGD (:mod:`flatlab.algorithms.dsgd`, by their
registry names) decouple into scalar AR(1) recursions ``y⁺ = m y − c ε``:

=================  ===================================  =======================  ============
form               update                               multiplier ``m``         noise ``c``
=================  ===================================  =======================  ============
``diffusion``      ``X⁺ = W (X − η G(X))`` (ATC)        ``λ_k (1 − η h_j)``      ``η λ_k``
``consensus``      ``X⁺ = W X − η G(X)`` (DGD)          ``λ_k − η h_j``          ``η``
``diffusion-cta``  ``X⁺ = Φ − η G(Φ)``, ``Φ = W X``     ``λ_k (1 − η h_j)``      ``η``
=================  ===================================  =======================  ============

(``dsgd`` is the registry's alias of ``diffusion``; ``dgd``/``d-psgd`` of ``consensus``.) The
stationary variance of ``y⁺ = m y − c ε`` is ``Var_kj = c² s_j / (1 − m²)`` when ``|m| < 1``:

    diffusion      Var_kj = η² λ_k² s_j / (1 − λ_k² (1 − η h_j)²)
    consensus      Var_kj = η² s_j / (1 − (λ_k − η h_j)²)
    diffusion-cta  Var_kj = η² s_j / (1 − λ_k² (1 − η h_j)²)

and, since ``||D v_j||² = Σ_{k≥2} (u_kᵀ X v_j)²`` (the average mode ``k = 1`` is excluded),

    E Ξ²       = (1/n) Σ_{k≥2} Σ_j Var_kj,
    E tr(H Σ)  = (1/n) Σ_{k≥2} Σ_j h_j Var_kj.

Only second moments enter: the noise need not be Gaussian, and its correlations across
directions ``j`` do not matter. A non-symmetric but normal ``W`` (a circulant, e.g. the
directed exponential graph) is diagonalised by the unitary Fourier basis: ``λ_k`` is complex
and ``m², c²`` become ``|m|², |c|²``.

**Heterogeneity (the deterministic part).** With offsets ``Z`` (rows ``ζ_iᵀ``) the coordinate
is forced: ``y⁺ = m y − c (z_kj + ε)`` with ``z_kj = u_kᴴ Z v_j`` and the same ``m``, ``c``. The
noise has mean 0, so ``E y² = |E y|² + Var_kj`` with the stationary mean ``E y = −c z_kj /
(1 − m)``:

    diffusion      E y_kj = −η λ_k z_kj / (1 − λ_k (1 − η h_j))
    consensus      E y_kj = −η z_kj / (1 − λ_k + η h_j)
    diffusion-cta  E y_kj = −η z_kj / (1 − λ_k (1 − η h_j))

and the term ``heterogeneity = (1/n) Σ_{k≥2} Σ_j h_j |E y_kj|²`` adds to ``E tr(H Σ)``, as
``(1/n) Σ_{k≥2} Σ_j |E y_kj|²`` does to ``E Ξ²`` (only the listed directions: offsets along
other directions are not counted, and the bulk has none). The average mode is not forced
(``1ᵀ Z v_j = 0``, ``W`` doubly stochastic), so the mean deviation is stationary exactly when the
variance is. In the small-step limit ``E y ≈ −η λ_k z_kj / (1 − λ_k)`` (diffusion): the
``(η ζ / (1 − λ))²`` of the convergence bounds. The eigenvectors enter through ``z_kj``: a
symmetric ``W`` uses its real eigenbasis of ``1⊥`` (``numpy.linalg.eigh`` of ``Uᵀ W U``),
circulants the unitary Fourier basis (``z_kj = fftn(Z v_j)_k / √n``, complex, ``|·|²``), both
exact; ``eigenvalues=`` alone does not give them and is refused with ``heterogeneity``.

**Stability.** Every disagreement mode (``k ≥ 2``) must contract, ``|m| < 1`` (over one period:
``Π_t |m_t| < 1``); otherwise the prediction is refused, naming the condition. The model also
needs the average to stay near the minimum: its multiplier is ``1 − η h_j`` in every form, so
``η h_j ≤ 2`` is required. ``stability_margin = 1 − max_k (Π_t |m_t|)^(1/period)``: the slowest
mode's contraction per step, geometric mean over the period, the rate at which the state
forgets its start (``≤ 0`` is what is refused). A period that ends in exact averaging (Local
SGD on the complete graph) has the product 0 and the margin 1, however little the local steps
shrink; ``step_contraction = max_t max_k |m_t|`` (dense route: ``max_t ||Ã_t||₂``) is the
weakest single step's factor, e.g. ``1 − η h_min`` during Local SGD's local steps (1 for a flat
direction or the bulk).

**Local steps and time-varying W (periodic state).** With ``local_steps = H`` the gossip happens
only on every ``H``-th step; the other steps use ``W = I`` (:func:`flatlab.topology.periodic`:
round ``W'_t = W`` when ``(t + 1) mod H == 0``, else ``I``, where ``t = 0, 1, ...`` is the
step index, the state's ``t`` before the step). So the steps with indices ``H − 1, 2H − 1, ...``
gossip, and the iterate ``X_s`` after ``s`` steps, with ``s`` a multiple of ``H``, is taken
right after a gossip round (for Local SGD, complete graph with ``diffusion``: right after the
exact average, where the deviations are zero). The stationary state is periodic. Each mode
follows ``v_{t+1} = m_t² v_t + c_t² s_j`` with the multiplier and noise coefficient of the
round ``t mod period`` (identity rounds: ``λ = 1``); the fixed point over one period
``v_0 = B / (1 − A)``, with ``(A, B)`` the composition of the affine maps over the period, is
exact. The mean follows ``μ_{t+1} = m_t μ_t − c_t z_kj``, periodic fixed point
``μ_0 = −z_kj Σ_t c_t Π_{s>t} m_s / (1 − Π_t m_t)``. ``per_phase[...][r]`` is the stationary
value of ``X_s`` for ``s ≡ r (mod period)``: entry 0 is what the runner measures at a step
count that is a multiple of ``local_steps`` (its hooks see ``loop.step = s``, the steps done;
``measure.every`` a multiple of ``H``), and entry ``r`` follows ``r`` local steps later. The
reported totals are the mean over the ``period`` phases, what measurements at every step
average to. A time-varying topology
(one-peer exponential) is handled the same way with ``period = local_steps ×`` its own period;
then every entry whose ``r`` is a multiple of ``local_steps`` is right after a gossip round.

**Two routes.** Commuting schedules (a static symmetric ``W``, circulant schedules such as
ring, torus, exponential and one-peer exponential, each with identity rounds for local steps)
use the per-mode scalar recursions above (``method="eigen"``; circulants by the FFT,
:func:`~flatlab.theory.spectral.circulant_eigenvalues`). Any other doubly stochastic schedule
(non-symmetric, time-varying) uses ``method="dense"``: per direction ``j`` the column process
``x = X v_j`` follows ``x⁺ = A_t x − B_t (Z v_j + ε)`` with ``A_t = (1 − η h_j) W_t``
(diffusion and CTA) or ``W_t − η h_j I`` (consensus) and ``B_t = η W_t`` (diffusion) or
``η I``. All of them commute with ``I − J``, so in an orthonormal basis ``U`` of ``1⊥`` the
deviation covariance ``C`` solves the discrete periodic Lyapunov equation ``C = Φ C Φᵀ + Q``
with the period map ``Φ = Ã_{τ−1}…Ã_0``, ``Ã_t = Uᵀ A_t U`` and ``Q`` the covariance one
period adds (scale ``s_j``); the mean ``μ`` of the deviations (coordinates ``Uᵀ x``) is the
periodic fixed point of ``μ⁺ = Ã_t μ − B̃_t Uᵀ Z v_j``, ``μ_0 = (I − Φ)⁻¹ b`` with ``b`` the
forcing one period accumulates; ``E ||D v_j||² = tr C + ||μ||²`` per phase (this generalises
:func:`~flatlab.theory.neighbors.stationary_variances`, which is the diffusion recursion with
``γ = (1 − η h_j)²`` up to the scale ``η² s_j``). Both routes agree to rounding.

**Bulk directions.** Besides explicit pairs ``(h_j, s_j)`` (e.g. the top-k Hessian eigenpairs
and the noise along them), ``bulk_hs`` is the remaining ``Σ_j h_j s_j`` (``tr(H S)`` minus the
explicit directions' share), taken in the small-step limit ``η h_j → 0``, where ``Var_kj ≈
η² λ_k² s_j / (1 − λ_k²)`` (diffusion) or ``η² s_j / (1 − λ_k²)`` (consensus and CTA), so its
contribution is ``bulk_hs · (η²/n) Σ_{k≥2} g(λ_k)`` with ``g = λ²/(1 − λ²)`` or ``1/(1 − λ²)``
(periodic schedules: the same recursion with ``h = 0``). It enters ``tr(H Σ)`` as the term
``bulk``, not ``Ξ²`` (which would need ``Σ_j s_j``, not ``Σ_j h_j s_j``). With every direction
in the bulk this is the pure small-step form

    diffusion:  tr(H Σ) ≈ (η²/n) Σ_{k≥2} λ_k² / (1 − λ_k²) · tr(H S)
    consensus:  tr(H Σ) ≈ (η²/n) Σ_{k≥2} 1 / (1 − λ_k²) · tr(H S)

(relative error about ``2 η h |λ_k| / (1 − λ_k²)`` per mode, so it needs ``η h ≪ 1 − λ_2²``, not
only ``η h ≪ 1``). It needs ``|λ_k| < 1`` for ``k ≥ 2``: a disconnected ``W`` (a
second eigenvalue 1) or one with ``λ = −1`` is refused for the bulk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from flatlab.errors import TheoryError
from flatlab.theory.bounds import ALIASES
from flatlab.theory.checks import doubly_stochastic, finite, positive
from flatlab.theory.spectral import as_topology, circulant_eigenvalues
from flatlab.topology import Topology, periodic

__all__ = ["DisagreementPrediction", "stationary_disagreement", "FORMS", "DENSE_LIMIT"]

#: The update orders, by the algorithm registry's names.
FORMS = ("diffusion", "consensus", "diffusion-cta")
#: Largest ``n`` for the dense route (one ``(n-1) x (n-1)`` Lyapunov solve per direction).
DENSE_LIMIT = 512
_METHODS = ("auto", "eigen", "dense")
_ONE_TOL = 1e-9
#: Relative tolerance of "each heterogeneity column sums to 0": |1ᵀ z| <= tol √n ||z||.
_SUM_TOL = 1e-6
SOURCE = ("derived: stationary covariance of DSGD's linear recursion on a quadratic with "
          "additive gradient noise, per eigenmode of W and of H (docs/reference/theory.md §9.1); "
          "exact for the model; the bulk term is its small-step limit")
_UPDATES = {"diffusion": "X+ = W (X - lr G(X)) (ATC)",
            "consensus": "X+ = W X - lr G(X) (DGD)",
            "diffusion-cta": "X+ = W X - lr G(W X) (CTA)"}


@dataclass(frozen=True)
class DisagreementPrediction:
    """Stationary ``E tr(H Σ)`` and ``E Ξ²`` of decentralized SGD near a minimum.

    Attributes:
        form: ``diffusion``, ``consensus`` or ``diffusion-cta`` (registry names).
        curvature_disagreement: ``E tr(H Σ)``, mean over the period's phases.
        consensus_distance: ``E Ξ² = E tr Σ`` of the explicit directions (noise and
            heterogeneity; not the bulk), mean over the period.
        terms: ``curvature_disagreement``'s parts: ``directions`` (the noise ``s_j`` of the
            explicit directions), ``heterogeneity`` (their offsets ``Z v_j``: the squared
            stationary mean, 0 without them) and ``bulk`` (``bulk_hs`` in the small-step
            limit).
        per_phase: ``curvature_disagreement``, ``consensus_distance``, ``heterogeneity`` and
            ``bulk``, one value per phase ``r`` (``period = local_steps`` times the topology's
            own period): the iterate after ``s ≡ r (mod period)`` steps. Entry 0, and every
            entry whose ``r`` is a multiple of ``local_steps``, is right after a gossip round:
            what a measurement at a multiple of ``local_steps`` steps sees.
        per_direction: ``curvature_disagreement`` (``h_j Σ_k E y_kj² / n``),
            ``consensus_distance`` (``Σ_k E y_kj² / n``) and the ``heterogeneity`` share of the
            first (``h_j Σ_k |E y_kj|² / n``) of each explicit direction, mean over the period.
        stability_margin: ``1 − r`` with ``r = max_k (Π_t |m_t|)^(1/period)``, the slowest
            disagreement mode's contraction per step, geometric mean over the period (the rate
            at which the state forgets its start; the prediction is refused when ``r ≥ 1``);
            in ``(0, 1]``. It is 1 when the period ends in exact averaging (Local SGD on the
            complete graph): the period map is 0 however little the local steps shrink.
        step_contraction: The largest one-step factor ``max_t max_k |m_t|`` (dense route:
            ``max_t ||Ã_t||₂``): how much the weakest step shrinks the slowest mode. 1 for a
            flat direction (or the bulk) during local steps, where nothing shrinks; may exceed
            1 for a non-normal ``W`` or a periodic schedule that is still stable.
        method: ``eigen`` (per-mode closed form) or ``dense`` (periodic Lyapunov equation).
        inputs: What it was computed from.
        notes: What the numbers mean and leave out.
        source: Where the formula comes from.
    """

    form: str
    curvature_disagreement: float
    consensus_distance: float
    terms: dict[str, float]
    per_phase: dict[str, list[float]]
    per_direction: dict[str, list[float]]
    stability_margin: float
    step_contraction: float
    method: str
    inputs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    source: str = SOURCE

    def __float__(self) -> float:
        return self.curvature_disagreement

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-ready)."""
        return asdict(self)


# ------------------------------------------------------------------------------------ inputs
def _form(form: Any) -> str:
    key = str(form).strip().lower().replace("_", "-") if isinstance(form, str) else None
    key = ALIASES.get(key, key)
    if key not in FORMS:
        accepted = ", ".join(FORMS) + " (or the registry's aliases dsgd, atc, dgd, d-psgd, cta)"
        raise TheoryError(f"unknown form {form!r}; accepted: {accepted}")
    return key


def _vector(name: str, value: Any, allow_zero: bool = True) -> np.ndarray:
    """A 1-D float array of finite numbers >= 0 (a scalar gives one entry)."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TheoryError(f"{name} must be a number or a 1-D sequence of numbers "
                          f"(got {value!r})"[:200])
    arr = np.asarray(value, dtype=object)
    if arr.ndim > 1:
        raise TheoryError(f"{name} must be a number or a 1-D sequence of numbers "
                          f"(got shape {arr.shape})")
    items = [arr.item()] if arr.ndim == 0 else list(arr)
    return np.array([positive(f"{name}[{i}]" if arr.ndim else name, v, allow_zero=allow_zero)
                     for i, v in enumerate(items)], dtype=float)


def _local_steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TheoryError(f"local_steps must be an integer >= 1 (steps between gossip rounds; "
                          f"got {value!r})")
    return int(value)


def _eigenvalue_input(eigenvalues: Any) -> np.ndarray:
    if isinstance(eigenvalues, (str, bytes)):
        raise TheoryError(f"eigenvalues must be a 1-D sequence of numbers (got {eigenvalues!r})")
    arr = np.asarray(eigenvalues, dtype=object)
    if arr.ndim != 1 or arr.size < 2:
        raise TheoryError("eigenvalues must be a 1-D sequence of the n >= 2 eigenvalues of a "
                          f"symmetric W, 1 included (got shape {arr.shape})")
    lam = np.array([finite(f"eigenvalues[{i}]", v) for i, v in enumerate(arr)], dtype=float)
    bad = np.flatnonzero(np.abs(lam) > 1 + _ONE_TOL)
    if bad.size:
        raise TheoryError(f"eigenvalues[{bad[0]}] = {lam[bad[0]]:g} is outside [-1, 1], where "
                          "the eigenvalues of a symmetric doubly stochastic W lie")
    top = int(np.argmax(lam))
    if abs(lam[top] - 1.0) > _ONE_TOL:
        raise TheoryError(f"eigenvalues must include 1, the average's eigenvalue of a doubly "
                          f"stochastic W (the largest given is {lam[top]:g})")
    return np.clip(np.delete(lam, top), -1.0, 1.0)


# ---------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class _Schedule:
    """The rounds of one period: per-mode eigenvalues (commuting) and/or dense matrices."""

    n: int
    period: int
    label: str
    modes: np.ndarray | None  # [period, n - 1] eigenvalues of the disagreement modes
    dense: list[np.ndarray | None] | None  # per round U^T W_t U (None: identity)
    basis: np.ndarray | None = None  # [n, n - 1] real orthonormal basis of the modes (or of 1⊥)
    group: tuple[int, ...] | None = None  # circulant: the modes are the Fourier modes

    def coordinates(self, z: np.ndarray) -> np.ndarray:
        """Coordinates ``[n - 1, m]`` of the columns of ``z`` (``[n, m]``) in the modes.

        Commuting schedules: ``u_kᴴ z`` for every disagreement mode ``k ≥ 2``, in the order of
        ``modes`` (circulants: the unitary Fourier basis, ``fftn(z) / √n`` without frequency 0,
        complex); dense route: ``Uᵀ z`` in the basis of ``1⊥`` of :attr:`dense`.
        """
        if self.group is not None and self.dense is None:
            axes = tuple(range(len(self.group)))
            f = np.fft.fftn(z.reshape(*self.group, z.shape[1]), axes=axes)
            return f.reshape(self.n, z.shape[1])[1:] / np.sqrt(self.n)
        if self.basis is None:
            raise TheoryError("heterogeneity needs the eigenvectors of W (u_k^T Z v_j), which "
                              "eigenvalues alone do not give; pass topology=")
        return self.basis.T @ z


def _schedule(topology: Any, eigenvalues: Any, local_steps: int, method: str,
              vectors: bool = False) -> _Schedule:
    if (topology is None) == (eigenvalues is None):
        raise TheoryError("give exactly one of topology (a flatlab.topology.make(...) Topology) "
                          "and eigenvalues (of a symmetric W, 1 included)")
    if eigenvalues is not None:
        lam = _eigenvalue_input(eigenvalues)
        if method == "dense":
            raise TheoryError("method 'dense' needs a topology (its matrices); with eigenvalues "
                              "accepted: auto, eigen")
        modes = np.ones((local_steps, lam.size), dtype=complex)
        modes[-1] = lam
        return _Schedule(n=lam.size + 1, period=local_steps, label="W of the given eigenvalues",
                         modes=modes, dense=None)
    topo = as_topology(topology)
    doubly_stochastic("the stationary disagreement", topo)
    built_in = int(topo.params.get("local_steps", 1))
    if built_in > 1 and local_steps > 1:
        raise TheoryError(f"{topo.label} already takes {built_in} local steps "
                          f"(topology.make(..., local_steps={built_in})); give local_steps once")
    topo = periodic(topo, local_steps)
    n, period = topo.n, topo.period
    label = topo.label + (f", local_steps={max(built_in, local_steps)}"
                          if max(built_in, local_steps) > 1 else "")
    use_dense = method == "dense"
    modes, basis, why = (None, None, "") if use_dense else _commuting_modes(topo, vectors)
    if method == "eigen" and modes is None:
        raise TheoryError(f"method 'eigen' does not apply to {label}: {why}; accepted: auto, "
                          "dense")
    if use_dense or modes is None:
        if n > DENSE_LIMIT:
            why = why or "method 'dense' was asked for"
            raise TheoryError(f"{label}: {why}, so the prediction needs dense {n - 1} x {n - 1} "
                              f"Lyapunov solves; n = {n} is above the limit {DENSE_LIMIT}")
        u = _complement_basis(n)
        return _Schedule(n=n, period=period, label=label, modes=None,
                         dense=[None if _is_identity(w) else u.T @ (w @ u) for w in topo.rounds],
                         basis=u)
    return _Schedule(n=n, period=period, label=label, modes=modes, dense=None, basis=basis,
                     group=topo.group)


def _is_identity(w: sp.csr_array) -> bool:
    d = w - sp.identity(w.shape[0], format="csr")
    return d.nnz == 0 or float(abs(d).max()) == 0.0


def _commuting_modes(topo: Topology, vectors: bool
                     ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Eigenvalues ``[period, n-1]`` of the disagreement modes when one unitary basis serves.

    With ``vectors`` a symmetric ``W`` also gives its real eigenbasis of ``1⊥`` (``[n, n-1]``,
    from ``Uᵀ W U``, so the average is left out exactly even when ``W`` is disconnected);
    circulants need none (the Fourier basis, :meth:`_Schedule.coordinates`).
    """
    if topo.group is not None:  # circulants share the Fourier basis; index 0 is the average
        return np.array([circulant_eigenvalues(k)[1:] for k in topo.kernels()]), None, ""
    mixing = [w for w in topo.rounds if not _is_identity(w)]
    first = mixing[0]
    if any((w != first).nnz for w in mixing[1:]):
        return None, None, "its rounds differ and are not circulant (no common eigenbasis)"
    if not topo.symmetric or float(abs(first - first.T).max()) > 1e-12:
        return None, None, "its W is neither symmetric nor circulant"
    if topo.n > 4096:
        return None, None, "it is not circulant and too large for a dense eigendecomposition"
    basis = None
    if vectors:
        u = _complement_basis(topo.n)
        reduced = u.T @ (first @ u)
        lam, q = np.linalg.eigh(0.5 * (reduced + reduced.T))
        basis = u @ q
    else:  # drop the average's eigenvalue 1 (connected)
        lam = np.linalg.eigvalsh(first.toarray())[:-1]
    modes = np.ones((topo.period, topo.n - 1), dtype=complex)
    for t, w in enumerate(topo.rounds):
        if not _is_identity(w):
            modes[t] = lam
    return modes, basis, ""


def _complement_basis(n: int) -> np.ndarray:
    """Orthonormal ``n x (n-1)`` basis of the deviations ``1⊥``."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), np.eye(n)[:, : n - 1]]))
    return q[:, 1:]


# ---------------------------------------------------------------------------------- the maths
def _coefficients(form: str, lam: np.ndarray, lr: float, h: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode ``(m, c)`` of ``y⁺ = m y − c (z + ε)``, any shape of ``lam`` (complex)."""
    lam = np.asarray(lam, dtype=complex)
    if form == "consensus":
        return lam - lr * h, np.full(lam.shape, lr, dtype=complex)
    c = lr * lam if form == "diffusion" else np.full(lam.shape, lr, dtype=complex)
    return (1.0 - lr * h) * lam, c


@dataclass(frozen=True)
class _Phases:
    """One direction's stationary second moments per phase and its contraction factors.

    Attributes:
        var: ``Σ_{k≥2} Var y_k`` per phase for unit noise (``s_j = 1``).
        mean: ``Σ_{k≥2} |E y_k|²`` per phase for the given offsets (zeros without them).
        factor: The largest ``Π_t |m_t|²`` over the modes (dense: spectral radius² of ``Φ``).
        mode: The mode attaining it (eigen route; ``-1`` on the dense route).
        step: The largest one-step factor ``max_t max_k |m_t|`` (dense: ``max_t ||Ã_t||₂``).
    """

    var: np.ndarray
    mean: np.ndarray
    factor: float
    mode: int
    step: float


def _eigen_phases(sched: _Schedule, form: str, lr: float, h: float,
                  z: np.ndarray | None) -> _Phases:
    """Per-mode scalar recursions: ``v⁺ = |m|² v + |c|²`` and ``μ⁺ = m μ − c z`` per phase."""
    m, c = _coefficients(form, sched.modes, lr, h)  # [period, K]
    a, b = np.abs(m) ** 2, np.abs(c) ** 2
    a_tot, b_tot = np.ones(a.shape[1]), np.zeros(a.shape[1])
    m_tot, c_tot = np.ones(a.shape[1], dtype=complex), np.zeros(a.shape[1], dtype=complex)
    zero = np.zeros(a.shape[1]) if z is None else z
    for t in range(sched.period):  # compose the affine maps over one period
        a_tot, b_tot = a[t] * a_tot, a[t] * b_tot + b[t]
        m_tot, c_tot = m[t] * m_tot, m[t] * c_tot - c[t] * zero
    worst = int(np.argmax(a_tot))
    step = float(np.abs(m).max())
    if a_tot[worst] >= 1.0:
        inf = np.full(sched.period, np.inf)
        return _Phases(inf, inf, float(a_tot[worst]), worst, step)
    v = b_tot / (1.0 - a_tot)
    mu = c_tot / (1.0 - m_tot)
    var, mean = np.empty(sched.period), np.zeros(sched.period)
    for t in range(sched.period):
        var[t] = v.sum()
        v = a[t] * v + b[t]
        if z is not None:
            mean[t] = float(np.sum(np.abs(mu) ** 2))
            mu = m[t] * mu - c[t] * z
    return _Phases(var, mean, float(a_tot[worst]), worst, step)


def _dense_phases(sched: _Schedule, form: str, lr: float, h: float,
                  z: np.ndarray | None) -> _Phases:
    """Periodic Lyapunov equation for the covariance, periodic fixed point for the mean."""
    k = sched.n - 1
    eye = np.eye(k)
    maps, step = [], 0.0
    for w in sched.dense:
        wt = eye if w is None else w
        a = wt - lr * h * eye if form == "consensus" else (1.0 - lr * h) * wt
        b = lr * wt if form == "diffusion" else lr * eye
        maps.append((a, b))
        step = max(step, abs(1.0 - lr * h) if w is None else float(np.linalg.norm(a, 2)))
    zero = np.zeros(k) if z is None else z
    phi, q, c = eye, np.zeros((k, k)), np.zeros(k)
    for a, b in maps:  # x⁺ = a x − b (z + ε) composed over one period
        phi, q, c = a @ phi, a @ q @ a.T + b @ b.T, a @ c - b @ zero
    radius = float(np.abs(np.linalg.eigvals(phi)).max())
    if radius >= 1.0:
        inf = np.full(sched.period, np.inf)
        return _Phases(inf, inf, radius**2, -1, step)
    cov = sla.solve_discrete_lyapunov(phi, q)
    mu = np.linalg.solve(eye - phi, c)
    var, mean = np.empty(sched.period), np.zeros(sched.period)
    for t, (a, b) in enumerate(maps):
        cov = 0.5 * (cov + cov.T)
        var[t] = np.trace(cov)
        cov = a @ cov @ a.T + b @ b.T
        if z is not None:
            mean[t] = float(mu @ mu)
            mu = a @ mu - b @ z
    return _Phases(var, mean, radius**2, -1, step)


def _unstable(sched: _Schedule, form: str, lr: float, h: float, factor: float, mode: int,
              bulk: bool) -> TheoryError:
    cond = {"consensus": "|lambda_k - lr h|", "diffusion": "|lambda_k (1 - lr h)|",
            "diffusion-cta": "|lambda_k (1 - lr h)|"}[form]
    if bulk:
        return TheoryError(
            f"bulk_hs needs every disagreement mode to contract without curvature (|lambda_k| < "
            f"1 for k >= 2, over a period the product), but {sched.label} has a mode with "
            f"factor {np.sqrt(factor):.6g} (a disconnected W or an eigenvalue -1); give those "
            "directions explicitly with their curvature instead")
    if sched.period == 1:
        per, need = "per step", f"{cond} < 1 for every eigenvalue lambda_k of W but the average's"
    else:
        per = f"over one period of {sched.period} steps"
        need = (f"the product of {cond} over the period's rounds (lambda_k = 1 on rounds without "
                "gossip) < 1 for every mode but the average")
    what = ""
    if sched.modes is not None and sched.period == 1 and mode >= 0:
        what = f" (eigenvalue lambda = {_show(sched.modes[0, mode])} of W)"
    return TheoryError(
        f"unstable step: lr = {lr:g} with curvature h = {h:g} on {sched.label} gives a "
        f"disagreement mode{what} with contraction {np.sqrt(factor):.6g} >= 1 {per}; the {form} "
        f"form needs {need} (lower lr)")


def _show(lam: complex) -> str:
    lam = complex(lam)
    return f"{lam.real:.6g}" if abs(lam.imag) < 1e-12 else f"{lam:.6g}"


def _heterogeneity(value: Any, n: int, m: int) -> np.ndarray:
    """The offsets ``[n, m]`` (column ``j`` is ``Z v_j``), finite, each column summing to ~0."""
    if isinstance(value, (str, bytes)):
        raise TheoryError(f"heterogeneity must be an [n, m] array of numbers (got {value!r})"[:200])
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        z = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise TheoryError("heterogeneity must be an [n, m] array of numbers, column j the "
                          "nodes' gradient offsets along the j-th direction (Z v_j)") from None
    if z.shape != (n, m):
        raise TheoryError(f"heterogeneity has shape {z.shape} but needs [n, m] = [{n}, {m}]: "
                          "one row per node, one column per curvature h_j (Z v_j)")
    bad = np.argwhere(~np.isfinite(z))
    if bad.size:
        raise TheoryError(f"heterogeneity[{bad[0][0]}, {bad[0][1]}] must be a finite number "
                          f"(got {float(z[tuple(bad[0])])!r})")
    sums = np.abs(z.sum(axis=0))
    limit = _SUM_TOL * np.sqrt(n) * np.linalg.norm(z, axis=0)
    off = np.flatnonzero(sums > limit)
    if off.size:
        j = int(off[0])
        raise TheoryError(f"heterogeneity column {j} sums to {z[:, j].sum():.6g} over the "
                          f"nodes, not ~0 (tolerance {_SUM_TOL:g} x sqrt(n) x its norm): the "
                          "offsets are gradients at the minimum x*, where their mean vanishes")
    return z


def stationary_disagreement(
    lr: float,
    curvature: float | Sequence[float] | np.ndarray,
    noise: float | Sequence[float] | np.ndarray,
    *,
    topology: Topology | np.ndarray | None = None,
    eigenvalues: Sequence[float] | np.ndarray | None = None,
    form: str = "diffusion",
    local_steps: int = 1,
    bulk_hs: float = 0.0,
    heterogeneity: np.ndarray | Sequence[Sequence[float]] | None = None,
    method: str = "auto",
) -> DisagreementPrediction:
    """Stationary ``E tr(H Σ)`` and ``E Ξ²`` of constant-step decentralized SGD near a minimum.

    Per H-eigendirection ``j`` and W-mode ``k ≥ 2`` the coordinate ``y = u_kᵀ X v_j`` is the
    AR(1) process ``y⁺ = m y − c (z_kj + ε)`` (module docstring), e.g. for ``diffusion``
    ``y⁺ = λ_k (1 − η h_j) y − η λ_k (z_kj + ε)``, so ``Var_kj = η² λ_k² s_j / (1 − λ_k²
    (1 − η h_j)²)``, ``E y = −η λ_k z_kj / (1 − λ_k (1 − η h_j))``, and with ``E y² = (E y)² +
    Var_kj``: ``E tr(H Σ) = (1/n) Σ_{k≥2} Σ_j h_j E y²`` and ``E Ξ² = (1/n) Σ_{k≥2} Σ_j E y²``.

    Args:
        lr: Step size ``η > 0``.
        curvature: ``h_j >= 0``, one per explicit direction (a scalar: one direction).
        noise: ``s_j = v_jᵀ S v_j >= 0`` per direction, or one number (or a one-element
            sequence) for all of them.
        topology: A doubly stochastic :class:`~flatlab.topology.Topology` (static or
            time-varying; give this or ``eigenvalues``).
        eigenvalues: All ``n`` eigenvalues of a symmetric ``W``, the average's 1 included.
        form: ``diffusion`` (ATC), ``consensus`` (DGD) or ``diffusion-cta`` (registry names;
            aliases such as ``dsgd`` = ``diffusion`` accepted).
        local_steps: Gossip every ``local_steps`` steps (identity rounds between); Local SGD is
            ``diffusion`` on the complete graph with ``local_steps > 1``.
        bulk_hs: The remaining ``Σ h_j s_j`` outside the explicit directions, in the small-step
            limit (the term ``bulk`` of ``curvature_disagreement``).
        heterogeneity: The nodes' constant gradient offsets ``ζ_i`` at the minimum (``g_i =
            H (x_i − x*) + ζ_i + ξ_i``) along the explicit directions: an ``[n, m]`` array,
            ``m = len(curvature)``, column ``j`` = ``Z v_j`` (``Z`` the rows ``ζ_iᵀ``). Each
            column must sum to ~0 over the nodes (relative tolerance ``1e-6``: the mean gradient
            vanishes at ``x*``). Adds the term ``heterogeneity``; needs ``topology`` (the
            eigenvectors of ``W``).
        method: ``auto`` (per-mode closed form when one eigenbasis serves every round, else
            dense), ``eigen`` or ``dense`` (periodic Lyapunov equation on the deviations).

    Returns:
        A :class:`DisagreementPrediction`; ``float(prediction)`` is ``E tr(H Σ)``.

    Raises:
        TheoryError: A bad input (one line naming it and what is accepted), an unstable
            disagreement mode, ``lr h_j > 2`` (the average leaves the minimum), or ``bulk_hs``
            on a topology with a non-contracting mode at ``h = 0``.
    """
    form = _form(form)
    if method not in _METHODS:
        raise TheoryError(f"unknown method {method!r}; accepted: {', '.join(_METHODS)}")
    lr = positive("lr", lr)
    h = _vector("curvature", curvature)
    s = _vector("noise", noise)
    if s.size == 1:
        s = np.full(h.size, s[0])
    if s.size != h.size:
        raise TheoryError(f"noise has {s.size} values but curvature {h.size}; accepted: one s_j "
                          "per h_j, or one number for every direction")
    bulk_hs = positive("bulk_hs", bulk_hs, allow_zero=True)
    if h.size == 0 and bulk_hs == 0:
        raise TheoryError("curvature is empty and bulk_hs is 0: give at least one direction "
                          "h_j (with its noise s_j) or bulk_hs > 0")
    local_steps = _local_steps(local_steps)
    edge = np.flatnonzero(lr * h > 2.0)
    if edge.size:
        j = int(edge[0])
        raise TheoryError(f"lr * h = {lr * h[j]:g} > 2 for curvature[{j}] = {h[j]:g}: the "
                          "average itself diverges (multiplier 1 - lr h), so there is no "
                          "stationary state near the minimum; need lr * h_j <= 2")
    if heterogeneity is not None and eigenvalues is not None:
        raise TheoryError("heterogeneity needs the eigenvectors of W (z_kj = u_k^T Z v_j), which "
                          "eigenvalues alone do not give; pass topology= instead")
    sched = _schedule(topology, eigenvalues, local_steps, method,
                      vectors=heterogeneity is not None)
    coords = None
    if heterogeneity is not None:
        z = _heterogeneity(heterogeneity, sched.n, h.size)
        coords = sched.coordinates(z)  # [n - 1, m]: z_kj per disagreement mode
    phases = _dense_phases if sched.dense is not None else _eigen_phases

    factor, step = 0.0, 0.0
    per_dir = np.zeros((h.size, sched.period))  # noise: Σ_k Var_kj / n per phase
    het_dir = np.zeros((h.size, sched.period))  # offsets: Σ_k |E y_kj|² / n per phase
    for j in range(h.size):
        res = phases(sched, form, lr, float(h[j]), None if coords is None else coords[:, j])
        if res.factor >= 1.0:
            raise _unstable(sched, form, lr, float(h[j]), res.factor, res.mode, bulk=False)
        factor, step = max(factor, res.factor), max(step, res.step)
        per_dir[j] = res.var * s[j] / sched.n
        het_dir[j] = res.mean / sched.n
    bulk = np.zeros(sched.period)
    if bulk_hs > 0:
        res = phases(sched, form, lr, 0.0, None)
        if res.factor >= 1.0:
            raise _unstable(sched, form, lr, 0.0, res.factor, res.mode, bulk=True)
        factor, step = max(factor, res.factor), max(step, res.step)
        bulk = bulk_hs * res.var / sched.n
    both = per_dir + het_dir
    xi2 = both.sum(axis=0)
    directions = (h[:, None] * per_dir).sum(axis=0)
    het = (h[:, None] * het_dir).sum(axis=0)
    curv = directions + het + bulk
    margin = 1.0 - factor ** (1.0 / (2 * sched.period))

    notes = [f"{form}: {_UPDATES[form]}; stationary deviations from the average, near a minimum "
             "with additive gradient noise" + ("" if coords is not None else
                                               " (no heterogeneity)")]
    if coords is not None:
        notes.append("heterogeneity: the deterministic part of the disagreement, (1/n) sum_k "
                     "h_j |E y_kj|^2 from the offsets along the explicit directions (E y^2 = "
                     "(E y)^2 + Var); offsets outside them are not counted, in either total")
    if sched.period > 1:
        notes.append(f"periodic state over {sched.period} steps: totals are the mean over the "
                     "phases; per_phase[r] is the iterate after s = r (mod period) steps; a "
                     "step count s that is a multiple of local_steps is right after a gossip "
                     "round (entry 0)")
        if margin == 1.0:
            notes.append("stability_margin is 1: the period's product erases every deviation "
                         "(exact averaging); the local steps alone shrink them only by "
                         f"step_contraction = {step:.6g} per step")
    if bulk_hs > 0:
        notes.append("bulk: small-step limit lr h -> 0 of the directions outside curvature; it "
                     "adds to curvature_disagreement only (consensus_distance counts the explicit "
                     "directions)")
    inputs: dict[str, Any] = {
        "lr": lr, "curvature": h.tolist(), "noise": s.tolist(), "bulk_hs": bulk_hs,
        "local_steps": local_steps, "nodes": sched.n, "period": sched.period,
        "topology": sched.label,
    }
    if coords is not None:
        inputs["heterogeneity_zeta2"] = (np.sum(np.abs(coords) ** 2, axis=0) / sched.n).tolist()
    if eigenvalues is not None:
        inputs["eigenvalues"] = [float(v) for v in np.asarray(eigenvalues, dtype=float)]
    return DisagreementPrediction(
        form=form,
        curvature_disagreement=float(curv.mean()),
        consensus_distance=float(xi2.mean()),
        terms={"directions": float(directions.mean()), "heterogeneity": float(het.mean()),
               "bulk": float(bulk.mean())},
        per_phase={"curvature_disagreement": curv.tolist(), "consensus_distance": xi2.tolist(),
                   "heterogeneity": het.tolist(), "bulk": bulk.tolist()},
        per_direction={"curvature_disagreement": (h * both.mean(axis=1)).tolist(),
                       "consensus_distance": both.mean(axis=1).tolist(),
                       "heterogeneity": (h * het_dir.mean(axis=1)).tolist()},
        stability_margin=float(margin),
        step_contraction=float(step),
        method="dense" if sched.dense is not None else "eigen",
        inputs=inputs,
        notes=notes,
    )
