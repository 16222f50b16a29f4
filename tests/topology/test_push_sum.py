"""Column-stochastic (push-sum) weights: the rule against a per-arc loop, the kind, validation.

``P[j, i] = 1/(outdeg_i + 1)`` on ``out(i) ∪ {i}`` (Kempe et al. 2003; SGP, Assran et al. 2019)
is compared with tests/reference/mixing.py's loop on the directed exponential graph, every round
of the one-peer exponential graph, an irregular undirected graph and irregular directed graphs;
validation of ``stochastic="column"`` checks columns only, and still refuses negative entries,
columns that do not sum to one and graphs that are not strongly connected, in one line.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from flatlab import topology
from flatlab.errors import FlatlabError, TopologyError
from tests.reference.mixing import exponential_arcs, one_peer_arcs, push_sum_loop

#: an irregular strongly connected digraph: 0 -> 1, 2, 3; 1 -> 2; 2 -> 0; 3 -> 0, 4; 4 -> 1
ARCS = [(0, 1), (0, 2), (0, 3), (1, 2), (2, 0), (3, 0), (3, 4), (4, 1)]


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(TopologyError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value) and isinstance(info.value, FlatlabError)
    return str(info.value)


@pytest.mark.parametrize("n", [5, 8, 16])
def test_push_sum_on_the_exponential_graph_equals_the_loop_and_uniform(n):
    t = topology.make("exponential", n, weights="push-sum")
    assert t.stochastic == "column" and t.column_stochastic and not t.symmetric
    np.testing.assert_array_equal(t.matrix(), push_sum_loop(n, exponential_arcs(n)))
    # in- and out-degrees are all equal: the same matrix as the (doubly stochastic) uniform rule
    np.testing.assert_allclose(t.matrix(), topology.make("exponential", n).matrix(), atol=0)


def test_push_sum_on_the_one_peer_exponential_graph_equals_the_loop_every_round():
    t = topology.make("one-peer-exponential", 16, weights="push-sum")
    assert t.period == 4 and t.stochastic == "column"
    for r in range(8):
        np.testing.assert_array_equal(t.matrix(r), push_sum_loop(16, one_peer_arcs(16, r)))


def test_push_sum_on_irregular_graphs_is_column_but_not_row_stochastic():
    digraph = topology.from_edges(ARCS, directed=True)  # push-sum is the directed default
    assert digraph.weights == "push-sum" and digraph.stochastic == "column"
    np.testing.assert_array_equal(digraph.matrix(), push_sum_loop(5, ARCS))
    star = topology.make("star", 6, weights="push-sum")  # undirected, irregular
    undirected = [(0, j) for j in range(1, 6)] + [(j, 0) for j in range(1, 6)]
    np.testing.assert_array_equal(star.matrix(), push_sum_loop(6, undirected))
    for t in (digraph, star):
        w = t.matrix()
        np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-15)
        assert np.abs(w.sum(axis=1) - 1.0).max() > 0.1  # rows do not: not doubly stochastic
        assert (w.diagonal() > 0).all()


def test_directed_edges_are_arcs_from_the_first_to_the_second_node():
    t = topology.from_edges(ARCS, directed=True)
    p = t.matrix()
    for i, j in ARCS:
        assert p[j, i] > 0  # j receives from i
    assert p[1, 2] == 0 and p[0, 1] == 0  # no arc 2 -> 1, no arc 1 -> 0
    np.testing.assert_array_equal(t.out_neighbors(0), [1, 2, 3])
    np.testing.assert_array_equal(t.neighbors(0), [2, 3])
    assert topology.from_edges(ARCS, directed=True, weights="push").weights == "push-sum"
    assert topology.catalog()[6].name == "exponential"
    assert topology.catalog()[6].weight_rules == ("uniform", "push-sum")


def test_given_column_stochastic_matrices_and_local_steps_keep_the_kind():
    p = push_sum_loop(5, ARCS)
    t = topology.from_matrix(p, stochastic="column")
    assert t.stochastic == "column" and t.weights == "given"
    assert topology.from_matrix([p, np.eye(5)], stochastic="column").period == 2
    local = topology.periodic(t, 3)
    assert local.stochastic == "column" and local.period == 3
    np.testing.assert_array_equal(local.matrix(1), np.eye(5))
    # a symmetric column-stochastic matrix is doubly stochastic, and recorded as such
    ring = topology.make("ring", 6).matrix()
    assert topology.from_matrix(ring, stochastic="column").stochastic == "doubly"


def test_validation_of_column_stochastic_schedules_names_the_problem():
    p = push_sum_loop(5, ARCS)
    # a column-stochastic matrix is refused where doubly stochastic ones are asked for
    assert "row 3 sums to 0.583333" in _err(topology.from_matrix, p)
    bad = p.copy()
    bad[0, 0] += 0.1
    msg = _err(topology.from_matrix, bad, stochastic="column")
    assert "column 0 sums to 1.1" in msg and "column-stochastic" in msg
    neg = p.copy()
    neg[1, 0] = -0.1
    neg[0, 0] = 1.0 - neg[1:, 0].sum()  # the column still sums to one
    assert "negative entry W[1, 0] = -0.1" in _err(topology.from_matrix, neg,
                                                   stochastic="column")
    # 0 -> 1 -> 2 -> 0 and 3 -> 4 -> 0: nothing reaches 3 or 4, not strongly connected
    msg = _err(topology.from_edges, [(0, 1), (1, 2), (2, 0), (3, 4), (4, 0)], directed=True)
    assert "not strongly connected" in msg
    assert "accepted: metropolis, max-degree, uniform, push-sum" in _err(
        topology.make, "ring", 4, weights="pull")
    assert "stochastic 'rows' is not accepted" in _err(topology.from_matrix, p,
                                                        stochastic="rows")
    # a column-stochastic matrix is not row-stochastic (the kind of rounds that lost messages)
    assert "must be row-stochastic (each node's weights summing to one)" in _err(
        topology.from_matrix, p, stochastic="row")
    assert "accepted: uniform, push-sum" in _err(topology.make, "exponential", 8,
                                                 weights="metropolis")


def test_the_sparse_rule_matches_the_loop_on_a_large_random_digraph():
    rng = np.random.default_rng(0)
    n = 300
    arcs = [(i, (i + 1) % n) for i in range(n)]  # a directed cycle keeps it strongly connected
    arcs += [(int(i), int(j)) for i, j in rng.integers(0, n, size=(900, 2)) if i != j]
    t = topology.from_edges(arcs, directed=True)
    assert sp.issparse(t.matrix(sparse=True))
    np.testing.assert_allclose(t.matrix(), push_sum_loop(n, arcs), rtol=0, atol=1e-15)


def test_directed_graphs_and_column_stochastic_matrices_from_files(tmp_path):
    arcs = tmp_path / "arcs.txt"
    np.savetxt(arcs, ARCS, fmt="%d")
    t = topology.make(f"arcs:{arcs}")
    assert t.stochastic == "column" and t.weights == "push-sum" and t.n == 5
    np.testing.assert_array_equal(t.matrix(), push_sum_loop(5, ARCS))
    m = tmp_path / "p.npy"
    np.save(m, push_sum_loop(5, ARCS))
    given = topology.make(f"matrix:{m}", weights="push-sum")
    assert given.stochastic == "column" and given.weights == "given"
    np.testing.assert_array_equal(given.matrix(), t.matrix())
    assert "row 3 sums to" in _err(topology.make, f"matrix:{m}")
    assert "drop the weight rule" in _err(topology.make, f"matrix:{m}", weights="metropolis")
