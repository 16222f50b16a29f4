"""Slow, obvious reference implementations: weight rules by loops, closed-form spectra.

Nothing here imports flatlab. Closed forms are those of docs/reference/theory.md §4 (all exact for
the stated weights).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np


def metropolis_loop(g: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings weights, one edge at a time."""
    n = g.number_of_nodes()
    w = np.zeros((n, n))
    for i, j in g.edges():
        w[i, j] = w[j, i] = 1.0 / (1.0 + max(g.degree[i], g.degree[j]))
    for i in range(n):
        w[i, i] = 1.0 - sum(w[i, j] for j in range(n) if j != i)
    return w


def max_degree_loop(g: nx.Graph) -> np.ndarray:
    """Maximum-degree weights, one edge at a time."""
    n = g.number_of_nodes()
    dmax = max(d for _, d in g.degree())
    w = np.zeros((n, n))
    for i, j in g.edges():
        w[i, j] = w[j, i] = 1.0 / (dmax + 1.0)
    for i in range(n):
        w[i, i] = 1.0 - g.degree[i] / (dmax + 1.0)
    return w


def exponential_loop(n: int) -> np.ndarray:
    """Directed static exponential graph (Ying et al.): i sends to i + 2^j, weight 1/(tau+1)."""
    tau = math.ceil(math.log2(n))
    w = np.zeros((n, n))
    for i in range(n):
        w[i, i] = 1.0 / (tau + 1)
        for j in range(tau):
            w[(i + 2**j) % n, i] = 1.0 / (tau + 1)  # receiver (i + 2^j) mixes in x_i
    return w


def one_peer_loop(n: int, t: int) -> np.ndarray:
    """One-peer exponential round t: W_t = (I + P^(2^(t mod tau))) / 2."""
    tau = math.ceil(math.log2(n))
    hop = 2 ** (t % tau)
    w = np.eye(n) / 2
    for i in range(n):
        w[(i + hop) % n, i] += 0.5
    return w


# -- closed forms ----------------------------------------------------------------------------


def ring_eigs(n: int) -> np.ndarray:
    """Ring with 1/3 weights: 1/3 + (2/3) cos(2 pi k / n)."""
    k = np.arange(n)
    return 1 / 3 + (2 / 3) * np.cos(2 * np.pi * k / n)


def torus_eigs(r: int, c: int) -> np.ndarray:
    """Torus r x c (r, c >= 3) with 1/5 weights: (1 + 2cos(2 pi a/r) + 2cos(2 pi b/c)) / 5."""
    a, b = np.meshgrid(np.arange(r), np.arange(c), indexing="ij")
    return ((1 + 2 * np.cos(2 * np.pi * a / r) + 2 * np.cos(2 * np.pi * b / c)) / 5).ravel()


def hypercube_eigs(d: int) -> np.ndarray:
    """Hypercube Q_d with 1/(d+1) weights: (d + 1 - 2k)/(d + 1) with multiplicity C(d, k)."""
    return np.concatenate([np.full(math.comb(d, k), (d + 1 - 2 * k) / (d + 1))
                           for k in range(d + 1)])


def path_eigs(n: int) -> np.ndarray:
    """Path with Metropolis weights (1/3 per edge): 1/3 + (2/3) cos(pi k / n)."""
    k = np.arange(n)
    return 1 / 3 + (2 / 3) * np.cos(np.pi * k / n)


def star_eigs(n: int) -> np.ndarray:
    """Star with Metropolis weights: {1, 1 - 1/n (n - 2 times), 0}."""
    return np.concatenate([[1.0], np.full(n - 2, 1 - 1 / n), [0.0]])


def rho_from_eigs(eigs: np.ndarray) -> float:
    """max |lambda| over all but one copy of the eigenvalue 1."""
    e = np.sort(eigs)[:-1]
    return float(np.max(np.abs(e)))


def exponential_gap_even(n: int) -> float:
    """1 - rho of the directed exponential graph for even n: 2 / (1 + ceil(log2 n))."""
    return 2 / (1 + math.ceil(math.log2(n)))


# -- stationary covariances by brute force ------------------------------------------------------


