"""Links that fail: the mixing matrix of a round in which some edges are down (issue 34).

Each undirected edge of a static, symmetric base graph fails in a round independently with
probability ``p``; the round's weights are recomputed by the base's rule on the surviving graph
(Metropolis: ``w_ij = 1 / (1 + max(d_i, d_j))`` with the surviving degrees; max-degree; then the
lazy ``(I + W) / 2`` when the base is lazy), so every ``W_t`` is symmetric and doubly stochastic,
gossip preserves the average exactly, and ``p = 0`` plays the base's own matrix. A node whose
edges are all down keeps its own value (``w_ii = 1``). The draw of round ``t`` is seeded
(``seed_for(seed, "faults", t)``), so any process that asks for round ``t`` gets the same
matrix. What theory says about such a random schedule (``E[W]``, ``E[WᵀW]`` and the exact
mean-square rate) is :func:`flatlab.theory.link_failure_spectrum`.

    from flatlab.topology import make
    from flatlab.topology.faults import LinkFailures

    faults = LinkFailures(make("ring", 6), p=0.3, seed=0)
    W5 = faults.matrix(5)          # round 5's W (dense float64), the same on every call
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from flatlab.errors import TopologyError
from flatlab.seeds import seed_for
from flatlab.topology.core import Topology
from flatlab.topology.weights import lazy as lazy_matrix
from flatlab.topology.weights import mixing_matrix

__all__ = ["LinkFailures", "NodeChurn", "MessageDrops", "Stragglers", "FAULT_RULES",
           "undirected_edges", "surviving_matrix"]

#: Weight rules recomputed on the surviving graph (both symmetric and doubly stochastic).
FAULT_RULES = ("metropolis", "max-degree")


def undirected_edges(topology: Topology) -> np.ndarray:
    """``[m, 2]`` the edges ``(i, j)``, ``i < j``, of a static symmetric topology."""
    if topology.time_varying or not topology.symmetric or topology.column_stochastic:
        raise TopologyError(f"link failures need a static undirected graph with symmetric "
                            f"weights; {topology.label} is "
                            + ("time-varying" if topology.time_varying else "not symmetric"))
    w = sp.triu(topology.matrix(0, sparse=True), k=1).tocoo()
    keep = w.data > 0
    return np.stack([w.row[keep], w.col[keep]], axis=1).astype(np.int64)


def surviving_matrix(n: int, edges: np.ndarray, alive: np.ndarray, rule: str = "metropolis",
                     *, lazy: bool = False) -> sp.csr_array:
    """The mixing matrix of the graph made of the ``alive`` edges (a boolean per edge)."""
    if rule not in FAULT_RULES:
        raise TopologyError(f"link failures recompute {rule!r} weights; accepted: "
                            f"{', '.join(FAULT_RULES)}")
    up = edges[np.asarray(alive, dtype=bool)]
    rows = np.concatenate([up[:, 0], up[:, 1]])
    cols = np.concatenate([up[:, 1], up[:, 0]])
    adj = sp.csr_array((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n, n))
    w = mixing_matrix(adj, rule, directed=False, name="the surviving graph")
    return lazy_matrix(w) if lazy else w


def _probability(base: object, p: object, what: str, noun: str) -> float:
    """``p`` as a float in ``[0, 1)``, after checking that ``base`` is a Topology."""
    if not isinstance(base, Topology):
        raise TopologyError(f"{what} need a Topology (flatlab.topology.make), got "
                            f"{type(base).__name__}")
    return _unit(p, noun)


def _unit(p: object, noun: str) -> float:
    """``p`` as a float in ``[0, 1)``, or one line naming the ``noun`` it is the probability of."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (
            math.isfinite(float(p)) and 0 <= float(p) < 1):
        raise TopologyError(f"{noun} probability p must be in [0, 1), got {p!r}")
    return float(p)


