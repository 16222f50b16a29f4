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
from typing import Any

import numpy as np
import scipy.sparse as sp

from flatlab.errors import TopologyError
from flatlab.seeds import seed_for
from flatlab.topology.core import Topology
from flatlab.topology.weights import lazy as lazy_matrix
from flatlab.topology.weights import mixing_matrix

__all__ = ["LinkFailures", "NodeChurn", "MessageDrops", "AsyncGossip", "Stragglers",
           "StaleGradients", "MessageDelays", "FAULT_RULES", "undirected_edges", "surviving_matrix"]

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
            TopologyError: ``rounds < 1``. (The base graph was checked connected when it was
                built; the drawn rounds' union is not checked, see :attr:`Topology.drawn`.)
        """
        if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
            raise TopologyError(f"{self.what}: rounds must be an integer >= 1, got {rounds!r}")
        if self.p == 0:
            return self.base
        mats = tuple(self.matrix(t, sparse=True) for t in range(int(rounds)))
        return Topology(name=f"{self.base.name} with {self.what}", rounds=mats,
                        weights=getattr(self, "rule", None) or self.base.weights,
                        lazy=self.base.lazy, symmetric=self.stochastic == "doubly",
                        stochastic=self.stochastic, drawn=True,
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


@dataclass(frozen=True)
class AsyncGossip:
    """Asynchronous pairwise gossip, AD-PSGD's network (Lian et al., ICML 2018; Boyd et al. 2006).

    Every node has a clock of rate one; when node ``i``'s ticks it picks a neighbour ``j``
    uniformly and the two replace their values by their average, atomically:
    ``W_e = I − ½ (e_i − e_j)(e_i − e_j)ᵀ``, a symmetric projection. A round (one unit of time)
    is ``events`` such ticks (default ``n``: each node's clock ticks once on average), each
    initiator drawn uniformly and independently, so the round's matrix is the product
    ``W_t = W_{e_m} ⋯ W_{e_1}``: doubly stochastic (the average is preserved exactly), not
    symmetric, and a node may average several times in a round or not at all. The ticks are
    i.i.d., so what theory needs has closed forms (:func:`flatlab.theory.async_gossip_spectrum`):
    with ``W̄₁ = E[W_e] = I − ½ Σ_e π_e (e_i − e_j)(e_i − e_j)ᵀ`` and
    ``π_{ij} = (1/d_i + 1/d_j)/n``, ``E[W_t] = W̄₁^m``, and ``E[(W_t − J) ⊗ (W_t − J)]`` is the
    ``m``-th power of its one-tick value.

    In a training run every node takes one gradient step per round (on a stale copy of its
    model when ``train.staleness`` is set) and the round's ticks mix: ``X⁺ = W_t X − η G(X̂)``,
    the ``ad-psgd`` algorithm. Applying the round's gradients after its ticks is this
    simulation's one simplification of the event order: in AD-PSGD a node's gradient lands
    after its own average, and later ticks in the same unit of time mix it on. The mixers apply
    the round as one exchange along the non-zeros of ``W_t``, so ``comm_bytes`` counts a
    message per non-zero (information that reached a node through a chain of ticks), not the
    two vectors a tick sends.

    Attributes:
        base: The static undirected graph whose edges the pairs are drawn from (its weights
            are not used: a pair always averages with weights ½).
        events: Ticks per round (default: ``n``).
        seed: Seed of the ticks (round ``t`` from ``seed_for(seed, "faults", t)``).
        p: The probability that a tick's exchange is lost, in ``[0, 1)``: the pair does not
            average (an atomic average either happens or not, so every round stays doubly
            stochastic), ``W̄₁ = (1 − p) Σ_e π_e W_e + p I``.
    """

    base: Topology
    events: int | None = None
    seed: int = 0
    p: float = 0.0
    what = "async gossip"
    noun = "lost tick"
    stochastic = "doubly"
    edges: np.ndarray = field(init=False, repr=False)
    neighbors: tuple[np.ndarray, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base, Topology):
            raise TopologyError(f"async gossip needs a Topology (flatlab.topology.make), got "
                                f"{type(self.base).__name__}")
        edges = undirected_edges(self.base)
        n = self.base.n
        events = n if self.events is None else self.events
        if isinstance(events, bool) or not isinstance(events, numbers.Integral) or events < 1:
            raise TopologyError(f"async gossip: events (ticks per round) must be an integer "
                                f">= 1, got {self.events!r}")
        nbrs = [[] for _ in range(n)]
        for i, j in edges:
            nbrs[i].append(j)
            nbrs[j].append(i)
        if n > 1 and any(not a for a in nbrs):
            lonely = next(i for i, a in enumerate(nbrs) if not a)
            raise TopologyError(f"async gossip: node {lonely} of {self.base.label} has no "
                                "neighbour to average with")
        object.__setattr__(self, "events", int(events))
        object.__setattr__(self, "p", _unit(self.p, "lost tick"))
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "neighbors", tuple(np.asarray(sorted(a), dtype=np.int64)
                                                      for a in nbrs))

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.base.n

    def ticks(self, t: int) -> np.ndarray:
        """Round ``t``'s ticks that averaged, in order: ``[m, 2]`` pairs (initiator, neighbour).

        ``m = events`` unless ticks were lost (``p > 0``); the lost ones are drawn after the
        pairs, so the same seed plays the same pairs whatever ``p``.
        """
        rng = np.random.default_rng(seed_for(self.seed, "faults", int(t)))
        who = rng.integers(0, self.n, self.events)
        pick = rng.random(self.events)
        if self.n == 1:
            return np.zeros((0, 2), dtype=np.int64)
        deg = np.array([len(a) for a in self.neighbors])
        k = np.minimum((pick * deg[who]).astype(np.int64), deg[who] - 1)
        other = np.array([self.neighbors[i][c] for i, c in zip(who, k, strict=True)])
        pairs = np.stack([who, other], axis=1)
        if self.p > 0:
            pairs = pairs[rng.random(self.events) >= self.p]
        return pairs

    def pair_probabilities(self) -> np.ndarray:
        """``π_e`` of each edge (rows of :attr:`edges`): the chance that a tick averages it."""
        deg = np.array([len(a) for a in self.neighbors], dtype=float)
        i, j = self.edges[:, 0], self.edges[:, 1]
        return (1.0 / deg[i] + 1.0 / deg[j]) / self.n

    def matrix(self, t: int, *, sparse: bool = False) -> np.ndarray | sp.csr_array:
        """Round ``t``'s ``W_t = W_{e_m} ⋯ W_{e_1}``."""
        w = np.eye(self.n)
        for i, j in self.ticks(t):
            if i != j:
                w[[i, j]] = (w[i] + w[j]) / 2
        return sp.csr_array(w) if sparse else w

    def topology(self, rounds: int) -> Topology:
        """Rounds ``0 … rounds − 1`` as one time-varying :class:`Topology` of that period."""
        if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
            raise TopologyError(f"{self.what}: rounds must be an integer >= 1, got {rounds!r}")
        mats = tuple(self.matrix(t, sparse=True) for t in range(int(rounds)))
        return Topology(name=f"{self.base.name} with {self.what}", rounds=mats,
                        weights="pairwise", lazy=False, symmetric=False, stochastic="doubly",
                        drawn=True,
                        params={**self.base.params, "faults": self.what,
                                "events": self.events, "p": self.p, "fault_seed": self.seed})


def _check_lateness(model: Any, what: str, late: str, unit: str, *, nodes: int,
                    most: int | None) -> None:
    """Validate (and normalise) ``n``, ``tau``, ``p`` and ``fixed`` of a lateness model.

    The one rule :class:`StaleGradients` and :class:`MessageDelays` share: ``n >= nodes``,
    ``tau`` an integer in ``1 … most``, ``p`` in ``(0, 1]``, ``fixed`` a boolean.
    """
    n, tau, p = model.n, model.tau, model.p
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < nodes:
        raise TopologyError(f"{what} need a number of nodes >= {nodes}, got {n!r}")
    if isinstance(tau, bool) or not isinstance(tau, numbers.Integral) or tau < 1 \
            or (most is not None and tau > most):
        bound = ">= 1" if most is None else f"in 1 … {most}"
        why = "" if most is None else " (the mixer keeps tau + 1 copies of every gossiped quantity)"
        raise TopologyError(f"{what}: tau (the largest delay, in {unit}) must be an integer "
                            f"{bound}, got {tau!r}{why}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (
            math.isfinite(float(p)) and 0 < float(p) <= 1):
        raise TopologyError(f"{what}: p (the probability that {late} is late) must be in "
                            f"(0, 1], got {p!r}")
    if not isinstance(model.fixed, bool):
        raise TopologyError(f"{what}: fixed must be true or false, got {model.fixed!r}")
    object.__setattr__(model, "p", float(p))
    object.__setattr__(model, "tau", int(tau))


@dataclass(frozen=True)
class StaleGradients:
    """Delayed gradients: a node's gradient is taken at the point it held some steps earlier.

    At step ``t`` node ``i`` is late with probability ``p``; a late node's gradient is the one
    it started ``d_{i,t}`` steps earlier, at the point the method then asked the oracle about
    (``d = tau`` when ``fixed``, else uniform on ``1 … tau``); before step 0 the points are the
    starting point. ``G_t = ∇F(X̂_t)`` with ``x̂_{i,t} = x_{i, t − d_{i,t}}`` is the bounded-
    staleness model of asynchronous SGD (AD-PSGD's analysis: Lian et al., ICML 2018, staleness at
    most ``T``). Round ``t``'s draw is ``seed_for(seed, "staleness", t)``, over every node at once,
    so it is the same however the nodes are split over processes.
    (:class:`flatlab.engine.oracle.DelayedGradients` keeps the points and serves the gradients.)

    Attributes:
        n: Number of nodes.
        tau: The largest delay, in steps (an integer >= 1).
        p: The probability that a node's gradient is late at a step, in ``(0, 1]``.
        fixed: Every late gradient is exactly ``tau`` steps old (else uniform on ``1 … tau``).
        seed: Seed of the draws.
    """

    n: int
    tau: int
    p: float = 1.0
    fixed: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_lateness(self, "stale gradients", "a gradient", "steps", nodes=1,
                        most=None)

    def delays(self, t: int) -> np.ndarray:
        """``d_{i,t}`` of every node at step ``t`` (integers ``[n]`` in ``0 … tau``)."""
        rng = np.random.default_rng(seed_for(self.seed, "staleness", int(t)))
        late = rng.random(self.n) < self.p
        d = np.full(self.n, self.tau) if self.fixed else rng.integers(1, self.tau + 1, self.n)
        return np.where(late, d, 0).astype(np.int64)


#: The largest delay :class:`MessageDelays` accepts: the mixer keeps ``tau + 1`` past copies of
#: each gossiped quantity and combines them every round.
MAX_DELAY = 100


@dataclass(frozen=True)
class MessageDelays:
    """Bounded communication delays: a neighbour's value arrives some rounds late.

    In round ``t`` the message on each link ``j → i`` (``w_ij > 0`` in that round, ``j ≠ i``) is
    late with probability ``p``, by ``d_{ij,t}`` rounds (``tau`` when ``fixed``, else uniform
    on ``1 … tau``): the receiver mixes the value ``j`` sent ``d`` rounds earlier,
    ``x_i⁺ = w_ii x_i(t) + Σ_{j≠i} w_ij x_j(t − d_{ij,t})``, and before round 0 the values are
    the starting ones. Own values are never late. The weights stay those of round ``t``, so
    rows still sum to one; the average is no longer preserved (a late value is mixed in place
    of the current one). This is the bounded-delay gossip model of asynchronous decentralized
    SGD (delays at most ``tau``; e.g. Lian et al., ICML 2018; Nedić and Olshevsky's delayed
    consensus). Round ``t``'s draw is ``seed_for(seed, "delays", t)`` over every link at once.
    (:class:`flatlab.comm.DelayedMixer` keeps the past values and mixes them.)

    Attributes:
        n: Number of nodes.
        tau: The largest delay, in rounds (an integer in ``1 … MAX_DELAY``).
        p: The probability that a message is late, in ``(0, 1]``.
        fixed: Every late message is exactly ``tau`` rounds old (else uniform on ``1 … tau``).
        seed: Seed of the draws.
    """

    n: int
    tau: int
    p: float = 1.0
    fixed: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_lateness(self, "message delays", "a message", "rounds", nodes=2,
                        most=MAX_DELAY)

    @property
    def what(self) -> str:
        """The model in words (``"message delays up to 2 rounds, p = 0.5"``)."""
        size = f"of {self.tau}" if self.fixed else f"up to {self.tau}"
        return f"message delays {size} round{'s' if self.tau > 1 else ''}, p = {self.p:g}"

    def delays(self, t: int) -> np.ndarray:
        """``d_{ij,t}`` for every pair at round ``t`` (``[n, n]`` integers in ``0 … tau``).

        Drawn for every ordered pair ``i ≠ j`` at once (the diagonal is 0); only the entries on
        links of round ``t``'s graph are used, so the draw does not depend on the graph.
        """
        rng = np.random.default_rng(seed_for(self.seed, "delays", int(t)))
        late = rng.random((self.n, self.n)) < self.p
        d = (np.full((self.n, self.n), self.tau) if self.fixed
             else rng.integers(1, self.tau + 1, (self.n, self.n)))
        out = np.where(late, d, 0).astype(np.int64)
        np.fill_diagonal(out, 0)
        return out
