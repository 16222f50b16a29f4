"""Communication graphs: who receives from whom, before any weights are chosen.

A :class:`Graph` holds one boolean adjacency per round of its period, with ``A[i, j]`` true when
node ``i`` receives from node ``j`` (``i != j``), so that a mixing matrix built on it has
``w_ij > 0`` exactly there and on the diagonal (row convention ``X <- W X``). Graphs that are
invariant under a group of translations (ring, torus, hypercube, complete, the exponential graphs)
record that group's shape; their mixing matrices are then multi-dimensional circulants and their
spectra come from one FFT (see :mod:`flatlab.theory.spectral`).

Each generator is named after what it makes; the random ones take ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from flatlab.errors import TopologyError

__all__ = [
    "Graph",
    "ring",
    "torus",
    "hypercube",
    "complete",
    "star",
    "path",
    "exponential",
    "exponential_undirected",
    "one_peer_exponential",
    "erdos_renyi",
    "random_regular",
    "social_network",
    "graph_from_adjacency",
    "graph_from_edges",
    "is_power_of_two",
    "torus_shape",
]

MAX_CONNECT_TRIES = 100


@dataclass(frozen=True, eq=False)
class Graph:
    """A (possibly time-varying) communication graph.

    Attributes:
        n: Number of nodes.
        rounds: One boolean ``[n, n]`` CSR adjacency per round of the period; ``A[i, j]`` means
            node ``i`` receives from node ``j``. The diagonal is empty.
        directed: Whether some round is not symmetric.
        group: Shape of a translation group ``Z_{g_1} x ... x Z_{g_k}`` (with ``prod(g) = n``,
            node ``i`` at multi-index ``unravel_index(i, group)``) under which every round is
            invariant, or ``None``.
    """

    n: int
    rounds: tuple[sp.csr_array, ...]
    directed: bool
    group: tuple[int, ...] | None = None


def is_power_of_two(n: int) -> bool:
    """Whether ``n`` is ``2**k`` for some ``k >= 1``."""
    return n >= 2 and (n & (n - 1)) == 0


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise TopologyError(message)


#: Most nodes a generator builds (a sparse graph of this size takes about a second).
MAX_NODES = 1_000_000
#: Most nodes of a generator whose cost grows as ``n^2`` (complete, erdos-renyi): ``n^2`` stored
#: entries or coin flips, about 400 MB and a second at this size.
MAX_DENSE_NODES = 2048


def _check_n(name: str, n: int, minimum: int = 2, maximum: int = MAX_NODES) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TopologyError(f"{name}: the number of nodes must be an integer (got {n!r})")
    n = int(n)
    _require(n >= minimum, f"{name} needs at least {minimum} nodes (got n = {n})")
    _require(n <= maximum, f"{name}: n = {n} is above the limit of {maximum} nodes"
             + (" (its cost grows as n^2)" if maximum < MAX_NODES else "")
             + f"; accepted: {minimum} <= n <= {maximum}")
    return n


def _adjacency(n: int, rows: np.ndarray, cols: np.ndarray) -> sp.csr_array:
    """Boolean CSR adjacency with duplicates merged and self-loops dropped."""
    keep = rows != cols
    data = np.ones(int(keep.sum()), dtype=bool)
    a = sp.coo_array((data, (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    a.sum_duplicates()
    a.data[:] = True
    a.sort_indices()
    return a


def _translations(group: Sequence[int], offsets: Iterable[Sequence[int]]) -> sp.csr_array:
    """Adjacency of node ``i`` receiving from ``i + offset`` (mod ``group``) for each offset."""
    group = tuple(int(g) for g in group)
    n = math.prod(group)
    coords = np.stack(np.unravel_index(np.arange(n), group), axis=1)
    rows, cols = [], []
    for off in offsets:
        shifted = (coords + np.asarray(off)) % np.asarray(group)
        rows.append(np.arange(n))
        cols.append(np.ravel_multi_index(tuple(shifted.T), group))
    if not rows:
        return sp.csr_array((n, n), dtype=bool)
    return _adjacency(n, np.concatenate(rows), np.concatenate(cols))


def _undirected(n: int, edges: np.ndarray) -> sp.csr_array:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    return _adjacency(n, rows, cols)


def _static(n: int, a: sp.csr_array, group: tuple[int, ...] | None = None) -> Graph:
    directed = (a != a.T).nnz > 0
    return Graph(n=n, rounds=(a,), directed=bool(directed), group=group)


# ----------------------------------------------------------------------------------------------
# Deterministic generators


def ring(n: int) -> Graph:
    """Cycle ``C_n``: node ``i`` talks to ``i - 1`` and ``i + 1`` (mod ``n``); needs ``n >= 3``."""
    n = _check_n("ring", n, 3)
    return _static(n, _translations((n,), [(1,), (-1,)]), group=(n,))


def torus_shape(n: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """Resolve the ``rows x cols`` shape of a torus with ``n`` nodes.

    Without ``rows`` and ``cols`` the most nearly square factorisation is used.

    Raises:
        TopologyError: when ``rows * cols != n`` or no factorisation with both sides >= 2 exists.
    """
    if rows is None and cols is None:
        r = max((d for d in range(2, math.isqrt(n) + 1) if n % d == 0), default=None)
        _require(
            r is not None,
            f"torus needs n = rows x cols with rows, cols >= 2; n = {n} has no such factorisation",
        )
        return int(r), n // int(r)
    if rows is None:
        _require(cols > 0 and n % cols == 0, f"torus needs rows x cols = n; {n} is not a multiple "
                 f"of cols = {cols}")
        rows = n // cols
    if cols is None:
        _require(rows > 0 and n % rows == 0, f"torus needs rows x cols = n; {n} is not a multiple "
                 f"of rows = {rows}")
        cols = n // rows
    _require(rows * cols == n, f"torus needs rows x cols = n (got {rows} x {cols} = "
             f"{rows * cols} for n = {n})")
    _require(rows >= 2 and cols >= 2, f"torus needs rows, cols >= 2 (got {rows} x {cols})")
    return int(rows), int(cols)


def torus(n: int, rows: int | None = None, cols: int | None = None) -> Graph:
    """Two-dimensional torus (wrap-around grid) ``rows x cols = n``, degree 4 (3 if a side is 2)."""
    n = _check_n("torus", n, 4)
    r, c = torus_shape(n, rows, cols)
    return _static(n, _translations((r, c), [(1, 0), (-1, 0), (0, 1), (0, -1)]), group=(r, c))


def hypercube(n: int) -> Graph:
    """Hypercube ``Q_d`` with ``n = 2**d`` nodes: neighbours differ in one bit of their index."""
    n = _check_n("hypercube", n)
    _require(is_power_of_two(n), f"hypercube needs n to be a power of two (got n = {n}); "
             "accepted: 2, 4, 8, 16, ...")
    d = n.bit_length() - 1
    group = (2,) * d
    offsets = [tuple(int(k == b) for k in range(d)) for b in range(d)]
    return _static(n, _translations(group, offsets), group=group)


def complete(n: int) -> Graph:
    """Complete graph ``K_n``."""
    n = _check_n("complete", n, maximum=MAX_DENSE_NODES)
    return _static(n, _translations((n,), [(k,) for k in range(1, n)]), group=(n,))


def star(n: int) -> Graph:
    """Star: node 0 is the hub, nodes ``1..n-1`` are leaves."""
    n = _check_n("star", n)
    leaves = np.arange(1, n)
    return _static(n, _undirected(n, np.stack([np.zeros_like(leaves), leaves], axis=1)))


def path(n: int) -> Graph:
    """Path ``0 - 1 - ... - (n-1)``."""
    n = _check_n("path", n)
    i = np.arange(n - 1)
    return _static(n, _undirected(n, np.stack([i, i + 1], axis=1)))


def _exponential_hops(n: int) -> list[int]:
    """Hops ``2**j`` for ``j = 0 .. floor(log2(n - 1))``: there are ``ceil(log2 n)`` of them."""
    return [2**j for j in range((n - 1).bit_length())]


def exponential(n: int) -> Graph:
    """Static exponential graph of Ying et al. (NeurIPS 2021), directed.

    Node ``i`` sends to ``i + 2**j`` (mod ``n``) for ``j = 0 .. ceil(log2 n) - 1``, so it receives
    from ``i - 2**j``. Every node has in- and out-degree ``ceil(log2 n)``.
    """
    n = _check_n("exponential", n)
    return _static(n, _translations((n,), [(-h,) for h in _exponential_hops(n)]), group=(n,))


def exponential_undirected(n: int) -> Graph:
    """Undirected exponential graph: node ``i`` talks to ``i +- 2**j`` (mod ``n``)."""
    n = _check_n("exponential-undirected", n)
    hops = _exponential_hops(n)
    return _static(n, _translations((n,), [(s * h,) for h in hops for s in (1, -1)]), group=(n,))


def one_peer_exponential(n: int, allow_any_n: bool = False) -> Graph:
    """One-peer exponential graph of Ying et al. (NeurIPS 2021), time-varying.

    In round ``t`` node ``i`` sends to the single peer ``i + 2**(t mod tau)`` (mod ``n``), with
    period ``tau = ceil(log2 n)``. For ``n`` a power of two the uniform weights average exactly
    over one period; for other ``n`` they do not, so such ``n`` is refused unless
    ``allow_any_n``.
    """
    n = _check_n("one-peer-exponential", n)
    _require(
        allow_any_n or is_power_of_two(n),
        f"one-peer-exponential needs n to be a power of two for exact averaging (got n = {n}); "
        "accepted: 2, 4, 8, 16, ... (pass allow_any_n=True to build it anyway)",
    )
    rounds = tuple(_translations((n,), [(-h,)]) for h in _exponential_hops(n))
    return Graph(n=n, rounds=rounds, directed=n > 2, group=(n,))


# ----------------------------------------------------------------------------------------------
# Random generators (seeded)


def _connected(g: nx.Graph) -> bool:
    return g.number_of_nodes() > 0 and nx.is_connected(g)


def _from_nx(g: nx.Graph) -> Graph:
    n = g.number_of_nodes()
    edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    return _static(n, _undirected(n, edges))


def _draw_connected(name: str, draw, hint: str, seed: int | None) -> Graph:
    """Draw graphs from ``draw(seed_i)`` with a seeded sequence of seeds until one is connected."""
    rng = np.random.default_rng(seed)
    for _ in range(MAX_CONNECT_TRIES):
        g = draw(int(rng.integers(2**31 - 1)))
        if _connected(g):
            return _from_nx(g)
    raise TopologyError(f"{name}: no connected graph in {MAX_CONNECT_TRIES} draws; {hint}")


def erdos_renyi(n: int, edge_prob: float | None = None, seed: int | None = 0) -> Graph:
    """Connected Erdos-Renyi graph ``G(n, q)``, redrawn (seeded) until connected.

    Args:
        n: Number of nodes.
        edge_prob: Edge probability ``q``; default ``min(1, 2 ln(n) / n)``, twice the
            connectivity threshold.
        seed: Seed of the draw; the same seed gives the same graph.
    """
    n = _check_n("erdos-renyi", n, maximum=MAX_DENSE_NODES)
    q = min(1.0, 2.0 * math.log(n) / n) if edge_prob is None else float(edge_prob)
    _require(0.0 < q <= 1.0, f"erdos-renyi: edge_prob must be in (0, 1] (got {edge_prob})")
    threshold = math.log(n) / n
    return _draw_connected(
        "erdos-renyi",
        lambda s: nx.gnp_random_graph(n, q, seed=s),
        f"raise edge_prob above the connectivity threshold ln(n)/n = {threshold:.3g}",
        seed,
    )


def random_regular(n: int, degree: int = 3, seed: int | None = 0) -> Graph:
    """Connected random ``degree``-regular graph, redrawn (seeded) until connected."""
    n = _check_n("random-regular", n, 3)
    degree = int(degree)
    _require(1 <= degree < n, f"random-regular needs 1 <= degree < n (got degree = {degree}, "
             f"n = {n})")
    _require(n * degree % 2 == 0, f"random-regular needs n x degree even (got {n} x {degree})")
    _require(degree >= 2 or n == 2, "random-regular with degree 1 is a matching, never connected "
             "for n > 2; accepted: degree >= 2")
    return _draw_connected(
        "random-regular",
        lambda s: nx.random_regular_graph(degree, n, seed=s),
        "use degree >= 3",
        seed,
    )


def social_network() -> Graph:
    """The 32-node social network of the QG-DSGDm experiments (Lin et al., ICML 2021).

    It is the Davis Southern Women graph (18 women and the 14 events they attended; bipartite and
    irregular), in networkx's node order.
    """
    g = nx.convert_node_labels_to_integers(nx.davis_southern_women_graph(), ordering="default")
    return _from_nx(g)


# ----------------------------------------------------------------------------------------------
# A user's own graph


def graph_from_adjacency(adjacency) -> Graph:
    """Undirected graph from a square adjacency matrix (any nonzero off-diagonal entry is an edge).

    Raises:
        TopologyError: for a non-square, non-finite or asymmetric matrix.
    """
    a = sp.csr_array(adjacency) if sp.issparse(adjacency) else None
    if a is None:
        dense = np.asarray(adjacency, dtype=float)
        _require(dense.ndim == 2 and dense.shape[0] == dense.shape[1],
                 f"adjacency matrix must be square (got shape {dense.shape})")
        _require(bool(np.isfinite(dense).all()), "adjacency matrix has NaN or infinite entries")
        a = sp.csr_array(dense)
    _require(a.shape[0] == a.shape[1], f"adjacency matrix must be square (got shape {a.shape})")
    n = a.shape[0]
    _check_n("adjacency", n)
    a = a.tocoo()
    rows, cols = a.coords if hasattr(a, "coords") else (a.row, a.col)
    nz = a.data != 0
    adj = _adjacency(n, np.asarray(rows)[nz], np.asarray(cols)[nz])
    asym = adj != adj.T
    if asym.nnz:
        i, j = (int(v[0]) for v in asym.nonzero())
        raise TopologyError(
            f"adjacency matrix must be symmetric (an undirected graph): entry [{i}, {j}] has no "
            "mirror; give a directed mixing matrix itself with from_matrix / matrix:FILE"
        )
    return _static(n, adj)


def graph_from_edges(edges, n: int | None = None, directed: bool = False) -> Graph:
    """Graph from an edge list of integer node pairs ``(i, j)``, nodes ``0..n-1``.

    Args:
        edges: Iterable of pairs, or an array of shape ``[m, 2]``.
        n: Number of nodes; default ``1 + max node index``.
        directed: Read ``(i, j)`` as the arc ``i -> j`` only (node ``j`` receives from ``i``);
            by default the edge goes both ways.
    """
    try:
        e = np.asarray(list(edges) if not isinstance(edges, np.ndarray) else edges)
    except (TypeError, ValueError) as err:
        raise TopologyError(f"edge list must be pairs of node indices ({err})") from None
    if e.size == 0:
        raise TopologyError("edge list is empty; give pairs of node indices i j")
    _require(e.ndim == 2 and e.shape[1] == 2,
             f"edge list must have two columns i j (got shape {e.shape})")
    _require(bool(np.all(np.mod(e, 1) == 0)), "edge list entries must be integer node indices")
    e = e.astype(np.int64)
    _require(int(e.min()) >= 0, f"edge list has a negative node index {int(e.min())}")
    n = int(e.max()) + 1 if n is None else int(n)
    _require(int(e.max()) < n, f"edge list names node {int(e.max())} but n = {n} "
             f"(nodes are 0..{n - 1})")
    _check_n("edge list", n)
    if directed:  # A[j, i]: j receives from i
        return _static(n, _adjacency(n, e[:, 1], e[:, 0]))
    return _static(n, _undirected(n, e))