@dataclass(frozen=True)
class _Faults:
    """What every fault model shares: a base graph, ``p``, the seeded draw of a round.

    A model has ``units`` independent parts, each up with probability ``1 − p`` in a round
    (:meth:`alive`, drawn from ``seed_for(seed, "faults", t)``), and builds the round's
    matrix from which are up (:meth:`round_from`).
    """

    base: Topology
    p: float
    seed: int = 0
    what = "faults"  # the model, in messages ("link failures need ...")
    noun = "fault"  # one event ("link failure probability ...")

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _probability(self.base, self.p, self.what, self.noun))

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.base.n

    @property
    def units(self) -> int:  # pragma: no cover - every model defines it
        raise NotImplementedError

    def alive(self, t: int) -> np.ndarray:
        """Which parts are up in round ``t`` (boolean ``[units]``)."""
        rng = np.random.default_rng(seed_for(self.seed, "faults", int(t)))
        return rng.random(self.units) >= self.p

    def round_from(self, alive: np.ndarray) -> sp.csr_array:  # pragma: no cover
        raise NotImplementedError

    def matrix(self, t: int, *, sparse: bool = False) -> np.ndarray | sp.csr_array:
        """Round ``t``'s mixing matrix."""
        w = self.round_from(self.alive(t))
        return w if sparse else w.toarray()

    #: What every round is (:attr:`Topology.stochastic`): failures that reweight stay doubly
    #: stochastic and symmetric; lost messages leave rows only.
    stochastic = "doubly"

    def topology(self, rounds: int) -> Topology:
        """Rounds ``0 … rounds − 1`` as one time-varying :class:`Topology` of that period.

        What a training run mixes with (``topology.faults`` in a config): every mixer reads a
        Topology, so the simulated and the torch.distributed mixer replay the same faults in
        the same rounds. ``p = 0`` is the base itself. Building costs about 0.4 ms a round for
        16 nodes (1.3 s for 3000 rounds); the dense mixer keeps ``rounds · n²`` numbers.

        Raises:
            TopologyError: ``rounds < 1``, or the rounds' union graph is not connected.
        """
        if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
            raise TopologyError(f"{self.what}: rounds must be an integer >= 1, got {rounds!r}")
        if self.p == 0:
            return self.base
        mats = tuple(self.matrix(t, sparse=True) for t in range(int(rounds)))
        return Topology(name=f"{self.base.name} with {self.what}", rounds=mats,
                        weights=getattr(self, "rule", None) or self.base.weights,
                        lazy=self.base.lazy, symmetric=self.stochastic == "doubly",
                        stochastic=self.stochastic,
                        params={**self.base.params, "faults": self.what, "p": self.p,
                                "fault_seed": self.seed})


@dataclass(frozen=True)
class _Reweighted(_Faults):
    """Faults after which the base's weight rule is recomputed on the edges still up."""

    rule: str | None = None
    edges: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "edges", undirected_edges(self.base))
        rule = self.base.weights if self.rule is None else self.rule
        if rule not in FAULT_RULES:
            raise TopologyError(f"{self.what} recompute the weights on the surviving graph: "
                                f"{rule!r} weights cannot be; accepted: {', '.join(FAULT_RULES)}")
        object.__setattr__(self, "rule", rule)

    def _on_edges(self, up: np.ndarray) -> sp.csr_array:
        return surviving_matrix(self.n, self.edges, up, self.rule, lazy=self.base.lazy)


@dataclass(frozen=True)
class LinkFailures(_Reweighted):
    """A base graph whose edges fail independently with probability ``p`` in each round.

    Attributes:
        base: The static, undirected graph with symmetric weights.
        p: The probability that an edge is down in a round, in ``[0, 1)``.
        seed: Seed of the failures (round ``t`` draws from ``seed_for(seed, "faults", t)``).
        rule: The weight rule recomputed on the surviving graph (default: the base's own,
            ``metropolis`` or ``max-degree``; a lazy base stays lazy).
    """

    what, noun = "link failures", "link failure"

    @property
    def units(self) -> int:
        """The independent parts that fail: the edges."""
        return len(self.edges)

    def round_from(self, alive: np.ndarray) -> sp.csr_array:
        """The mixing matrix when exactly the ``alive`` edges are up."""
        return self._on_edges(alive)


@dataclass(frozen=True)
class NodeChurn(_Reweighted):
    """Each node is offline in a round with probability ``p``, independently.

    An offline node neither computes nor communicates: it keeps its value (``w_ii = 1``) and
    its edges are down; the online nodes mix with the base rule's weights recomputed on the
    graph they induce, so every ``W_t`` stays symmetric and doubly stochastic. (That an offline
    node skips its gradient step too is the training loop's part.)

    Attributes:
        base: The static, undirected graph with symmetric weights.
        p: The probability that a node is offline in a round, in ``[0, 1)``.
        seed: Seed of the churn (round ``t`` from ``seed_for(seed, "faults", t)``).
        rule: The weight rule recomputed on the online graph (default: the base's own).
    """

    what, noun = "node churn", "node churn"

    @property
    def units(self) -> int:
        """The independent parts that fail: the nodes."""
        return self.n

    def offline(self, t: int) -> np.ndarray:
        """Which nodes are offline in round ``t`` (boolean ``[n]``; the same draw as its matrix)."""
        return ~self.alive(t)

    def round_from(self, alive: np.ndarray) -> sp.csr_array:
        """The mixing matrix when exactly the ``alive`` nodes are online."""
        on = np.asarray(alive, dtype=bool)
        return self._on_edges(on[self.edges[:, 0]] & on[self.edges[:, 1]])


