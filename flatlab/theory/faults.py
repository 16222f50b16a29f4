"""What a random mixing schedule contracts: links that fail independently (issue 34).

For i.i.d. random ``W_t`` (doubly stochastic, independent of the iterate, ``J = 11ᵀ/n``), W's own
spectrum no longer sets the rate of gossip ``x_{t+1} = W_t x_t``. With ``e_t = x_t − J x_t``:

* ``E‖e_{t+1}‖² = E[e_tᵀ (W_t − J)ᵀ(W_t − J) e_t] ≤ λ₂(E[W_tᵀ W_t]) E‖e_t‖²``: the **mean-square
  bound**, for any ``n`` (Boyd, Ghosh, Prabhakar, Shah 2006, randomized gossip);
* the second moment ``Σ_t = E[e_t e_tᵀ]`` evolves linearly, ``vec Σ_{t+1} = E[(W_t − J) ⊗ (W_t −
  J)] vec Σ_t``, so the **exact** asymptotic mean-square rate per round is the spectral radius of
  that ``n² × n²`` matrix, at most the bound (its trace contracts by at least ``λ₂``);
* the **mean** ``E[x_t] = E[W]^t x_0`` contracts by ``‖E[W] − J‖`` per round (``max(|λ₂|, |λ_n|)``
  of the symmetric ``E[W]``), and ``‖E[W] − J‖² ≤ exact``: averaging the matrix first hides the
  fluctuations.

On a ring of 6 with Metropolis weights and each link down with probability 0.3: bound 0.631,
exact 0.584, ``‖E[W] − J‖² = 0.572``. For Metropolis weights on a ring (every degree 2) ``E[W]`` has
a closed form: an edge is up with probability ``q = 1 − p``, and its weight is ``1/2`` when both
neighbouring edges are down (degrees 1 and 1) and ``1/3`` otherwise, so
``E[w_ij] = q (p²/2 + (1 − p²)/3)`` (:func:`ring_metropolis_mean_weight`).

**One-way message drops** (:class:`~flatlab.topology.faults.MessageDrops`: the receiver keeps the
weight of a message it did not get) leave every ``W_t`` row-stochastic, so the nodes still agree,
but not column-stochastic, so the value ``c`` they agree on is random. With drops i.i.d. with the
same ``p`` on every message, ``E[W] = (1 − p) W + p I`` is doubly stochastic and
``E[c] = mean(x_0)``. Its variance: the product of i.i.d. rounds has the
law of the product in reverse order, so ``c`` has the law of ``lim z_Tᵀ x_0`` with
``z_{t+1}ᵀ = z_tᵀ W_t``, ``z_0 = 1/n``, whose second moment obeys, writing each round as
``W̄ + Σ_e (b_e − (1 − p)) A_e`` over the messages ``e = (j → i)`` with ``A_e = w_ij e_i (e_j −
e_i)ᵀ`` and independent Bernoulli ``b_e``,

    ``M_{t+1} = W̄ᵀ M_t W̄ + p (1 − p) Σ_e w_ij² (M_t)_ii (e_j − e_i)(e_j − e_i)ᵀ``,

so ``Var c = x_0ᵀ (M_∞ − 11ᵀ/n²) x_0`` (:func:`consensus_value_variance`).

**Node churn** (:class:`~flatlab.topology.faults.NodeChurn`: a node offline in a round keeps its
value and the online nodes mix among themselves) is the same computation over the nodes instead
of the edges (:func:`fault_spectrum`).

The expectations are exact, summed over every pattern of failed parts (edges, or nodes), when
there are at most ``max_units`` of them (``2^m`` patterns); otherwise averages over ``samples``
seeded draws, with the standard error of each entry. The exact rate needs ``n² × n²`` and is
computed for ``n <= max_nodes``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flatlab.errors import TheoryError
from flatlab.topology.core import Topology
from flatlab.topology.faults import (
    AsyncGossip,
    LinkFailures,
    MessageDelays,
    MessageDrops,
    NodeChurn,
)

__all__ = ["FaultSpectrum", "fault_spectrum", "link_failure_spectrum", "async_gossip_spectrum",
           "ring_metropolis_mean_weight", "DropConsensus", "consensus_value_variance",
           "FaultyDisagreement", "stationary_disagreement_under_faults", "DelayedDisagreement",
           "stationary_disagreement_under_delays"]


@dataclass(frozen=True)
class FaultSpectrum:
    """The rates of gossip over a base graph whose links fail i.i.d. with probability ``p``.

    Attributes:
        topology: The base graph's label.
        p: Probability that a link is down in a round.
        n: Nodes.
        edges: Edges of the base graph.
        mean: ``E[W]`` (``[n, n]``).
        second: ``E[WᵀW]`` (``[n, n]``).
        mean_square_bound: ``λ₂(E[WᵀW])``: ``E‖e_{t+1}‖² <= bound · E‖e_t‖²``.
        rate: ``ρ(E[(W − J) ⊗ (W − J)])``, the exact mean-square rate per round (None above
            ``max_nodes``).
        mean_rate: ``‖E[W] − J‖`` (``max(|λ₂|, |λ_n|)`` of ``E[W]``), the rate of the
            expected iterate, unsquared (``mean_rate² <= rate``).
        failure_free: ``ρ(W − J)²`` of the base graph, the rate without failures.
        method: ``exact`` (every failure pattern) or ``sampled``.
        samples: Patterns summed (``2^m``) or drawn.
        stderr: Largest standard error of an entry of ``E[W]`` or ``E[WᵀW]`` (0 when exact).
        model: ``link failures`` or ``node churn``.
        kron: ``E[(W − J) ⊗ (W − J)]`` (``[n², n²]``), the second-moment map of the
            disagreement (None above ``max_nodes``).
    """

    topology: str
    p: float
    n: int
    edges: int
    mean: np.ndarray
    second: np.ndarray
    mean_square_bound: float
    rate: float | None
    mean_rate: float
    failure_free: float
    method: str
    samples: int
    stderr: float
    model: str = "link failures"
    kron: np.ndarray | None = None

    def as_dict(self) -> dict:
        """Plain numbers (no matrices), for JSON."""
        return {"topology": self.topology, "p": self.p, "n": self.n, "edges": self.edges,
                "mean_square_bound": self.mean_square_bound, "rate": self.rate,
                "mean_rate": self.mean_rate, "failure_free": self.failure_free,
                "method": self.method, "samples": self.samples, "stderr": self.stderr,
                "model": self.model}


def ring_metropolis_mean_weight(p: float) -> float:
    """``E[w_ij]`` of a ring edge under Metropolis weights when links fail i.i.d. with ``p``."""
    if isinstance(p, bool) or not isinstance(p, int | float | np.floating) or not 0 <= p < 1:
        raise TheoryError(f"p must be in [0, 1), got {p!r}")
    q = 1.0 - p
    return q * (p * p / 2 + (1 - p * p) / 3)


def link_failure_spectrum(topology: Topology, p: float, *, rule: str | None = None,
                          method: str = "auto", samples: int = 20000, seed: int = 0,
                          max_edges: int = 12, max_nodes: int = 16) -> FaultSpectrum:
    """``E[W]``, ``E[WᵀW]``, the mean-square bound and the exact rate under link failures.

    :func:`fault_spectrum` of :class:`~flatlab.topology.faults.LinkFailures` (``topology``,
    ``p``, ``seed``, ``rule``: the base's own rule by default); ``max_edges`` is its
    ``max_units``.

    Raises:
        TheoryError: A bad input, in one line.
    """
    try:
        faults = LinkFailures(topology, p, seed=seed, rule=rule)
    except Exception as e:  # noqa: BLE001 - a TopologyError says what is wrong in one line
        raise TheoryError(str(e)) from None
    return fault_spectrum(faults, method=method, samples=samples, max_units=max_edges,
                          max_nodes=max_nodes)


def fault_spectrum(faults: LinkFailures | NodeChurn | MessageDrops | AsyncGossip, *,
                   method: str = "auto", samples: int = 20000, max_units: int = 12,
                   max_nodes: int = 16) -> FaultSpectrum:
    """``E[W]``, ``E[WᵀW]``, the mean-square bound and the exact rate of a fault model.

    Args:
        faults: :class:`~flatlab.topology.faults.LinkFailures` (its units are the edges) or
            :class:`~flatlab.topology.faults.NodeChurn` (the nodes): ``m`` independent units,
            each down with probability ``p`` in a round.
        method: ``exact`` (every one of the ``2^m`` patterns, weighted by its probability),
            ``sampled`` (``samples`` of the rounds the model plays, from its seed), or
            ``auto`` (exact when ``m <= max_units``, or when ``p = 0``: one pattern). Each
            exact pattern costs an ``n² × n²`` Kronecker product: 4096 patterns of a 12-edge
            graph take about a second, 2^16 of a 16-node ring a minute.
        samples: Draws for ``sampled``.
        max_units: Most units for ``auto`` to enumerate.
        max_nodes: Most nodes for the exact rate's ``n² × n²`` matrix.

    Raises:
        TheoryError: A bad input, in one line.
    """
    if method not in ("auto", "exact", "sampled"):
        raise TheoryError(f"unknown method {method!r}; accepted: auto, exact, sampled")
    if isinstance(faults, AsyncGossip):
        return _async_spectrum(faults, max_nodes)
    topology, p, n, m = faults.base, faults.p, faults.n, faults.units
    if method == "auto":
        method = "exact" if m <= max_units else "sampled"
    if method == "exact" and m > 24:
        raise TheoryError(f"exact enumeration of 2^{m} failure patterns is too many; accepted: "
                          "method='sampled' (or at most 24 parts that fail)")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise TheoryError(f"samples must be an integer >= 2, got {samples!r}")
    J = np.full((n, n), 1.0 / n)  # noqa: N806
    kron = n <= max_nodes
    mean, second = np.zeros((n, n)), np.zeros((n, n))
    mean2, second2 = np.zeros((n, n)), np.zeros((n, n))
    K = np.zeros((n * n, n * n)) if kron else None  # noqa: N806
    if p == 0.0:  # one pattern, every part up
        method, patterns, count = "exact", iter([np.ones(m, dtype=bool)]), 1
    elif method == "exact":
        patterns = itertools.product((False, True), repeat=m)
        count = 2**m
    else:
        patterns = (faults.alive(t) for t in range(samples))
        count = samples
    for alive in patterns:
        alive = np.asarray(alive, dtype=bool)
        k = int(alive.sum())
        weight = (1 - p) ** k * p ** (m - k) if method == "exact" else 1.0 / count
        W = faults.round_from(alive).toarray()  # noqa: N806
        WW = W.T @ W  # noqa: N806
        mean += weight * W
        second += weight * WW
        if method == "sampled":
            mean2 += weight * W * W
            second2 += weight * WW * WW
        if kron:
            D = W - J  # noqa: N806
            K += weight * np.kron(D, D)
    stderr = 0.0
    if method == "sampled":
        var = np.maximum(np.concatenate([(mean2 - mean**2).ravel(), (second2 - second**2).ravel()]),
                         0.0)
        stderr = float(np.sqrt(var.max() / (count - 1)))
    lam = np.sort(np.linalg.eigvalsh((second + second.T) / 2))
    lam_mean = np.sort(np.linalg.eigvalsh((mean + mean.T) / 2))
    base = topology.matrix(0)
    free = float(np.linalg.norm(base - J, 2)) ** 2
    rate = float(np.max(np.abs(np.linalg.eigvals(K)))) if kron else None
    mean_rate = float(max(abs(lam_mean[-2]), abs(lam_mean[0])))
    model = "node churn" if isinstance(faults, NodeChurn) else "link failures"
    return FaultSpectrum(topology.label, float(p), n, len(faults.edges), mean, second,
                         float(lam[-2]), rate, mean_rate, free, method, count, stderr, model,
                         K)


def async_gossip_spectrum(topology: Topology, *, events: int | None = None, p: float = 0.0,
                          max_nodes: int = 16) -> FaultSpectrum:
    """AD-PSGD's asynchronous pairwise gossip in closed form (Boyd et al. 2006; Lian et al. 2018).

    One tick averages the pair ``(i, j)`` with probability ``π_ij = (1/d_i + 1/d_j)/n`` (a
    uniform node, then a uniform neighbour): ``W_e = I − ½ (e_i − e_j)(e_i − e_j)ᵀ``, a
    symmetric projection. A round is ``m = events`` independent ticks
    (:class:`~flatlab.topology.faults.AsyncGossip`), ``W_t = W_{e_m} ⋯ W_{e_1}``, so

    * ``E[W_t] = W̄₁^m`` with ``W̄₁ = Σ_e π_e W_e = I − ½ Σ_e π_e (e_i − e_j)(e_i − e_j)ᵀ``;
    * ``E[W_tᵀ W_t] = Φ^m(I)`` with ``Φ(M) = Σ_e π_e W_e M W_e`` (each ``W_e² = W_e``);
    * ``E[(W_t − J) ⊗ (W_t − J)] = K₁^m`` with ``K₁ = Σ_e π_e (W_e − J) ⊗ (W_e − J)``, so the
      exact mean-square rate per round is ``ρ(K₁)^m``.

    A tick lost with probability ``p`` leaves the pair as it was: each sum above gains the term
    ``p · I`` (``p · M``, ``p (I − J) ⊗ (I − J)``) and the edges' weights are scaled by
    ``1 − p``. The effective spectral gap of a round is ``1 − mean_square_bound`` (a synchronous
    round of the base graph contracts by ``failure_free``, the field's value here). Everything is
    exact (``method = "exact"``, ``stderr = 0``).

    Raises:
        TheoryError: A bad input, in one line.
    """
    try:
        faults = AsyncGossip(topology, events=events, p=p)
    except Exception as e:  # noqa: BLE001 - a TopologyError says what is wrong in one line
        raise TheoryError(str(e)) from None
    return _async_spectrum(faults, max_nodes)


def _async_spectrum(faults: AsyncGossip, max_nodes: int) -> FaultSpectrum:
    """:func:`async_gossip_spectrum` of a built model."""
    n, m = faults.n, faults.events
    J = np.full((n, n), 1.0 / n)  # noqa: N806
    pi = faults.pair_probabilities()
    ticks = [(faults.p, np.eye(n))] if faults.p > 0 else []  # a lost tick: nothing moves
    for (i, j), w in zip(faults.edges, pi, strict=True):
        We = np.eye(n)  # noqa: N806
        We[np.ix_([i, j], [i, j])] = 0.5
        ticks.append(((1 - faults.p) * w, We))
    one = sum(w * We for w, We in ticks) if ticks else np.eye(n)
    mean = np.linalg.matrix_power(one, m)
    second = np.eye(n)
    for _ in range(m):
        second = sum(w * We @ second @ We for w, We in ticks) if ticks else second
    kron = None
    rate = None
    if n <= max_nodes:
        K1 = sum(w * np.kron(We - J, We - J) for w, We in ticks) if ticks else np.zeros(  # noqa: N806
            (n * n, n * n))
        kron = np.linalg.matrix_power(K1, m)
        rate = float(np.max(np.abs(np.linalg.eigvals(K1)))) ** m
    lam = np.sort(np.linalg.eigvalsh((second + second.T) / 2))
    lam_mean = np.sort(np.linalg.eigvalsh((mean + mean.T) / 2))
    free = float(np.linalg.norm(faults.base.matrix(0) - J, 2)) ** 2
    return FaultSpectrum(faults.base.label, faults.p, n, len(faults.edges), mean, second,
                         float(lam[-2]) if n > 1 else 0.0, rate,
                         float(max(abs(lam_mean[-2]), abs(lam_mean[0]))) if n > 1 else 0.0,
                         free, "exact", 1, 0.0, "async gossip", kron)


@dataclass(frozen=True)
class FaultyDisagreement:
    """Stationary disagreement of constant-step decentralized SGD while links fail.

    Attributes:
        form: ``diffusion``, ``consensus`` or ``diffusion-cta``.
        consensus_distance: ``E Ξ² = (1/n) E Σ_i ‖x_i − x̄‖²`` over the explicit directions.
        curvature_disagreement: ``E tr(H Σ) = (1/n) Σ_j h_j E‖D v_j‖²``.
        per_direction: ``consensus_distance`` of each direction.
        contraction: The spectral radius of the second-moment map (``< 1``: a stationary
            regime exists; the prediction is refused otherwise).
        p: The links' failure probability.
        method: How ``E[(W − J) ⊗ (W − J)]`` was computed (``exact`` or ``sampled``).
    """

    form: str
    consensus_distance: float
    curvature_disagreement: float
    per_direction: np.ndarray
    contraction: float
    p: float
    method: str


def stationary_disagreement_under_faults(faults: LinkFailures | AsyncGossip, lr: float,
                                         curvature: float | Sequence[float],
                                         noise: float | Sequence[float], *,
                                         form: str = "diffusion", method: str = "auto",
                                         samples: int = 20000) -> FaultyDisagreement:
    """``E Ξ²`` and ``E tr(HΣ)`` of DSGD near a minimum, on a graph whose links fail i.i.d.

    Near a minimum with Hessian ``H`` (eigenvalues ``h_j``, directions ``v_j``) and gradient
    noise of variance ``s_j`` along ``v_j``, independent across nodes and steps, the
    disagreement ``D = (I − J) X`` along ``v_j`` follows a linear recursion with a random
    ``W_t``, e.g. for diffusion (ATC, ``X⁺ = W_t (X − η (X H + E))``)
    ``d⁺ = (W_t − J)((1 − η h_j) d − η ε)``, and its second moment ``S = E[d dᵀ]`` obeys
    ``vec S = a² K vec S + η² s_j K vec I`` with ``K = E[(W_t − J) ⊗ (W_t − J)]``
    (:func:`fault_spectrum`'s ``kron``, exact over every failure pattern or sampled) and
    ``a = 1 − η h_j``; for DGD (``consensus``) the map is ``E[B ⊗ B]`` with
    ``B = (W_t − J) − η h_j (I − J)`` and the noise enters as ``η² s_j (I − J)``; for
    ``diffusion-cta`` the map is ``a² K`` and the noise ``η² s_j (I − J)``. Then
    ``E Ξ² = Σ_j tr(S_j) / n`` and ``E tr(HΣ) = Σ_j h_j tr(S_j) / n``. At ``p = 0`` this is
    :func:`flatlab.theory.stationary_disagreement` of the base graph (checked to rounding).

    Args:
        faults: :class:`~flatlab.topology.faults.LinkFailures` (rounds symmetric, doubly
            stochastic, independent of the iterate), or
            :class:`~flatlab.topology.faults.AsyncGossip` (doubly stochastic, i.i.d. rounds:
            AD-PSGD is the ``consensus`` form over them; its maps are in closed form).
        lr: Step size ``η > 0``.
        curvature: ``h_j >= 0`` per explicit direction (a scalar: one direction).
        noise: ``s_j >= 0`` per direction, or one number for all.
        form: ``diffusion``, ``consensus`` or ``diffusion-cta``.
        method: How :func:`fault_spectrum` computes the expectations (``auto``, ``exact``,
            ``sampled``).
        samples: Draws when sampled.

    Raises:
        TheoryError: Another fault model (node churn couples the disagreement to the mean;
            message drops move the mean), bad numbers, more than 16 nodes (the ``n² × n²``
            map), or no stationary regime (contraction ``>= 1``), in one line.
    """
    if not isinstance(faults, (LinkFailures, AsyncGossip)):
        raise TheoryError(f"the stationary disagreement under faults is derived for link "
                          f"failures and asynchronous gossip; got {type(faults).__name__} (node "
                          "churn couples the disagreement to the mean, dropped messages move "
                          "the mean)")
    if form in ("dsgd", "diffusion-atc"):
        form = "diffusion"
    if form not in ("diffusion", "consensus", "diffusion-cta"):
        raise TheoryError(f"form {form!r} is unknown; accepted: diffusion, consensus, "
                          "diffusion-cta")
    h, sn = _directions(lr, curvature, noise, positive=False)
    spec = fault_spectrum(faults, method=method, samples=samples)
    if spec.kron is None:
        raise TheoryError(f"the second-moment map needs n² × n² = {spec.n ** 4} numbers; "
                          f"accepted: at most 16 nodes (got {spec.n})")
    n = spec.n
    K, eye, J = spec.kron, np.eye(n), np.full((n, n), 1.0 / n)  # noqa: N806
    P = eye - J  # noqa: N806
    EW = spec.mean - J  # noqa: N806
    per, worst = np.zeros(h.size), 0.0
    for j, (hj, sj) in enumerate(zip(h, sn, strict=True)):
        a = 1.0 - lr * hj
        if form == "consensus":
            c = lr * hj
            M = K - c * (np.kron(EW, P) + np.kron(P, EW)) + c * c * np.kron(P, P)  # noqa: N806
            rhs = lr * lr * sj * P.ravel()
        elif form == "diffusion":
            M = a * a * K  # noqa: N806
            rhs = lr * lr * sj * (K @ eye.ravel())
        else:
            M = a * a * K  # noqa: N806
            rhs = lr * lr * sj * P.ravel()
        r = float(np.max(np.abs(np.linalg.eigvals(M))))
        worst = max(worst, r)
        if r >= 1:
            raise TheoryError(f"no stationary regime: the disagreement's second moment grows "
                              f"by {r:.4g} per step along direction {j} (h = {hj:g}, lr = "
                              f"{lr:g}); accepted: a smaller step")
        S = np.linalg.solve(np.eye(n * n) - M, rhs).reshape(n, n)  # noqa: N806
        per[j] = float(np.trace(S)) / n
    return FaultyDisagreement(form, float(per.sum()), float((h * per).sum()), per, worst,
                              faults.p, spec.method)



@dataclass(frozen=True)
class DropConsensus:
    """Where nodes agree when one-way messages drop i.i.d. with probability ``p``.

    Attributes:
        topology: The base graph's label.
        p: Probability that a message is lost.
        mean: ``E[W]`` (``[n, n]``, doubly stochastic).
        covariance: ``Cov(π)``, the covariance of the random weights ``c = πᵀ x_0`` of the
            consensus value (``[n, n]``; ``E[π] = 1/n``).
        variance: ``Var c = x_0ᵀ Cov(π) x_0`` for the given ``x_0`` (None without one).
        rounds: Rounds the second-moment recursion took to converge.
    """

    topology: str
    p: float
    mean: np.ndarray
    covariance: np.ndarray
    variance: float | None
    rounds: int


def consensus_value_variance(topology: Topology, p: float, x0: np.ndarray | None = None, *,
                             tol: float = 1e-14, max_rounds: int = 100_000) -> DropConsensus:
    """The variance of the value gossip agrees on when messages drop (module docstring).

    Args:
        topology: A static base graph with doubly stochastic weights.
        p: Probability that a message is lost, in ``[0, 1)``.
        x0: ``[n]`` the starting values (optional; ``Var c`` needs them).
        tol: Stop when the second moment moves by less than ``tol`` (max abs entry).
        max_rounds: Most rounds of the recursion.

    Raises:
        TheoryError: A bad input, or a recursion that has not converged (one line).
    """
    try:
        drops = MessageDrops(topology, p, keeper="receiver")  # the receiver keeps its share
    except Exception as e:  # noqa: BLE001 - a TopologyError says what is wrong in one line
        raise TheoryError(str(e)) from None
    n = topology.n
    W = topology.matrix(0)  # noqa: N806
    i, j = drops.edges[:, 0], drops.edges[:, 1]
    w = W[i, j]
    mean = W.copy()
    mean[i, j] *= 1 - p
    np.add.at(mean, (i, i), p * w)
    # each message's fluctuation: (e_j − e_i)(e_j − e_i)ᵀ scaled by p(1 − p) w_ij² (M)_ii
    M = np.full((n, n), 1.0 / n**2)  # noqa: N806
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is reported
        coef = p * (1 - p) * w**2 * M[i, i]
        new = mean.T @ M @ mean
        np.add.at(new, (j, j), coef)
        np.add.at(new, (i, i), coef)
        np.add.at(new, (i, j), -coef)
        np.add.at(new, (j, i), -coef)
        moved = float(np.abs(new - M).max())
        M = new  # noqa: N806
        if moved < tol:
            break
    else:
        raise TheoryError(f"the consensus value's second moment did not settle in {max_rounds} "
                          f"rounds (moved {moved:.2g}); accepted: a connected graph, p < 1")
    cov = M - 1.0 / n**2
    var = None
    if x0 is not None:
        try:
            x = np.asarray(x0, dtype=np.float64)
        except (TypeError, ValueError):
            raise TheoryError(f"x0 must be {n} finite numbers, got {x0!r}") from None
        if x.shape != (n,) or not np.isfinite(x).all():
            raise TheoryError(f"x0 must be {n} finite numbers (shape ({n},)), got shape "
                              f"{x.shape}" + ("" if np.isfinite(x).all() else " with non-finite"
                                                                              " values"))
        var = float(x @ cov @ x)
    return DropConsensus(topology.label, float(p), mean, cov, var, rounds)


def _directions(lr: float, curvature: Any, noise: Any, *, positive: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """The step, and ``h_j`` and ``s_j`` per direction (one noise broadcast to all), checked.

    ``positive``: every ``h_j > 0`` (no stationary regime along a flat direction otherwise).
    """
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and np.isfinite(lr)
            and lr > 0):
        raise TheoryError(f"lr must be a finite number > 0, got {lr!r}")
    h = np.atleast_1d(np.asarray(curvature, dtype=float))
    sn = np.atleast_1d(np.asarray(noise, dtype=float))
    if sn.size == 1:
        sn = np.full(h.shape, float(sn[0]))
    flat_ok = (h > 0).all() if positive else (h >= 0).all()
    if h.ndim != 1 or sn.shape != h.shape or not (np.isfinite(h).all() and np.isfinite(sn).all()
                                                 and flat_ok and (sn >= 0).all()):
        what = ("curvature must be numbers > 0 and noise numbers >= 0" if positive else
                "curvature and noise must be finite numbers >= 0")
        raise TheoryError(f"{what}, one noise per direction or one for all; got {h.size} and "
                          f"{sn.size}")
    return h, sn


@dataclass(frozen=True)
class DelayedDisagreement:
    """Stationary disagreement of constant-step decentralized SGD whose messages arrive late.

    Attributes:
        form: ``diffusion`` or ``consensus``.
        consensus_distance: ``E Ξ² = (1/n) E Σ_i ‖x_i − x̄‖²`` over the explicit directions.
        curvature_disagreement: ``E tr(H Σ) = (1/n) Σ_j h_j E‖D v_j‖²``.
        per_direction: ``consensus_distance`` of each direction.
        contraction: The spectral radius of the augmented second-moment map (``< 1``).
        tau: The largest delay; ``p``: the probability that a message is late.
    """

    form: str
    consensus_distance: float
    curvature_disagreement: float
    per_direction: np.ndarray
    contraction: float
    tau: int
    p: float


def _delay_probabilities(n: int, delays: MessageDelays) -> np.ndarray:
    """``Π[d, i, j] = P(d_ij = d)``: own values never late, each link late with ``p``."""
    tau, p = delays.tau, delays.p
    late = np.zeros(tau + 1)
    late[0] = 1.0 - p
    if delays.fixed:
        late[tau] += p
    else:
        late[1:] += p / tau
    pi = np.broadcast_to(late[:, None, None], (tau + 1, n, n)).copy()
    for d in range(tau + 1):
        np.fill_diagonal(pi[d], 1.0 if d == 0 else 0.0)
    return pi


def stationary_disagreement_under_delays(topology: Topology, delays: MessageDelays, lr: float,
                                         curvature: float | Sequence[float],
                                         noise: float | Sequence[float], *,
                                         form: str = "diffusion") -> DelayedDisagreement:
    """``E Ξ²`` and ``E tr(HΣ)`` of DSGD near a minimum when messages arrive late.

    Near a minimum with Hessian eigenvalues ``h_j`` and gradient noise of variance ``s_j``
    along its directions (independent across nodes and steps), each direction's node values
    follow a linear recursion whose mixing reads values ``d_{ij,t}`` rounds old
    (:class:`~flatlab.topology.faults.MessageDelays`, :class:`flatlab.comm.DelayedMixer`). With
    ``W_d = W ⊙ [D_t = d]`` (``Σ_d W_d = W``), the values sent, ``y``, stacked over the last
    ``τ + 1`` rounds, ``z_t = [y_t; …; y_{t−τ}]``, obey ``z_{t+1} = A_t z_t + e_0 ⊗ ξ_t`` with
    first block row ``[R_0 … R_τ]`` and the shift below it:

    - ``diffusion`` (ATC): ``y = ψ = (1 − η h) x − η ε``, ``R_d = (1 − η h) W_d``,
      ``x_{t+1} = Σ_d W_d ψ_{t−d}``;
    - ``consensus`` (DGD): ``y = x``, ``R_0 = W_0 − η h I``, ``R_d = W_d``.

    The stationary ``S = E[z zᵀ]`` solves ``S = E[A S Aᵀ] + η² s (e_0 e_0ᵀ ⊗ I)``, with the
    expectation over the delays exact (each link's delay independent of the others and of
    ``z``: ``E[W_d X W_{d'}ᵀ] = W̄_d X W̄_{d'}ᵀ + diag(Σ_j w_ij² (δ_{dd'} π_d − π_d π_{d'})
    X_jj)``, ``W̄_d = W ⊙ Π_d``), solved by GMRES on the ``[n(τ+1)]²`` unknowns; then
    ``E Ξ² = (1/n) tr((I − J) E[x xᵀ])``. Derived (not from a paper); checked against
    :class:`~flatlab.comm.DelayedMixer` runs in ``tests/theory/test_delays.py``. The average is
    not preserved under delays, so only directions with ``h > 0`` have a stationary regime.

    Args:
        topology: A static, doubly stochastic topology.
        delays: The delay model (its ``n`` the topology's).
        lr: Step size ``η > 0``.
        curvature: ``h_j > 0`` per explicit direction (a scalar: one direction).
        noise: ``s_j >= 0`` per direction, or one number for all.
        form: ``diffusion`` or ``consensus``.

    Raises:
        TheoryError: A time-varying or push-sum topology, another ``n``, bad numbers,
            ``n(tau + 1) > 256`` (the map's size), or no stationary regime, in one line.
    """
    from scipy.sparse.linalg import LinearOperator, eigs, gmres

    if form in ("dsgd", "diffusion-atc"):
        form = "diffusion"
    if form not in ("diffusion", "consensus"):
        raise TheoryError(f"form {form!r} is not derived under delays; accepted: diffusion, "
                          "consensus")
    if not isinstance(topology, Topology) or topology.time_varying \
            or topology.stochastic != "doubly":
        raise TheoryError("the disagreement under delays is derived for a static, doubly "
                          "stochastic topology")
    if not isinstance(delays, MessageDelays) or delays.n != topology.n:
        raise TheoryError(f"delays must be MessageDelays over the topology's {topology.n} "
                          f"nodes, got {delays!r}")
    if topology.n * (delays.tau + 1) > 256:
        raise TheoryError(f"the augmented map has [n(tau + 1)]² unknowns; accepted: "
                          f"n(tau + 1) <= 256 (got {topology.n} nodes, tau = {delays.tau})")
    h, sn = _directions(lr, curvature, noise, positive=True)
    n, tau = topology.n, delays.tau
    k = tau + 1
    W = topology.matrix(0)  # noqa: N806
    pi = _delay_probabilities(n, delays)
    Wd = W[None] * pi  # noqa: N806  (E W_d)
    W2 = W * W  # noqa: N806
    P = np.eye(n) - np.full((n, n), 1.0 / n)  # noqa: N806

    def pair(d: int, e: int, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """``E[W_d X W_eᵀ]`` over one round's delays."""
        corr = W2 * ((pi[d] if d == e else 0.0) - pi[d] * pi[e])
        return Wd[d] @ X @ Wd[e].T + np.diag(corr @ np.diag(X))

    def moment(S: np.ndarray, c: float, a: float) -> np.ndarray:  # noqa: N803
        """``E[A S Aᵀ]`` for blocks ``S[p, q]`` (``[k, k, n, n]``)."""
        out = np.empty_like(S)
        top = np.zeros((n, n))
        for d in range(k):
            for e in range(k):
                m = pair(d, e, S[d, e])
                if form == "consensus":
                    if e == 0:
                        m = m - c * Wd[d] @ S[d, 0]
                    if d == 0:
                        m = m - c * S[0, e] @ Wd[e].T
                    if d == 0 and e == 0:
                        m = m + c * c * S[0, 0]
                top += m
        out[0, 0] = a * a * top
        for q in range(1, k):  # E[first row] S (shift)ᵀ
            row = sum(Wd[d] @ S[d, q - 1] for d in range(k))
            if form == "consensus":
                row = row - c * S[0, q - 1]
            out[0, q] = a * row
            out[q, 0] = out[0, q].T
        out[1:, 1:] = S[:-1, :-1]
        return out

    size = (k * n) ** 2
    per, worst = np.zeros(h.size), 0.0
    for j, (hj, sj) in enumerate(zip(h, sn, strict=True)):
        c, a = (lr * hj, 1.0) if form == "consensus" else (0.0, 1.0 - lr * hj)

        def apply(v: np.ndarray, c: float = c, a: float = a) -> np.ndarray:
            return moment(v.reshape(k, k, n, n), c, a).ravel()

        T = LinearOperator((size, size), matvec=apply, dtype=float)  # noqa: N806
        r = float(abs(eigs(T, k=1, which="LM", return_eigenvectors=False, tol=1e-8,
                           maxiter=20 * size)[0]))
        worst = max(worst, r)
        if r >= 1:
            raise TheoryError(f"no stationary regime: the second moment grows by {r:.4g} per "
                              f"step along direction {j} (h = {hj:g}, lr = {lr:g}); accepted: a "
                              "smaller step or shorter delays")
        Q = np.zeros((k, k, n, n))  # noqa: N806
        Q[0, 0] = lr * lr * sj * np.eye(n)
        L = LinearOperator((size, size), matvec=lambda v, f=apply: v - f(v), dtype=float)  # noqa: N806
        sol, info = gmres(L, Q.ravel(), rtol=1e-12, atol=0.0, restart=200, maxiter=200)
        if info != 0:
            raise TheoryError(f"the stationary second moment did not converge along direction "
                              f"{j} (GMRES info {info})")
        S = sol.reshape(k, k, n, n)  # noqa: N806
        if form == "diffusion":
            X = sum(pair(d, e, S[d, e]) for d in range(k) for e in range(k))  # noqa: N806
        else:
            X = S[0, 0]  # noqa: N806
        per[j] = float(np.trace(P @ X)) / n
    return DelayedDisagreement(form, float(per.sum()), float((h * per).sum()), per, worst,
                               tau, delays.p)
