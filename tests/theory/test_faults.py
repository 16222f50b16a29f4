"""Links that fail i.i.d.: the rounds (flatlab.topology.faults) and their rates (theory.faults).

Independent references: the issue's numbers for a ring of 6 at p = 0.3 (bound 0.631, exact rate
0.584), the closed form of E[W] for Metropolis weights on a ring, a brute-force sum over every
failure pattern written here from the definition, sampled rounds against the exact expectations
within their standard errors, and the average kept to float64 rounding over 10⁴ rounds.
"""

import itertools

import numpy as np
import pytest

from flatlab.errors import TheoryError, TopologyError
from flatlab.theory import link_failure_spectrum, ring_metropolis_mean_weight
from flatlab.topology import make
from flatlab.topology.faults import LinkFailures


def _brute(n, p):
    """E[W], E[WᵀW], E[(W−J)⊗(W−J)] of a Metropolis ring, from the definition."""
    edges = [(i, (i + 1) % n) for i in range(n)]
    J = np.full((n, n), 1 / n)  # noqa: N806
    mean, second, kron = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n * n, n * n))
    for alive in itertools.product((0, 1), repeat=n):
        prob = np.prod([1 - p if a else p for a in alive])
        deg = np.zeros(n)
        for (i, j), a in zip(edges, alive, strict=True):
            deg[[i, j]] += a
        W = np.zeros((n, n))  # noqa: N806
        for (i, j), a in zip(edges, alive, strict=True):
            if a:
                W[i, j] = W[j, i] = 1 / (1 + max(deg[i], deg[j]))
        W += np.diag(1 - W.sum(1))  # noqa: N806
        mean += prob * W
        second += prob * W.T @ W
        kron += prob * np.kron(W - J, W - J)
    return mean, second, kron


def test_a_ring_of_six_at_p_03_has_the_issues_bound_and_exact_rate():
    s = link_failure_spectrum(make("ring", 6), 0.3)
    assert s.method == "exact" and s.samples == 2**6 and s.stderr == 0.0
    assert round(s.mean_square_bound, 3) == 0.631 and round(s.rate, 3) == 0.584
    assert s.mean_rate**2 <= s.rate <= s.mean_square_bound  # Jensen, and the trace bound
    mean, second, kron = _brute(6, 0.3)
    np.testing.assert_allclose(s.mean, mean, atol=1e-15)
    np.testing.assert_allclose(s.second, second, atol=1e-15)
    assert s.rate == pytest.approx(max(abs(np.linalg.eigvals(kron))), rel=1e-12)
    assert s.failure_free == pytest.approx(np.linalg.norm(make("ring", 6).matrix() - 1 / 6, 2) ** 2)


@pytest.mark.parametrize("n", [5, 10])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_expected_metropolis_ring_weight_has_its_closed_form(n, p):
    s = link_failure_spectrum(make("ring", n), p, max_nodes=0)
    w = ring_metropolis_mean_weight(p)
    for i in range(n):
        assert s.mean[i, (i + 1) % n] == pytest.approx(w, rel=1e-12)
        assert s.mean[i, i] == pytest.approx(1 - 2 * w, rel=1e-12)
    assert s.rate is None  # above max_nodes: no n² x n² matrix
    if p == 0.0:
        assert s.mean_square_bound == pytest.approx(s.failure_free, rel=1e-12)


def test_sampled_rounds_agree_with_the_exact_expectations_within_their_errors():
    exact = link_failure_spectrum(make("complete", 5), 0.25)
    sampled = link_failure_spectrum(make("complete", 5), 0.25, method="sampled",
                                     samples=4000, seed=3)
    assert exact.method == "exact" and sampled.method == "sampled"
    assert np.abs(sampled.mean - exact.mean).max() < 5 * sampled.stderr
    assert np.abs(sampled.second - exact.second).max() < 5 * sampled.stderr
    assert sampled.rate == pytest.approx(exact.rate, abs=0.02)