def stationary_node_variance(rounds: list[np.ndarray], gamma: float, periods: int) -> float:
    """mean_i Var_i of x <- W_t (sqrt(gamma) x + xi), iterating the covariance recursion."""
    n = rounds[0].shape[0]
    s = np.zeros((n, n))
    acc = []
    for _ in range(periods):
        acc = []
        for w in rounds:
            s = w @ (gamma * s + np.eye(n)) @ w.T
            acc.append(np.trace(s) / n)
    return float(np.mean(acc))


def stationary_disagreement_noise_only(w: np.ndarray, lr: float, sigma2: float,
                                       form: str) -> float:
    """Exact E Xi^2 at stationarity of DSGD with zero gradients and isotropic noise.

    ATC: e+ = (W - J)(e - lr xi); DGD: e+ = (W - J) e - lr (I - J) xi. With E||xi_i||^2 = sigma2
    the stationary (1/n) E||e||_F^2 is (lr^2 sigma2 / n) sum_{k>=2} g(lambda_k), with
    g = lambda^2/(1 - lambda^2) (ATC) or 1/(1 - lambda^2) (DGD).
    """
    lam = np.sort(np.linalg.eigvalsh(w))[:-1]
    g = lam**2 / (1 - lam**2) if form == "diffusion" else 1 / (1 - lam**2)
    return float(lr**2 * sigma2 / w.shape[0] * g.sum())


def simulate_disagreement(w: np.ndarray, lr: float, sigma2: float, form: str, d: int,
                          steps: int, burn: int, seed: int = 0) -> float:
    """Monte-Carlo E Xi^2 of DSGD with zero gradients and Gaussian noise, node by node."""
    rng = np.random.default_rng(seed)
    n = w.shape[0]
    x = np.zeros((n, d))
    vals = []
    for t in range(steps):
        xi = rng.standard_normal((n, d)) * math.sqrt(sigma2 / d)
        new = np.zeros_like(x)
        for i in range(n):  # the obvious per-node loop
            for j in range(n):
                if form == "diffusion":
                    new[i] += w[i, j] * (x[j] - lr * xi[j])
                else:
                    new[i] += w[i, j] * x[j]
            if form != "diffusion":
                new[i] -= lr * xi[i]
        x = new
        if t >= burn:
            vals.append(np.sum((x - x.mean(axis=0)) ** 2) / n)
    return float(np.mean(vals))


# -- push-sum (column-stochastic) weights, one arc at a time ------------------------------------


def push_sum_loop(n: int, arcs: list[tuple[int, int]]) -> np.ndarray:
    """P[j, i] = 1/(outdeg_i + 1) for j in out(i) ∪ {i}: node i splits its mass uniformly.

    ``arcs`` are ``(i, j)``: node ``i`` sends to node ``j``.
    """
    out = {i: sorted({j for a, j in arcs if a == i and j != i}) for i in range(n)}
    p = np.zeros((n, n))
    for i in range(n):
        share = 1.0 / (len(out[i]) + 1)
        p[i, i] += share
        for j in out[i]:
            p[j, i] += share
    return p


def exponential_arcs(n: int) -> list[tuple[int, int]]:
    """Directed exponential graph: i sends to i + 2^k mod n, k = 0 .. ceil(log2 n) - 1."""
    return [(i, (i + 2**k) % n) for i in range(n) for k in range(math.ceil(math.log2(n)))]


def one_peer_arcs(n: int, t: int) -> list[tuple[int, int]]:
    """One-peer exponential round t: i sends to i + 2^(t mod log2 n) only."""
    hop = 2 ** (t % math.ceil(math.log2(n)))
    return [(i, (i + hop) % n) for i in range(n)]


def perron_vector(p: np.ndarray) -> np.ndarray:
    """pi with P pi = pi, 1^T pi = 1, by least squares on [P - I; 1^T] pi = [0; 1]."""
    n = p.shape[0]
    a = np.vstack([p - np.eye(n), np.ones((1, n))])
    b = np.concatenate([np.zeros(n), [1.0]])
    return np.linalg.lstsq(a, b, rcond=None)[0]
