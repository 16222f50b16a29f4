"""Graphs, weight rules and time-varying schedules (numpy/scipy/networkx; no torch).

>>> from flatlab import topology
>>> ring = topology.make("ring", 16)                    # Metropolis-Hastings weights (1/3)
>>> ring.matrix().shape, ring.period
((16, 16), 1)
>>> ope = topology.make("one-peer-exponential", 8)      # time-varying, period log2 n = 3
>>> ope.period
3

Generators (``available()``; ``catalog()`` gives size conditions and parameters):
ring, torus, hypercube, complete, star, path, exponential (directed, Ying et al. 2021),
exponential-undirected, one-peer-exponential (time-varying), erdos-renyi and random-regular
(seeded), social (the 32-node Davis Southern Women graph of the QG-DSGDm experiments).
A user's own graph: :func:`from_adjacency`, :func:`from_edges` (``directed=True`` for arcs),
:func:`from_matrix`, or :func:`load` / ``make("edges:PATH")``, ``make("arcs:PATH")``,
``make("adjacency:PATH")``, ``make("matrix:PATH")``.

Weight rules: ``metropolis`` (default), ``max-degree``, ``uniform`` (regular graphs only), and
``lazy=True`` for ``(I + W) / 2``: doubly stochastic. ``push-sum``: column-stochastic,
``P[j, i] = 1 / (outdeg_i + 1)`` on ``out(i) ∪ {i}``, on any (directed) graph, for push-sum
methods only (``sgp``; ``Topology.stochastic == "column"``):

>>> topology.make("exponential", 8, weights="push-sum").stochastic
'column'
>>> star = topology.from_edges([(0, 1), (0, 2), (1, 0), (2, 1)], directed=True, weights="push-sum")
>>> star.matrix()[:, 0]                                 # node 0 splits its mass over 0, 1, 2
array([0.33333333, 0.33333333, 0.33333333])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from flatlab.errors import TopologyError
from flatlab.topology import graphs
from flatlab.topology.core import DENSE_LIMIT, STOCHASTIC_KINDS, Topology, as_rounds
from flatlab.topology.graphs import Graph
from flatlab.topology.weights import (
    WEIGHT_RULES,
    canonical_rule,
    mixing_matrix,
    stochastic_kind,
)
from flatlab.topology.weights import lazy as lazy_mixing

__all__ = [
    "Topology",
    "Graph",
    "GeneratorInfo",
    "WEIGHT_RULES",
    "STOCHASTIC_KINDS",
    "DENSE_LIMIT",
    "make",
    "periodic",
    "available",
    "catalog",
    "from_graph",
    "from_adjacency",
    "from_edges",
    "from_matrix",
    "load",
    "graphs",
]


@dataclass(frozen=True)
class GeneratorInfo:
    """What a generator makes and what it needs."""

    name: str
    build: Callable[..., Graph]
    size: str
    description: str
    directed: bool = False
    time_varying: bool = False
    random: bool = False
    fixed_n: int | None = None

    @property
    def params(self) -> tuple[str, ...]:
        """Keyword parameters of the generator besides ``n``."""
        sig = inspect.signature(self.build)
        return tuple(p for p in sig.parameters if p != "n")

    @property
    def weight_rules(self) -> tuple[str, ...]:
        """Weight rules the generator accepts (the first is its default)."""
        if self.directed:
            return ("uniform", "push-sum")
        return WEIGHT_RULES


_GENERATORS: dict[str, GeneratorInfo] = {
    g.name: g
    for g in [
        GeneratorInfo("ring", graphs.ring, "n >= 3", "cycle, degree 2"),
        GeneratorInfo("torus", graphs.torus, "n = rows x cols, rows, cols >= 2",
                      "2-D wrap-around grid, degree 4"),
        GeneratorInfo("hypercube", graphs.hypercube, "n a power of two",
                      "neighbours differ in one bit, degree log2 n"),
        GeneratorInfo("complete", graphs.complete, "n >= 2", "every pair connected (W = J)"),
        GeneratorInfo("star", graphs.star, "n >= 2", "hub 0 and n - 1 leaves"),
        GeneratorInfo("path", graphs.path, "n >= 2", "line 0 - 1 - ... - (n-1)"),
        GeneratorInfo("exponential", graphs.exponential, "n >= 2",
                      "directed static exponential, i -> i + 2^j (Ying et al. 2021)",
                      directed=True),
        GeneratorInfo("exponential-undirected", graphs.exponential_undirected, "n >= 2",
                      "i ~ i +- 2^j"),
        GeneratorInfo("one-peer-exponential", graphs.one_peer_exponential,
                      "n a power of two (allow_any_n to relax)",
                      "one peer i + 2^(t mod log2 n) per round, time-varying (Ying et al. 2021)",
                      directed=True, time_varying=True),
        GeneratorInfo("erdos-renyi", graphs.erdos_renyi, "n >= 2",
                      "G(n, edge_prob) redrawn until connected", random=True),
        GeneratorInfo("random-regular", graphs.random_regular, "n >= 3, n x degree even",
                      "random degree-regular graph redrawn until connected", random=True),
        GeneratorInfo("social", graphs.social_network, "n = 32",
                      "Davis Southern Women social network (QG-DSGDm, Lin et al. 2021)",
                      fixed_n=32),
    ]
}
_FILE_KINDS = ("edges", "arcs", "adjacency", "matrix")


def available() -> list[str]:
    """Names accepted by :func:`make` (file specs ``edges:PATH`` etc. come on top)."""
    return list(_GENERATORS)


def catalog() -> list[GeneratorInfo]:
    """Every generator with its size condition, parameters and accepted weight rules."""
    return list(_GENERATORS.values())


def from_graph(
    graph: Graph,
    name: str,
    weights: str | None = None,
    lazy: bool = False,
    params: dict[str, Any] | None = None,
) -> Topology:
    """Topology from a :class:`Graph` and a weight rule (metropolis; uniform if directed).

    ``push-sum`` gives a column-stochastic topology (``stochastic="column"``), never symmetric.
    """
    rule = canonical_rule(weights) if weights is not None else (
        "uniform" if graph.directed else "metropolis"
    )
    kind = stochastic_kind(rule)
    rounds = [mixing_matrix(a, rule, directed=graph.directed, name=name) for a in graph.rounds]
    if lazy:
        rounds = [lazy_mixing(w) for w in rounds]
    return Topology(
        name=name,
        rounds=tuple(rounds),
        weights=rule,
        lazy=lazy,
        symmetric=not graph.directed and kind == "doubly",
        group=graph.group,
        params=params or {},
        stochastic=kind,
    )


def make(
    name: str,
    n: int | None = None,
    *,
    weights: str | None = None,
    lazy: bool = False,
    seed: int | None = None,
    local_steps: int = 1,
    **params: Any,
) -> Topology:
    """Build a topology by name.

    Args:
        name: A name from :func:`available`, or ``"edges:PATH"``, ``"arcs:PATH"`` (directed),
            ``"adjacency:PATH"``, ``"matrix:PATH"`` for a user's graph or mixing matrix in a file
            (see :func:`load`).
        n: Number of nodes (optional for ``social`` and for files, where it is checked).
        weights: Weight rule; default ``metropolis`` (``uniform`` for directed graphs);
            ``push-sum`` for column-stochastic weights (push-sum methods only).
        lazy: Apply ``(I + W) / 2``.
        seed: Seed of the random generators (default 0); ignored by deterministic ones.
        local_steps: Gossip every ``local_steps`` steps, identity between (:func:`periodic`).
        **params: Generator parameters: ``rows``, ``cols`` (torus), ``edge_prob``
            (erdos-renyi), ``degree`` (random-regular), ``allow_any_n`` (one-peer-exponential).

    Raises:
        TopologyError: unknown name, unknown parameter, a failed size condition, or a weight rule
            that does not apply.
    """
    key = str(name).strip().lower().replace("_", "-")
    if ":" in str(name):
        kind, _, path = str(name).partition(":")
        if kind in _FILE_KINDS:
            return periodic(load(path, kind=kind, n=n, weights=weights, lazy=lazy), local_steps)
    if key not in _GENERATORS:
        raise TopologyError(
            f"unknown topology {name!r}; accepted: {', '.join(_GENERATORS)}, or edges:PATH, "
            "arcs:PATH, adjacency:PATH, matrix:PATH"
        )
    info = _GENERATORS[key]
    unknown = sorted(set(params) - set(info.params))
    if unknown:
        accepted = ", ".join(p for p in info.params if p != "seed") or "none"
        raise TopologyError(f"{key} takes no parameter {unknown[0]!r} (accepted: {accepted})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise TopologyError(f"seed {seed!r} is not accepted; accepted: an integer >= 0")
    if info.random and seed is not None:
        params["seed"] = int(seed)
    if info.fixed_n is not None:
        if n is not None and int(n) != info.fixed_n:
            raise TopologyError(f"{key} has exactly {info.fixed_n} nodes (got n = {n})")
        graph = info.build(**params)
    else:
        if n is None:
            raise TopologyError(f"{key} needs the number of nodes n ({info.size})")
        graph = info.build(n, **params)
    record = {k: v for k, v in params.items() if v is not None}
    return periodic(from_graph(graph, key, weights, lazy, record), local_steps)


def periodic(topology: Topology, local_steps: int) -> Topology:
    """Local steps: ``H - 1`` identity rounds, then ``W`` of ``topology`` (``H = local_steps``).

    ``W'_t = W_{⌊t / H⌋}`` when ``(t + 1) mod H == 0``, else ``I``: every node takes ``H`` steps
    and the ``H``-th step's gossip closes the period, so with ``diffusion``
    (``X ← W_t (X − μ G)``) on the complete graph this is Local SGD exactly as Stich (ICLR 2019)
    and Lin, Stich, Patel, Jaggi (ICLR 2020) write it: ``H`` local steps, *then* the average, so
    the nodes agree after steps ``H, 2H, ...`` and a run of a multiple of ``H`` steps ends
    averaged (no round is spent mixing identical nodes at ``t = 0``). A static base gives a
    period of ``H``, a time-varying one ``H`` times its period (its rounds in order, one per
    communication). Rounds of ``I`` send nothing, so traffic is counted on mixing steps only, and
    the spectral summary's period product is ``W``'s own (``I`` contracts nothing), so
    :func:`flatlab.theory.bound` gives DSGD's ``τ``-periodic form (Koloskova et al. 2020,
    docs/reference/theory.md row 2') with ``τ = H``.
    Algorithms whose correctness needs a fixed ``W`` refuse it as any time-varying topology.

    Args:
        topology: The base topology.
        local_steps: ``H >= 1``; 1 returns ``topology`` itself.

    Raises:
        TopologyError: ``local_steps`` is not an integer >= 1.
    """
    if isinstance(local_steps, bool) or not isinstance(local_steps, (int, np.integer)) \
            or local_steps < 1:
        raise TopologyError(f"local_steps {local_steps!r} is not accepted; accepted: an integer "
                            ">= 1 (steps between gossip rounds)")
    H = int(local_steps)  # noqa: N806
    if H == 1:
        return topology
    eye = sp.identity(topology.n, dtype=np.float64, format="csr")
    rounds = tuple(w if h == H - 1 else eye for w in topology.rounds for h in range(H))
    return Topology(name=topology.name, rounds=rounds, weights=topology.weights,
                    lazy=topology.lazy, symmetric=topology.symmetric, group=topology.group,
                    params={**topology.params, "local_steps": H},
                    stochastic=topology.stochastic, tol=topology.tol)


def from_adjacency(adjacency, weights: str | None = None, lazy: bool = False,
                   name: str = "custom") -> Topology:
    """Topology from a symmetric adjacency matrix (nonzero off-diagonal entries are edges)."""
    return from_graph(graphs.graph_from_adjacency(adjacency), name, weights, lazy)


def from_edges(edges, n: int | None = None, weights: str | None = None, lazy: bool = False,
               name: str = "custom", directed: bool = False) -> Topology:
    """Topology from an edge list of node pairs (nodes ``0..n-1``).

    Undirected by default; with ``directed=True`` a pair ``(i, j)`` is the arc ``i -> j`` (node
    ``j`` receives from ``i``), and the weights are ``push-sum`` (the default there) or
    ``uniform`` (in- and out-degrees all equal).
    """
    graph = graphs.graph_from_edges(edges, n, directed=directed)
    if directed and weights is None:
        weights = "push-sum"
    return from_graph(graph, name, weights, lazy)


def from_matrix(matrices, name: str = "custom", lazy: bool = False,
                tol: float = 1e-9, stochastic: str = "doubly") -> Topology:
    """Topology from a mixing matrix, or a sequence of them (one per round of a period).

    The matrices are used as given (rule ``"given"``); they must be nonnegative, doubly
    stochastic to ``tol`` (with ``stochastic="column"``: columns summing to one, for push-sum)
    and (strongly) connected over the period. Symmetry is detected, not required: a directed
    doubly stochastic ``W`` is accepted.
    """
    rounds = as_rounds(matrices)
    if lazy:
        rounds = tuple(lazy_mixing(w) for w in rounds)
    symmetric = all(
        w.shape[0] == w.shape[1] and (abs(w - w.T).max() if (w - w.T).nnz else 0.0) <= tol
        for w in rounds
    )
    if stochastic not in STOCHASTIC_KINDS:
        raise TopologyError(f"stochastic {stochastic!r} is not accepted; accepted: "
                            f"{', '.join(STOCHASTIC_KINDS)}")
    if stochastic == "column" and symmetric:
        stochastic = "doubly"  # a symmetric column-stochastic matrix is doubly stochastic
    return Topology(name=name, rounds=rounds, weights="given", lazy=lazy, symmetric=symmetric,
                    stochastic=stochastic, tol=tol)



def _read_array(path: Path) -> np.ndarray | sp.csr_array:
    """A matrix or edge list from ``.npy``, ``.npz`` (scipy sparse) or text; never unpickles."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            data = sp.csr_array(sp.load_npz(path))
        else:
            with path.open() as fh:
                first = next((ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")),
                             "")
            if not first:
                data = np.empty((0, 0))
            else:
                data = np.loadtxt(path, delimiter="," if "," in first else None, comments="#",
                                  ndmin=2)
    except UnicodeDecodeError:
        raise TopologyError(f"cannot read {path}: it is not text; accepted: .npy, .npz or a text "
                            "file of numbers") from None
    except (OSError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "pickle" in why.lower():
            why = ("it is not a numeric .npy array (reading it would need unpickling, which can "
                   "run code: refused)")
        raise TopologyError(f"cannot read {path}: {why}") from None
    if data.shape[0] == 0 or (data.ndim == 2 and data.shape[1] == 0):
        raise TopologyError(f"{path} holds no numbers; accepted: rows of numbers (whitespace or "
                            "comma separated, # comments), .npy or .npz")
    return data


def load(path: str | Path, kind: str = "matrix", n: int | None = None,
         weights: str | None = None, lazy: bool = False) -> Topology:
    """Topology from a file.

    Args:
        path: ``.npy``, ``.npz`` (scipy sparse) or a text file (whitespace or comma separated,
            ``#`` comments).
        kind: ``"edges"`` (two integer columns ``i j``), ``"arcs"`` (the same, read as directed
            arcs ``i -> j``; ``push-sum`` weights by default), ``"adjacency"`` (a square
            symmetric matrix) or ``"matrix"`` (the mixing matrix ``W`` itself, used as given;
            ``weights="push-sum"`` validates it as column-stochastic instead of doubly).
        n: Expected number of nodes; checked against the file (for edges it may add isolated
            nodes, which then fail the connectivity check).
        weights: Weight rule for ``edges``, ``arcs`` and ``adjacency``.
        lazy: Apply ``(I + W) / 2``.
    """
    if kind not in _FILE_KINDS:
        raise TopologyError(f"unknown file kind {kind!r}; accepted: {', '.join(_FILE_KINDS)}")
    p = Path(path)
    if not p.is_file():
        raise TopologyError(f"{kind} file not found: {p}")
    data = _read_array(p)
    name = p.stem
    if kind in ("edges", "arcs"):
        return from_edges(data, n=n, weights=weights, lazy=lazy, name=name,
                          directed=kind == "arcs")
    if kind == "adjacency":
        topo = from_adjacency(data, weights=weights, lazy=lazy, name=name)
    else:
        column = weights is not None and canonical_rule(weights) == "push-sum"
        if weights is not None and not column:
            raise TopologyError("a mixing matrix file is used as given; drop the weight rule "
                                "(push-sum to validate it as column-stochastic), or give the "
                                "graph as edges:PATH / arcs:PATH / adjacency:PATH")
        topo = from_matrix(data, name=name, lazy=lazy, tol=1e-8,
                           stochastic="column" if column else "doubly")
    if n is not None and topo.n != int(n):
        raise TopologyError(f"{p} has {topo.n} nodes but n = {n} was asked for")
    return topo