def test_every_round_is_symmetric_doubly_stochastic_replayable_and_keeps_the_average():
    faults = LinkFailures(make("ring", 16), 0.3, seed=7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16)
    mean0 = x.mean()
    down = 0
    for t in range(10_000):
        W = faults.matrix(t, sparse=True)  # noqa: N806
        x = W @ x
        down += int((~faults.alive(t)).sum())
    assert abs(x.mean() - mean0) <= 1e3 * np.finfo(np.float64).eps * np.abs(x).max()
    assert down / (10_000 * 16) == pytest.approx(0.3, abs=0.005)  # each edge down with p
    W = faults.matrix(12)  # noqa: N806
    assert np.allclose(W, W.T) and np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
    assert np.array_equal(LinkFailures(make("ring", 16), 0.3, seed=7).matrix(12), W)
    assert not all(np.array_equal(LinkFailures(make("ring", 16), 0.3, seed=8).matrix(t),
                                  faults.matrix(t)) for t in range(5))
    assert np.array_equal(LinkFailures(make("ring", 16), 0.0).matrix(3), make("ring", 16).matrix())


@pytest.mark.parametrize("call, pattern", [
    (lambda: LinkFailures(make("ring", 6), 1.0), "p must be in \\[0, 1\\)"),
    (lambda: LinkFailures(make("ring", 6), 0.1, rule="uniform"), "accepted: metropolis"),
    (lambda: LinkFailures(make("one-peer-exponential", 8), 0.1), "static undirected"),
    (lambda: link_failure_spectrum(make("ring", 6), -0.1), "p must be in"),
    (lambda: link_failure_spectrum(make("ring", 6), 0.1, method="mc"), "unknown method"),
    (lambda: link_failure_spectrum(make("ring", 30), 0.1, method="exact"), "too many"),
    (lambda: link_failure_spectrum(make("ring", 6), 0.1, method="sampled", samples=1),
     "samples must be"),
])
def test_bad_input_is_one_line(call, pattern):
    with pytest.raises((TheoryError, TopologyError), match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


def test_cli_prints_both_rates_and_refuses_a_bad_probability_in_one_line(capsys):
    import json

    from flatlab.cli import main

    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--link-failures", "0.3",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == link_failure_spectrum(make("ring", 6), 0.3).as_dict()
    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--link-failures", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "mean-square bound" in out and "0.584248" in out and "0.630944" in out
    # --eps and --method belong to a fixed graph's summary: refused beside a fault model
    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--link-failures", "0.3",
                 "--method", "fft"]) == 2
    assert "--method sets the spectral summary of a fixed graph" in capsys.readouterr().err
    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--link-failures", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be in [0, 1)" in err


def _simulate_drops(W, p, x0, rounds, paths, seed):  # noqa: N803
    """Independent vectorized gossip with drops: the receiver keeps a lost message's weight."""
    rng = np.random.default_rng(seed)
    i, j = np.nonzero(W - np.diag(np.diag(W)))
    w = W[i, j]
    x = np.tile(np.asarray(x0, dtype=np.float64), (paths, 1))
    for _ in range(rounds):
        got = rng.random((paths, len(w))) >= p
        new = x * np.diag(W)
        np.add.at(new.T, i, (w * np.where(got, x[:, j], x[:, i])).T)
        x = new
    return x


def test_message_drops_keep_rows_stochastic_and_the_consensus_value_unbiased_with_its_variance():
    from flatlab.theory import consensus_value_variance
    from flatlab.topology.faults import MessageDrops

    base = make("ring", 6)
    W = base.matrix()  # noqa: N806
    drops = MessageDrops(base, 0.3, seed=2)
    for t in range(20):
        Wt = drops.matrix(t)  # noqa: N806
        assert np.allclose(Wt.sum(1), 1) and (Wt >= 0).all()
    assert not np.allclose(drops.matrix(0).sum(0), 1)  # a column loses mass: the average drifts
    x0 = np.arange(6.0)
    pred = consensus_value_variance(base, 0.3, x0)
    np.testing.assert_allclose(pred.mean, 0.7 * W + 0.3 * np.eye(6), atol=1e-15)
    x = _simulate_drops(W, 0.3, x0, rounds=150, paths=20000, seed=0)
    assert np.ptp(x, axis=1).max() < 1e-9  # every path has reached consensus
    c = x.mean(1)
    k = len(c)
    assert abs(c.mean() - x0.mean()) < 4 * c.std() / np.sqrt(k)  # unbiased
    # the sample variance of 20000 draws is within 5% of the truth (4.5 of its standard errors)
    assert c.var(ddof=1) == pytest.approx(pred.variance, rel=0.05)
    assert consensus_value_variance(base, 0.0, x0).variance == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(TheoryError, match="x0 must be 6 finite numbers"):
        consensus_value_variance(base, 0.3, np.ones(5))
    with pytest.raises(TheoryError, match="message drop probability"):
        consensus_value_variance(base, 1.0)


