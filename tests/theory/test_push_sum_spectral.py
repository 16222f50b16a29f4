"""Spectral summary of column-stochastic (push-sum) schedules, and the calculators that refuse them.

Checked against independent numpy (the Perron vector by least squares, all eigenvalues) and
against what the numbers promise: push-sum's ratios ``x/w`` approach the average at the rate
``slem`` per period, and ``||Pi^k - pi 1^T|| <= rho^k``.
"""

import json

import numpy as np
import pytest

from flatlab import topology
from flatlab.cli import main
from flatlab.errors import TheoryError
from flatlab.theory import (
    bound,
    d2_radius,
    effective_neighbors,
    predicted_consensus_distance,
    spectral,
)
from tests.reference.mixing import perron_vector, push_sum_loop

ARCS = [(0, 1), (0, 2), (0, 3), (1, 2), (2, 0), (3, 0), (3, 4), (4, 1)]


def digraph():
    return topology.from_edges(ARCS, directed=True)


def test_column_summary_against_numpy():
    p = push_sum_loop(5, ARCS)
    pi = perron_vector(p)
    s = spectral(digraph())
    assert s.stochastic == "column" and s.method == "dense"
    assert s.rho == pytest.approx(np.linalg.norm(p - np.outer(pi, np.ones(5)), 2), abs=1e-12)
    mods = np.sort(np.abs(np.linalg.eigvals(p)))
    assert mods[-1] == pytest.approx(1.0, abs=1e-12)
    assert s.slem == pytest.approx(mods[-2], abs=1e-12)
    assert s.perron_min == pytest.approx(5 * pi.min(), abs=1e-12)
    assert s.p is None and s.lambda2 is None and s.lambda_min is None
    assert "column-stochastic" in s.note and "Perron" in s.note
    d = spectral(topology.make("ring", 8))
    assert d.stochastic == "doubly" and d.perron_min == 1.0 and "doubly" in d.note


def test_slem_is_the_rate_of_the_push_sum_ratios_and_rho_bounds_the_product():
    p = push_sum_loop(5, ARCS)
    s = spectral(digraph())
    x = np.random.default_rng(0).standard_normal(5)
    num, w, errs = x.copy(), np.ones(5), []
    for k in range(1, 41):  # push-sum as the equations read
        num, w = p @ num, p @ w
        errs.append(np.abs(num / w - x.mean()).max())
        lim = np.outer(perron_vector(p), np.ones(5))
        assert np.linalg.norm(np.linalg.matrix_power(p, k) - lim, 2) <= s.rho**k + 1e-12
    assert errs[-1] < 1e-7  # the exact average
    rate = (errs[39] / errs[19]) ** (1 / 20)  # before rounding floors it (slem^40 ~ 1e-9)
    assert rate == pytest.approx(s.slem, rel=1e-2)


def test_time_varying_sparse_and_fft_column_summaries():
    ope = spectral(topology.make("one-peer-exponential", 16, weights="push-sum"))
    assert ope.method == "fft" and ope.rho == pytest.approx(0.0, abs=1e-12)  # exact per period
    assert ope.perron_min == 1.0 and ope.mixing_time == 4
    er = topology.make("erdos-renyi", 40, weights="push-sum", seed=1)  # irregular: column only
    dense, sparse = spectral(er, method="dense"), spectral(er, method="sparse")
    for key in ("rho", "slem", "perron_min"):
        assert getattr(sparse, key) == pytest.approx(getattr(dense, key), abs=1e-9)
    p = push_sum_loop(5, ARCS)
    two = topology.from_matrix([p, (np.eye(5) + p) / 2], stochastic="column")
    prod = two.matrix(1) @ two.matrix(0)
    pi = perron_vector(prod)
    s = spectral(two)
    assert s.period == 2 and s.stochastic == "column"
    assert s.rho == pytest.approx(np.linalg.norm(prod - np.outer(pi, np.ones(5)), 2), abs=1e-12)


def test_doubly_stochastic_calculators_refuse_a_column_stochastic_schedule_in_one_line():
    t = digraph()
    calls = [
        lambda: bound("diffusion", topology=t, T=100),
        lambda: bound("diffusion", topology=spectral(t), T=100),
        lambda: predicted_consensus_distance(0.1, topology=t),
        lambda: effective_neighbors(t, 0.9),
        lambda: d2_radius(t),
    ]
    for call in calls:
        with pytest.raises(TheoryError, match="does not apply to the column-stochastic") as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_spectral_says_what_it_reports_and_bounds_refuse(capsys):
    code = main(["spectral", "--topology", "star", "--nodes", "6", "--weights", "push-sum",
                 "--json"])
    out, _ = capsys.readouterr()
    d = json.loads(out)
    assert code == 0 and d["stochastic"] == "column" and d["p"] is None
    assert d["perron_min"] == pytest.approx(6 * perron_vector(
        topology.make("star", 6, weights="push-sum").matrix()).min(), abs=1e-12)
    code = main(["bounds", "--algorithm", "diffusion", "--topology", "star", "--nodes", "6",
                 "--weights", "push-sum"])
    _, err = capsys.readouterr()
    assert code == 2 and "column-stochastic" in err and err.count("\n") == 1
