"""Weight rules: from a graph to a mixing matrix (docs/reference/theory.md §1).

Doubly stochastic rules (rows and columns sum to one; every algorithm runs on them):

* ``metropolis`` (default): ``w_ij = 1 / (1 + max(d_i, d_j))`` per edge, ``w_ii = 1 - sum_j w_ij``;
* ``max-degree``: ``w_ij = 1 / (d_max + 1)``, ``w_ii = 1 - d_i / (d_max + 1)``;
* ``uniform``: ``w_ij = 1 / (d_i + 1)`` on self and neighbours; regular graphs only.

``lazy`` is a modifier on any of them: ``W_lazy = (I + W) / 2``, whose eigenvalues are all >= 0.
Metropolis and maximum degree are doubly stochastic on any undirected graph; uniform weights are
doubly stochastic exactly when every node has the same degree, so irregular graphs are refused.
On a directed graph only uniform weights apply (in-degree = out-degree = constant).

The column-stochastic rule, for push-sum (Kempe, Dobra, Gehrke 2003; Nedić & Olshevsky 2016;
SGP, Assran et al. 2019):

* ``push-sum``: node ``i`` splits its mass uniformly over itself and its out-neighbours,
  ``P[j, i] = 1 / (outdeg_i + 1)`` for ``j`` in ``out(i) ∪ {i}``. Columns sum to one on any
  graph, directed or not; rows do in general not, so only push-sum methods (``sgp``) run on it
  (:attr:`~flatlab.topology.Topology.stochastic` is ``"column"``). On a graph whose in- and
  out-degrees are all equal (the exponential graphs, the ring) it coincides with ``uniform``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from flatlab.errors import TopologyError

__all__ = ["WEIGHT_RULES", "DOUBLY_STOCHASTIC_RULES", "COLUMN_STOCHASTIC_RULES", "canonical_rule",
           "stochastic_kind", "mixing_matrix", "lazy"]

#: Rules whose matrices are doubly stochastic (rows and columns sum to one).
DOUBLY_STOCHASTIC_RULES = ("metropolis", "max-degree", "uniform")
#: Rules whose matrices are column-stochastic only (push-sum).
COLUMN_STOCHASTIC_RULES = ("push-sum",)
WEIGHT_RULES = DOUBLY_STOCHASTIC_RULES + COLUMN_STOCHASTIC_RULES
_ALIASES = {
    "push-sum": "push-sum",
    "push": "push-sum",
    "column-stochastic": "push-sum",
    "metropolis": "metropolis",
    "metropolis-hastings": "metropolis",
    "mh": "metropolis",
    "max-degree": "max-degree",
    "maximum-degree": "max-degree",
    "uniform": "uniform",
}


def canonical_rule(rule: str) -> str:
    """Canonical name of a weight rule (accepts a few aliases, case-insensitive).

    Raises:
        TopologyError: for an unknown rule.
    """
    key = str(rule).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise TopologyError(
            f"unknown weight rule {rule!r}; accepted: {', '.join(WEIGHT_RULES)} "
            "(lazy (I+W)/2 is a separate modifier)"
        )
    return _ALIASES[key]


def stochastic_kind(rule: str) -> str:
    """``"column"`` for a column-stochastic rule (``push-sum``), else ``"doubly"``."""
    return "column" if canonical_rule(rule) in COLUMN_STOCHASTIC_RULES else "doubly"


def _with_diagonal(off: sp.csr_array) -> sp.csr_array:
    """Add the diagonal ``1 - row sum`` to an off-diagonal weight matrix."""
    n = off.shape[0]
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    w = (off + sp.diags_array(diag, shape=(n, n))).tocsr()
    w.sort_indices()
    return w


def mixing_matrix(adjacency: sp.csr_array, rule: str, *, directed: bool, name: str) -> sp.csr_array:
    """Mixing matrix of one round of a graph under a weight rule.

    Args:
        adjacency: Boolean ``[n, n]`` adjacency, ``A[i, j]`` when node ``i`` receives from ``j``.
        rule: A name from :data:`WEIGHT_RULES`.
        directed: Whether the graph is directed (then only ``uniform`` and ``push-sum`` are
            accepted).
        name: Graph name, for error messages.

    Returns:
        The float64 CSR mixing matrix ``W`` with ``X <- W X`` (for ``push-sum``, the
        column-stochastic ``P`` with ``P[j, i]`` the share node ``i`` sends to ``j``).

    Raises:
        TopologyError: when the rule does not apply to this graph.
    """
    rule = canonical_rule(rule)
    a = adjacency.astype(np.float64).tocsr()
    in_deg = np.asarray(a.sum(axis=1)).ravel()
    if directed and rule not in ("uniform", "push-sum"):
        raise TopologyError(
            f"{rule} weights need an undirected graph; {name} is directed (accepted: uniform, "
            "push-sum)"
        )
    if rule == "push-sum":
        # A[j, i]: j receives from i, so column i holds out(i); P = (A + I) D_out^{-1}
        out_deg = np.asarray(a.sum(axis=0)).ravel()
        p = (a + sp.eye_array(a.shape[0], format="csr")) @ sp.diags_array(1.0 / (out_deg + 1.0))
        p = sp.csr_array(p)
        p.sort_indices()
        return p
    if rule == "metropolis":
        rows, cols = a.nonzero()
        vals = 1.0 / (1.0 + np.maximum(in_deg[rows], in_deg[cols]))
        off = sp.csr_array((vals, (rows, cols)), shape=a.shape)
    elif rule == "max-degree":
        off = a / (in_deg.max() + 1.0)
    else:  # uniform
        out_deg = np.asarray(a.sum(axis=0)).ravel()
        if in_deg.min() != in_deg.max() or not np.array_equal(in_deg, out_deg):
            raise TopologyError(
                f"uniform weights need a regular graph; {name} has degrees from "
                f"{int(in_deg.min())} to {int(max(in_deg.max(), out_deg.max()))} "
                "(accepted on irregular graphs: metropolis, max-degree)"
            )
        off = a / (in_deg[0] + 1.0)
    return _with_diagonal(sp.csr_array(off))


def lazy(w: sp.csr_array) -> sp.csr_array:
    """The lazy version ``(I + W) / 2`` of a mixing matrix."""
    n = w.shape[0]
    out = ((w + sp.eye_array(n, format="csr")) * 0.5).tocsr()
    out.sort_indices()
    return out