def test_the_simulator_of_the_test_plays_messagedrops_rounds():
    """The vectorized simulation above is the rounds MessageDrops plays (one path, seeded)."""
    from flatlab.topology.faults import MessageDrops

    base = make("ring", 5)
    drops = MessageDrops(base, 0.4, seed=1)
    x = np.arange(5.0)
    for t in range(10):
        W = base.matrix()  # noqa: N806
        got = drops.delivered(t)
        Wt = W.copy()  # noqa: N806
        for (i, j), ok in zip(drops.edges, got, strict=True):
            if not ok:
                Wt[i, i] += Wt[i, j]
                Wt[i, j] = 0
        np.testing.assert_allclose(drops.matrix(t), Wt, atol=1e-15)
        x = Wt @ x
    assert np.isfinite(x).all()


def test_node_churn_against_the_definition_and_its_rounds():
    """Offline nodes keep their value; the online ones mix with Metropolis on what they induce."""
    from flatlab.theory import fault_spectrum
    from flatlab.topology.faults import NodeChurn

    n, p = 5, 0.2
    churn = NodeChurn(make("ring", n), p, seed=4)
    s = fault_spectrum(churn)
    assert s.model == "node churn" and s.method == "exact" and s.samples == 2**n
    J = np.full((n, n), 1 / n)  # noqa: N806
    mean, second, kron = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n * n, n * n))
    for on in itertools.product((0, 1), repeat=n):
        prob = np.prod([1 - p if o else p for o in on])
        up = [(i, (i + 1) % n) for i in range(n) if on[i] and on[(i + 1) % n]]
        deg = np.zeros(n)
        for i, j in up:
            deg[[i, j]] += 1
        W = np.zeros((n, n))  # noqa: N806
        for i, j in up:
            W[i, j] = W[j, i] = 1 / (1 + max(deg[i], deg[j]))
        W += np.diag(1 - W.sum(1))  # noqa: N806
        mean += prob * W
        second += prob * W.T @ W
        kron += prob * np.kron(W - J, W - J)
    np.testing.assert_allclose(s.mean, mean, atol=1e-15)
    np.testing.assert_allclose(s.second, second, atol=1e-15)
    assert s.rate == pytest.approx(max(abs(np.linalg.eigvals(kron))), rel=1e-12)
    for t in range(50):
        on, W = churn.alive(t), churn.matrix(t)  # noqa: N806
        assert np.allclose(W, W.T) and np.allclose(W.sum(1), 1)
        assert all(W[i, i] == 1.0 for i in np.flatnonzero(~on))  # an offline node keeps its value
    with pytest.raises(TopologyError, match="churn probability"):
        NodeChurn(make("ring", n), 1.0)


def test_the_base_rule_and_laziness_are_kept_so_p_zero_plays_the_base_itself():
    from flatlab.theory import consensus_value_variance
    from flatlab.topology.faults import MessageDrops, NodeChurn

    for base in (make("ring", 6, lazy=True),
                 make("erdos-renyi", 8, edge_prob=0.4, seed=1, weights="max-degree")):
        assert np.array_equal(LinkFailures(base, 0.0).matrix(0), base.matrix())
        assert np.array_equal(NodeChurn(base, 0.0).matrix(3), base.matrix())
        s = link_failure_spectrum(base, 0.0, method="sampled")
        assert s.method == "exact" and s.samples == 1  # one pattern: nothing down
        assert s.rate == pytest.approx(s.failure_free, rel=1e-12)
        assert s.mean_square_bound == pytest.approx(s.failure_free, rel=1e-12)
    assert LinkFailures(make("ring", 6), np.float32(0.3)).p == pytest.approx(0.3)
    with pytest.raises(TopologyError, match="need a Topology"):
        LinkFailures("ring", 0.3)
    with pytest.raises(TopologyError, match="need a Topology"):
        MessageDrops("ring", 0.3)
    with pytest.raises(TheoryError, match="finite numbers"):
        consensus_value_variance(make("ring", 5), 0.3, ["a"] * 5)
    with pytest.raises(TheoryError, match="non-finite"):
        consensus_value_variance(make("ring", 5), 0.3, [np.nan] * 5)
    with pytest.raises(TheoryError, match="p must be in"):
        ring_metropolis_mean_weight(1.7)
    with pytest.raises(TheoryError, match="samples must be"):
        link_failure_spectrum(make("ring", 6), 0.3, samples=0)


