"""The :class:`Topology`: a validated, possibly time-varying schedule of mixing matrices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from flatlab.errors import TopologyError

__all__ = ["Topology", "DENSE_LIMIT", "STOCHASTIC_KINDS"]

#: What :attr:`Topology.stochastic` accepts: doubly stochastic, or column-stochastic (push-sum).
STOCHASTIC_KINDS = ("doubly", "column", "row")
#: Largest ``n`` for which :meth:`Topology.matrix` hands out a dense array by default.
DENSE_LIMIT = 16384


def _fmt(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True, eq=False)
class Topology:
    """A schedule of mixing matrices ``W_0, ..., W_{period-1}`` over ``n`` nodes.

    One gossip round at step ``t`` is ``X <- W_t X`` with ``W_t = matrix(t)`` (row convention:
    ``x_i <- sum_j w_ij x_j``), and the schedule repeats with ``period`` (1 when static).
    The matrices are doubly stochastic (``stochastic="doubly"``, what every algorithm but push-sum
    needs) or column-stochastic only (``stochastic="column"``: ``1ᵀ W_t = 1ᵀ``, each node's
    outgoing shares sum to one, so mass ``Σ_i x_i`` is conserved; push-sum's weights, run by
    ``sgp`` only). Construction validates every round and raises
    :class:`~flatlab.errors.TopologyError` with one line naming the problem: ``n < 2``, non-finite
    or negative entries, a column (or, when doubly stochastic, a row) that does not sum to one,
    asymmetry where the weight rule promises symmetry, a graph that is not (strongly) connected
    over one period, or a static matrix that is periodic.

    Build one with :func:`flatlab.topology.make` or the ``from_*`` constructors rather than
    directly.

    Attributes:
        name: What the graph is (``"ring"``, ``"torus"``, ``"custom"``, ...).
        rounds: One float64 CSR matrix per round of the period.
        weights: The weight rule that made the matrices (``"metropolis"``, ``"max-degree"``,
            ``"uniform"``, ``"push-sum"``) or ``"given"`` for a user's matrix.
        lazy: Whether the lazy modifier ``(I + W) / 2`` was applied.
        symmetric: Whether every round is symmetric; when the rule promises it, it is checked.
        group: Shape of a translation group under which every round is invariant (the matrices
            are multi-dimensional circulants), or ``None``. Checked on construction.
        params: The generator's parameters (``rows``, ``cols``, ``seed``, ...), for the record.
        stochastic: ``"doubly"`` (rows and columns sum to one) or ``"column"`` (columns only,
            push-sum); what validation checks and what algorithms ask for
            (:meth:`flatlab.algorithms.Algorithm.check_topology`). A column-stochastic
            topology is never symmetric, and its graph must be strongly connected.
        tol: Tolerance of the row/column-sum and symmetry checks.
        drawn: Whether the rounds are one draw of a fault model over a connected base graph
            (:mod:`flatlab.topology.faults`): connectivity is then the base's, checked when the
            base was built, and the union of the drawn rounds is not checked (over a short run a
            random draw need not connect every node, and a run shortened to try an example
            would be refused for its length).
    """

    name: str
    rounds: tuple[sp.csr_array, ...]
    weights: str = "given"
    lazy: bool = False
    symmetric: bool = True
    group: tuple[int, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    stochastic: str = "doubly"
    tol: float = 1e-9
    drawn: bool = False

    def __post_init__(self) -> None:
        rounds = tuple(sp.csr_array(w, dtype=np.float64) for w in self.rounds)
        object.__setattr__(self, "rounds", rounds)
        object.__setattr__(self, "params", dict(self.params))
        self._validate()

    # -- basic facts ---------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.rounds[0].shape[0]

    @property
    def period(self) -> int:
        """Number of rounds after which the schedule repeats (1 for a static topology)."""
        return len(self.rounds)

    @property
    def time_varying(self) -> bool:
        """Whether the mixing matrix changes from round to round."""
        return self.period > 1

    @property
    def column_stochastic(self) -> bool:
        """Whether the matrices are validated as column-stochastic only (push-sum weights)."""
        return self.stochastic == "column"

    @property
    def row_stochastic(self) -> bool:
        """Whether the matrices are validated as row-stochastic only.

        Rounds that lost messages (:class:`flatlab.topology.faults.MessageDrops`): each node's
        weights still sum to one, the average is not preserved.
        """
        return self.stochastic == "row"

    @property
    def label(self) -> str:
        """Short description such as ``"ring (n=16, metropolis)"``."""
        rule = f"lazy {self.weights}" if self.lazy else self.weights
        return f"{self.name} (n={self.n}, {rule})"

    def __repr__(self) -> str:
        extra = f", period={self.period}" if self.time_varying else ""
        return f"Topology({self.label}{extra})"

    def matrix(self, t: int = 0, *, sparse: bool = False) -> np.ndarray | sp.csr_array:
        """The mixing matrix ``W_t`` used at step ``t`` (taken modulo the period).

        Args:
            t: Step index.
            sparse: Return the CSR matrix instead of a dense float64 array.

        Raises:
            TopologyError: for a dense request above :data:`DENSE_LIMIT` nodes.
        """
        w = self.rounds[int(t) % self.period]
        if sparse:
            return w
        if self.n > DENSE_LIMIT:
            raise TopologyError(
                f"a dense {self.n} x {self.n} mixing matrix is too large; "
                "use matrix(t, sparse=True)"
            )
        return w.toarray()

    def neighbors(self, i: int, t: int = 0) -> np.ndarray:
        """Nodes whose values node ``i`` mixes in at step ``t``: ``{j != i : w_ij > 0}``."""
        w = self.rounds[int(t) % self.period]
        cols = w.indices[w.indptr[i] : w.indptr[i + 1]]
        vals = w.data[w.indptr[i] : w.indptr[i + 1]]
        return np.sort(cols[(cols != i) & (vals > 0)])

    def out_neighbors(self, i: int, t: int = 0) -> np.ndarray:
        """Nodes that mix in node ``i``'s value at step ``t``: ``{j != i : w_ji > 0}``."""
        col = self.rounds[int(t) % self.period][:, [i]].tocoo()
        rows = np.asarray(col.coords[0] if hasattr(col, "coords") else col.row)
        return np.sort(rows[(rows != i) & (col.data > 0)])

    def kernels(self) -> tuple[np.ndarray, ...] | None:
        """Circulant kernels ``K_t`` with ``W_t[i, j] = K_t[(j - i) mod group]``, or ``None``."""
        if self.group is None:
            return None
        return tuple(w[[0], :].toarray().reshape(self.group) for w in self.rounds)

    # -- validation ----------------------------------------------------------------------------

    def _fail(self, t: int, message: str) -> None:
        where = f"{self.name}: W_{t}" if self.time_varying else f"{self.name}: W"
        raise TopologyError(f"{where} {message}")

    def _validate(self) -> None:
        if self.stochastic not in STOCHASTIC_KINDS:
            raise TopologyError(f"{self.name}: stochastic {self.stochastic!r} is not accepted; "
                                f"accepted: {', '.join(STOCHASTIC_KINDS)}")
        if (self.column_stochastic or self.row_stochastic) and self.symmetric:
            # a symmetric column- or row-stochastic matrix is doubly stochastic: say so instead
            raise TopologyError(f"{self.name}: a symmetric {self.stochastic}-stochastic matrix "
                                "is doubly stochastic; build it with stochastic='doubly'")
        if not self.rounds:
            raise TopologyError(f"{self.name}: a topology needs at least one mixing matrix")
        shape = self.rounds[0].shape
        if shape[0] != shape[1]:
            raise TopologyError(f"{self.name}: mixing matrix must be square (got shape {shape})")
        if shape[0] < 2:
            raise TopologyError(f"{self.name}: a topology needs n >= 2 nodes (got n = {shape[0]})")
        for t, w in enumerate(self.rounds):
            if w.shape != shape:
                self._fail(t, f"has shape {w.shape}, unlike W_0's {shape}")
            self._validate_round(t, w)
        if not self.drawn:
            self._validate_connected()
        if self.group is not None:
            self._validate_group()

    def _validate_round(self, t: int, w: sp.csr_array) -> None:
        if not np.isfinite(w.data).all():
            self._fail(t, "has NaN or infinite entries")
        if w.nnz and w.data.min() < 0:
            k = int(np.argmin(w.data))
            i = int(np.searchsorted(w.indptr, k, side="right") - 1)
            self._fail(t, f"has a negative entry W[{i}, {int(w.indices[k])}] = "
                       f"{_fmt(w.data[k])}; mixing weights must be >= 0")
        checks = (((0, "column"),) if self.column_stochastic else ((1, "row"),)
                  if self.row_stochastic else ((1, "row"), (0, "column")))
        for axis, what in checks:
            sums = np.asarray(w.sum(axis=axis)).ravel()
            bad = np.abs(sums - 1.0)
            if bad.max() > self.tol:
                k = int(np.argmax(bad))
                need = ("be column-stochastic (each node's outgoing shares summing to one)"
                        if self.column_stochastic else
                        "be row-stochastic (each node's weights summing to one)"
                        if self.row_stochastic else
                        "be doubly stochastic (rows and columns summing to one)")
                self._fail(t, f"{what} {k} sums to {_fmt(sums[k])}, not 1; a mixing matrix must "
                           f"{need}")
        if self.symmetric:
            diff = abs(w - w.T)
            if diff.nnz and diff.max() > self.tol:
                i, j = (int(v[0]) for v in diff.nonzero())
                rule = f"the {self.weights} rule" if self.weights != "given" else "this topology"
                self._fail(t, f"is not symmetric (W[{i}, {j}] = {_fmt(w[i, j])} but W[{j}, {i}] "
                           f"= {_fmt(w[j, i])}) although {rule} promises symmetric weights")

    def _validate_connected(self) -> None:
        union = sum((abs(w) for w in self.rounds[1:]), start=abs(self.rounds[0]))
        union = sp.csr_array(union)
        union.setdiag(0)
        union.eliminate_zeros()
        directed = not self.symmetric
        k, labels = connected_components(union, directed=directed, connection="strong")
        if k > 1:
            j = int(np.argmax(labels != labels[0]))
            kind = "strongly connected" if directed else "connected"
            over = " over one period" if self.time_varying else ""
            raise TopologyError(
                f"{self.name}: the graph is not {kind}{over} ({k} components; node 0 and node "
                f"{j} never exchange information); gossip cannot reach consensus"
            )
        w = self.rounds[0]
        if not self.time_varying and not (w.diagonal() > 0).any() and _is_periodic(w):
            raise TopologyError(
                f"{self.name}: W is periodic (zero diagonal on a bipartite-like cycle structure), "
                "so W^t never converges to the average; add self-weights or use lazy (I + W)/2"
            )

    def _validate_group(self) -> None:
        group = self.group
        if math.prod(group) != self.n:
            raise TopologyError(f"{self.name}: group shape {group} does not have n = {self.n} "
                                "elements")
        for t, (w, k) in enumerate(zip(self.rounds, self.kernels(), strict=True)):
            coo = w.tocoo()
            rows = np.asarray(coo.coords[0] if hasattr(coo, "coords") else coo.row)
            cols = np.asarray(coo.coords[1] if hasattr(coo, "coords") else coo.col)
            ri = np.stack(np.unravel_index(rows, group))
            ci = np.stack(np.unravel_index(cols, group))
            off = np.ravel_multi_index(tuple((ci - ri) % np.asarray(group)[:, None]), group)
            kflat = k.ravel()
            if w.nnz != self.n * np.count_nonzero(kflat) or not np.allclose(
                coo.data, kflat[off], rtol=0, atol=self.tol
            ):
                self._fail(t, f"is not invariant under translations of the group {group}")


def _is_periodic(w: sp.csr_array) -> bool:
    """Whether the (strongly connected) support of ``w`` has period > 1."""
    import networkx as nx

    g = nx.from_scipy_sparse_array(w, create_using=nx.DiGraph)
    return not nx.is_aperiodic(g)


def as_rounds(matrices: np.ndarray | sp.sparray | Sequence) -> tuple[sp.csr_array, ...]:
    """Normalise one matrix or a sequence of matrices to a tuple of float64 CSR matrices."""
    if sp.issparse(matrices) or (isinstance(matrices, np.ndarray) and matrices.ndim == 2):
        matrices = [matrices]
    out = []
    for m in matrices:
        if sp.issparse(m):
            out.append(sp.csr_array(m, dtype=np.float64))
            continue
        a = np.asarray(m, dtype=np.float64)
        if a.ndim != 2:
            raise TopologyError(f"a mixing matrix must be two-dimensional (got shape {a.shape})")
        out.append(sp.csr_array(a))
    return tuple(out)