@dataclass(frozen=True)
class MessageDrops(_Faults):
    """Each directed message of a round is lost with probability ``p``; someone keeps its weight.

    ``keeper="receiver"`` (the default on a doubly stochastic base): when node ``i`` does not
    receive ``x_j`` it puts the weight ``w_ij`` on its own value (``w_ii ← w_ii + w_ij``,
    ``w_ij ← 0``): each row still sums to one (``W_t`` is row-stochastic, consensus is still
    reached), but a column does not, so the average drifts and the value the nodes agree on is
    random. With the same ``p`` on every message ``E[W_t] = (1 − p) W + p I`` is doubly
    stochastic and the consensus value is unbiased; its variance is
    :func:`flatlab.theory.consensus_value_variance`.

    ``keeper="sender"`` (the default on a push-sum, column-stochastic base): the sender keeps
    the share that was not delivered (``w_jj ← w_jj + w_ij``, ``w_ij ← 0``), so every column
    still sums to one and push-sum (``sgp``) conserves its mass exactly: its de-biased ratio
    still reaches the exact average.

    Attributes:
        base: A static graph: doubly stochastic, or column-stochastic (push-sum weights).
        p: The probability that a message is lost, in ``[0, 1)``.
        seed: Seed of the drops (round ``t`` from ``seed_for(seed, "faults", t)``).
        keeper: ``receiver`` or ``sender`` (default: by the base, as above).
        edges: ``[m, 2]`` the messages ``(i, j)``: ``i`` receives from ``j``.
    """

    what, noun = "message drops", "message drop"
    keeper: str | None = None
    edges: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base.time_varying:
            raise TopologyError(f"message drops need a static graph; {self.base.label} is "
                                "time-varying")
        keeper = self.keeper or ("sender" if self.base.column_stochastic else "receiver")
        if keeper not in ("receiver", "sender"):
            raise TopologyError(f"message drops: keeper {keeper!r} is unknown; accepted: "
                                "receiver, sender")
        if keeper == "receiver" and self.base.column_stochastic:
            raise TopologyError(f"message drops kept by the receiver need a doubly stochastic "
                                f"graph; {self.base.label} is column-stochastic (push-sum: "
                                "keeper sender conserves its mass)")
        object.__setattr__(self, "keeper", keeper)
        w = self.base.matrix(0, sparse=True).tocoo()
        off = (w.row != w.col) & (w.data > 0)
        object.__setattr__(self, "edges", np.stack([w.row[off], w.col[off]], axis=1))

    @property
    def stochastic(self) -> str:  # type: ignore[override]
        """``row`` when the receiver keeps a lost share, ``column`` when the sender does."""
        return "row" if self.keeper == "receiver" else "column"

    @property
    def units(self) -> int:
        """The independent parts that fail: the directed messages."""
        return len(self.edges)

    def delivered(self, t: int) -> np.ndarray:
        """Which messages ``j → i`` (rows of :attr:`edges`, ``(i, j)``) arrive in round ``t``."""
        return self.alive(t)

    def round_from(self, alive: np.ndarray) -> sp.csr_array:
        """The round's matrix when exactly the ``alive`` messages arrive."""
        w = self.base.matrix(0, sparse=True)
        lost = self.edges[~np.asarray(alive, dtype=bool)]
        if not len(lost):  # every message arrived: the base round
            return sp.csr_array(w, copy=True)
        i, j = lost[:, 0], lost[:, 1]
        kept = np.asarray(w[i, j]).ravel()
        k = i if self.keeper == "receiver" else j  # w_kk += w_ij, w_ij -= w_ij
        delta = sp.coo_array((np.concatenate([kept, -kept]),
                              (np.concatenate([k, i]), np.concatenate([k, j]))),
                             shape=w.shape)
        out = sp.csr_array(w + delta)
        out.eliminate_zeros()
        return out


@dataclass(frozen=True)
class Stragglers:
    """Each node misses a step's gradient with probability ``p``, independently (a compute fault).

    A straggler still gossips; its update carries no gradient that step
    (:class:`flatlab.engine.oracle.SkippingOracle`). Round ``t``'s draw is
    ``seed_for(seed, "stragglers", t)``, its own stream, so stragglers compose with any
    network fault without changing its draws.

    Attributes:
        n: Number of nodes.
        p: The probability that a node misses a step's gradient, in ``[0, 1)``.
        seed: Seed of the draws.
    """

    n: int
    p: float
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 1:
            raise TopologyError(f"stragglers need a number of nodes >= 1, got {self.n!r}")
        object.__setattr__(self, "p", _unit(self.p, "straggler"))

    def skips(self, t: int) -> np.ndarray:
        """Which nodes miss step ``t``'s gradient (boolean ``[n]``), the same on every call."""
        rng = np.random.default_rng(seed_for(self.seed, "stragglers", int(t)))
        return rng.random(self.n) < self.p