# ---------------------------------------------------------------------- steady disagreement
@pytest.mark.parametrize("form", ["diffusion", "consensus", "diffusion-cta"])
def test_without_failures_the_prediction_is_the_static_one(form):
    """At p = 0 the second-moment map is (W − J) ⊗ (W − J): the static closed form."""
    from flatlab.theory import stationary_disagreement, stationary_disagreement_under_faults

    base = make("ring", 6)
    got = stationary_disagreement_under_faults(LinkFailures(base, 0.0), 0.1, [0.5, 2.0],
                                               [1.0, 0.3], form=form)
    want = stationary_disagreement(0.1, [0.5, 2.0], [1.0, 0.3], topology=base, form=form)
    assert got.consensus_distance == pytest.approx(want.consensus_distance, rel=1e-10)
    assert got.curvature_disagreement == pytest.approx(want.curvature_disagreement, rel=1e-10)


def test_the_predicted_steady_consensus_distance_is_what_a_run_under_failures_measures():
    """Diffusion on ``f_i = ½ h ‖x‖²`` with gradient noise, links of a ring of 6 down with
    p = 0.3: the time average of Ξ² over 3000 steps (40 independent coordinates) against the
    prediction, within 4 standard errors of batch means (and 8%)."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.theory import stationary_disagreement_under_faults

    n, d, h, lr, s, steps = 6, 40, 0.5, 0.1, 1.0, 3000
    faults = LinkFailures(make("ring", n), 0.3, seed=11)

    def grad(X, t):  # noqa: N803
        gen = torch.Generator().manual_seed(1000 + t)
        return h * X + s ** 0.5 * torch.randn(X.shape, generator=gen, dtype=X.dtype)

    xs = simulate("diffusion", faults.topology(steps), grad, torch.zeros(n, d,
                  dtype=torch.float64), steps, lr)
    xi2 = ((xs - xs.mean(1, keepdim=True)) ** 2).sum((1, 2)) / n
    blocks = xi2[501:].reshape(10, -1).mean(1)  # after a burn-in, 10 blocks of 250 steps
    measured, se = float(blocks.mean()), float(blocks.std() / 10 ** 0.5)
    pred = stationary_disagreement_under_faults(faults, lr, h, s).consensus_distance * d
    assert abs(measured - pred) < 4 * se and abs(measured / pred - 1) < 0.08, (measured, pred, se)
    static = stationary_disagreement_under_faults(LinkFailures(make("ring", n), 0.0), lr, h, s)
    assert pred > 1.2 * static.consensus_distance * d  # failing links: more disagreement


def test_the_steady_disagreement_refuses_what_it_does_not_cover_in_one_line():
    from flatlab.theory import stationary_disagreement_under_faults
    from flatlab.topology.faults import NodeChurn

    with pytest.raises(TheoryError,
                       match="derived for link failures and asynchronous gossip; got NodeChurn"):
        stationary_disagreement_under_faults(NodeChurn(make("ring", 6), 0.2), 0.1, 1.0, 1.0)
    with pytest.raises(TheoryError, match="no stationary regime"):
        stationary_disagreement_under_faults(LinkFailures(make("ring", 6), 0.2), 3.0, 1.0, 1.0)
    with pytest.raises(TheoryError, match="form 'gt' is unknown"):
        stationary_disagreement_under_faults(LinkFailures(make("ring", 6), 0.2), 0.1, 1.0, 1.0,
                                             form="gt")
