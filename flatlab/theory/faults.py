"""What a random mixing schedule contracts: links that fail independently (issue 34).

For i.i.d. random ``W_t`` (doubly stochastic, independent of the iterate, ``J = 11ᵀ/n``), W's own
spectrum no longer sets the rate of gossip ``x_{t+1} = W_t x_t``. With ``e_t = x_t − J x_t``:

* ``E‖e_{t+1}‖² = E[e_tᵀ (W_t − J)ᵀ(W_t − J) e_t] ≤ λ₂(E[W_tᵀ W_t]) E‖e_t‖²``: the **mean-square
  bound**, for any ``n`` (Boyd, Ghosh, Prabhakar, Shah 2006, randomized gossip);
* the second moment ``Σ_t = E[e_t e_tᵀ]`` evolves linearly, ``vec Σ_{t+1} = E[(W_t − J) ⊗ (W_t −
  J)] vec Σ_t``, so the **exact** asymptotic mean-square rate per round is the spectral radius of
  that ``n² × n²`` matrix, at most the bound (its trace contracts by at least ``λ₂``);
* the **mean** ``E[x_t] = E[W]^t x_0`` contracts by ``λ₂(E[W])`` per round, and
  ``λ₂(E[W])² ≤ exact``: averaging the matrix first hides the fluctuations.

On a ring of 6 with Metropolis weights and each link down with probability 0.3: bound 0.631,
exact 0.584, ``λ₂(E[W])² = 0.572``. For Metropolis weights on a ring (every degree 2) ``E[W]`` has
a closed form: an edge is up with probability ``q = 1 − p``, and its weight is ``1/2`` when both
neighbouring edges are down (degrees 1 and 1) and ``1/3`` otherwise, so
``E[w_ij] = q (p²/2 + (1 − p²)/3)`` (:func:`ring_metropolis_mean_weight`).

The expectations are exact, summed over every pattern of failed edges, when there are at most
``max_edges`` edges (``2^m`` patterns); otherwise averages over ``samples`` seeded draws, with
the standard error of each entry. The exact rate needs ``n² × n²`` and is computed for
``n <= max_nodes``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from flatlab.errors import TheoryError
from flatlab.topology.core import Topology
from flatlab.topology.faults import LinkFailures, surviving_matrix

__all__ = ["FaultSpectrum", "link_failure_spectrum", "ring_metropolis_mean_weight"]


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
        mean_rate: ``λ₂(E[W])``, the rate of the expected iterate (``mean_rate² <= rate``).
        failure_free: ``ρ(W − J)²`` of the base graph, the rate without failures.
        method: ``exact`` (every failure pattern) or ``sampled``.
        samples: Patterns summed (``2^m``) or drawn.
        stderr: Largest standard error of an entry of ``E[W]`` or ``E[WᵀW]`` (0 when exact).
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

    def as_dict(self) -> dict:
        """Plain numbers (no matrices), for JSON."""
        return {"topology": self.topology, "p": self.p, "n": self.n, "edges": self.edges,
                "mean_square_bound": self.mean_square_bound, "rate": self.rate,
                "mean_rate": self.mean_rate, "failure_free": self.failure_free,
                "method": self.method, "samples": self.samples, "stderr": self.stderr}


def ring_metropolis_mean_weight(p: float) -> float:
    """``E[w_ij]`` of a ring edge under Metropolis weights when links fail i.i.d. with ``p``."""
    q = 1.0 - p
    return q * (p * p / 2 + (1 - p * p) / 3)


def link_failure_spectrum(topology: Topology, p: float, *, rule: str = "metropolis",
                          method: str = "auto", samples: int = 20000, seed: int = 0,
                          max_edges: int = 16, max_nodes: int = 16) -> FaultSpectrum:
    """``E[W]``, ``E[WᵀW]``, the mean-square bound and the exact rate under link failures.

    Args:
        topology: The static undirected base graph (symmetric weights).
        p: Probability that an edge is down in a round, in ``[0, 1)``.
        rule: Weights recomputed on the surviving graph (``metropolis`` or ``max-degree``).
        method: ``exact`` (every one of the ``2^m`` failure patterns), ``sampled`` (``samples``
            seeded draws, the rounds :class:`~flatlab.topology.faults.LinkFailures` plays), or
            ``auto`` (exact when ``m <= max_edges``).
        samples: Draws for ``sampled``.
        seed: Seed of the draws.
        max_edges: Most edges for ``auto`` to enumerate.
        max_nodes: Most nodes for the exact rate's ``n² × n²`` matrix.

    Raises:
        TheoryError: A bad input, in one line.
    """
    if method not in ("auto", "exact", "sampled"):
        raise TheoryError(f"unknown method {method!r}; accepted: auto, exact, sampled")
    try:
        faults = LinkFailures(topology, p, seed=seed, rule=rule)
    except Exception as e:  # noqa: BLE001 - a TopologyError says what is wrong in one line
        raise TheoryError(str(e)) from None
    n, edges = topology.n, faults.edges
    m = len(edges)
    if method == "auto":
        method = "exact" if m <= max_edges else "sampled"
    if method == "exact" and m > 24:
        raise TheoryError(f"exact enumeration of 2^{m} failure patterns is too many; accepted: "
                          "method='sampled' (or a graph with at most 24 edges)")
    if method == "sampled" and (isinstance(samples, bool) or not isinstance(samples, int)
                                or samples < 2):
        raise TheoryError(f"samples must be an integer >= 2, got {samples!r}")
    J = np.full((n, n), 1.0 / n)  # noqa: N806
    kron = n <= max_nodes
    mean, second = np.zeros((n, n)), np.zeros((n, n))
    mean2, second2 = np.zeros((n, n)), np.zeros((n, n))
    K = np.zeros((n * n, n * n)) if kron else None  # noqa: N806
    if method == "exact":
        patterns = itertools.product((False, True), repeat=m)
        count = 2**m
    else:
        patterns = (faults.alive(t) for t in range(samples))
        count = samples
    for alive in patterns:
        alive = np.asarray(alive, dtype=bool)
        k = int(alive.sum())
        weight = (1 - p) ** k * p ** (m - k) if method == "exact" else 1.0 / count
        W = surviving_matrix(n, edges, alive, rule).toarray()  # noqa: N806
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
    return FaultSpectrum(topology.label, float(p), n, m, mean, second, float(lam[-2]), rate,
                         mean_rate, free, method, count, stderr)

