"""Asynchronous gossip (AD-PSGD) and stale gradients (issue 34) against independent references.

The references: a tick-by-tick per-node loop (each pair replaced by its average, node vectors
apart), enumeration of every tick sequence, Monte Carlo averages over many rounds, and the
characteristic polynomial of a delayed recurrence (``numpy.roots``).
"""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from flatlab.algorithms import simulate
from flatlab.comm.clock import WallClock
from flatlab.data import heterogeneous_quadratics
from flatlab.errors import ConfigError, FlatlabError, TheoryError
from flatlab.experiment import load_config, run
from flatlab.theory import async_gossip_spectrum, fault_spectrum
from flatlab.topology import make
from flatlab.topology.faults import AsyncGossip, StaleGradients

F64 = torch.finfo(torch.float64).eps


def tick_matrix(n, i, j):
    """``I − ½ (e_i − e_j)(e_i − e_j)ᵀ``, written out."""
    e = np.zeros(n)
    e[i], e[j] = 1.0, -1.0
    return np.eye(n) - 0.5 * np.outer(e, e)


def test_a_round_is_the_product_of_its_ticks_on_the_base_edges_and_keeps_the_average():
    base = make("ring", 8)
    model = AsyncGossip(base, seed=4)
    edges = {tuple(sorted(e)) for e in model.edges.tolist()}
    x = np.random.default_rng(0).normal(size=8)
    mean0 = x.mean()
    for t in range(10_000):
        ticks = model.ticks(t)
        assert ticks.shape == (8, 2) and all(tuple(sorted(p)) in edges for p in ticks.tolist())
        if t < 50:
            want = np.eye(8)
            for i, j in ticks:
                want = tick_matrix(8, i, j) @ want
            W = model.matrix(t)  # noqa: N806
            np.testing.assert_allclose(W, want, rtol=0, atol=4 * F64)
            np.testing.assert_allclose(W.sum(0), 1, rtol=0, atol=8 * F64)
            np.testing.assert_allclose(W.sum(1), 1, rtol=0, atol=8 * F64)
        for i, j in ticks:  # node by node, as the nodes would
            x[i] = x[j] = (x[i] + x[j]) / 2
    assert abs(x.mean() - mean0) < 64 * F64 * np.abs(x).max()
    assert np.ptp(x) < 1e-12  # and they agree
    np.testing.assert_array_equal(model.ticks(7), AsyncGossip(base, seed=4).ticks(7))
    assert not np.array_equal(model.ticks(7), AsyncGossip(base, seed=5).ticks(7))
    # lost ticks: the same pairs drawn, a share p of them left out
    lossy = AsyncGossip(base, seed=4, p=0.4)
    kept = [lossy.ticks(t) for t in range(2000)]
    assert abs(sum(len(k) for k in kept) / (2000 * 8) - 0.6) < 0.02
    for t in range(20):
        full = {tuple(r) for r in model.ticks(t).tolist()}
        assert {tuple(r) for r in kept[t].tolist()} <= full


def test_a_tick_picks_a_uniform_node_then_a_uniform_neighbour():
    model = AsyncGossip(make("star", 5), events=1)
    pi = model.pair_probabilities()  # hub 0 with leaves: (1/4 + 1)/5 each
    np.testing.assert_allclose(pi, 1.25 / 5, rtol=0, atol=F64)
    counts = np.zeros(len(model.edges))
    index = {tuple(sorted(e)): k for k, e in enumerate(model.edges.tolist())}
    rounds = 20_000
    for t in range(rounds):
        counts[index[tuple(sorted(model.ticks(t)[0].tolist()))]] += 1
    se = np.sqrt(pi * (1 - pi) / rounds)
    assert np.all(np.abs(counts / rounds - pi) < 5 * se)


@pytest.mark.parametrize("graph,n,events,p", [("path", 4, 2, 0.0), ("ring", 5, 3, 0.0),
                                              ("star", 4, 2, 0.0), ("ring", 4, 2, 0.3)])
def test_closed_forms_equal_the_sum_over_every_tick_sequence(graph, n, events, p):
    """``E[W] = W̄₁^m``, ``E[WᵀW] = Φ^m(I)`` and the Kronecker map, against enumeration (each
    tick an edge, or lost with probability ``p``: the last outcome below)."""
    model = AsyncGossip(make(graph, n), events=events, p=p)
    pi = np.append((1 - p) * model.pair_probabilities(), p)
    J = np.full((n, n), 1 / n)  # noqa: N806
    mean, second, kron = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n * n, n * n))
    for seq in itertools.product(range(len(pi)), repeat=events):
        W = np.eye(n)  # noqa: N806
        for e in seq:
            if e < len(model.edges):
                W = tick_matrix(n, *model.edges[e]) @ W  # noqa: N806
        w = np.prod(pi[list(seq)])
        mean += w * W
        second += w * W.T @ W
        kron += w * np.kron(W - J, W - J)
    s = async_gossip_spectrum(make(graph, n), events=events, p=p)
    np.testing.assert_allclose(s.mean, mean, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s.second, second, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s.kron, kron, rtol=0, atol=1e-14)
    assert s.mean_square_bound == pytest.approx(np.sort(np.linalg.eigvalsh(second))[-2], abs=1e-13)
    assert s.rate == pytest.approx(np.max(np.abs(np.linalg.eigvals(kron))), abs=1e-12)
    assert s.mean_rate**2 <= s.rate + 1e-12 <= s.mean_square_bound + 2e-12
    assert fault_spectrum(model).as_dict() == s.as_dict()


def test_the_average_over_many_rounds_matches_the_closed_forms():
    model = AsyncGossip(make("ring", 6), seed=3)
    s = async_gossip_spectrum(make("ring", 6))
    rounds = 20_000
    Ws = np.stack([model.matrix(t) for t in range(rounds)])  # noqa: N806
    WW = np.einsum("tki,tkj->tij", Ws, Ws)  # noqa: N806
    for draws, exact in ((Ws, s.mean), (WW, s.second)):
        se = draws.std(0) / np.sqrt(rounds) + 1e-12
        assert np.all(np.abs(draws.mean(0) - exact) < 5 * se)


def test_mean_square_disagreement_contracts_at_the_exact_rate_not_only_the_bound():
    """``E‖e_t‖² = vec(e_0 e_0ᵀ)ᵀ K^t ...``: measured over 4000 independent networks."""
    n, rounds, nets = 6, 4, 4000
    ring = make("ring", n)
    s = async_gossip_spectrum(ring)
    x0 = np.array([3.0, -1.0, 0.5, 2.0, -2.5, 1.0])
    e0 = x0 - x0.mean()
    want = [float(np.trace((np.linalg.matrix_power(s.kron, t) @ np.outer(e0, e0).ravel())
                           .reshape(n, n))) for t in range(rounds + 1)]
    got = np.zeros((nets, rounds + 1))
    for k in range(nets):
        model, x = AsyncGossip(ring, seed=k), x0.copy()
        got[k, 0] = np.sum((x - x.mean()) ** 2)
        for t in range(rounds):
            x = model.matrix(t) @ x
            got[k, t + 1] = np.sum((x - x.mean()) ** 2)
    se = got.std(0) / np.sqrt(nets)
    assert np.all(np.abs(got.mean(0) - want) <= 5 * se + 1e-12)
    assert want[-1] <= s.mean_square_bound**rounds * want[0]  # the bound holds, not tightly


def ad_psgd_loop(model, grad, X0, steps, lr, delays):  # noqa: N803
    """Node by node: each node's gradient at its point ``d`` steps ago; the round's ticks one
    pair at a time; then every node applies its gradient."""
    n = X0.shape[0]
    xs = [X0[i].clone() for i in range(n)]
    past = [[X0[i].clone() for i in range(n)]]  # past[s][i]: node i's point at step s
    out = [torch.stack(xs)]
    for t in range(steps):
        d = delays(t)
        points = torch.stack([past[max(t - int(d[i]), 0)][i] for i in range(n)])
        g = grad(points, t)
        for i, j in model.ticks(t):
            avg = (xs[i] + xs[j]) / 2
            xs[i], xs[j] = avg.clone(), avg.clone()
        xs = [xs[i] - lr * g[i] for i in range(n)]
        past.append([x.clone() for x in xs])
        out.append(torch.stack(xs))
    return torch.stack(out)


@pytest.mark.parametrize("p,fixed", [(1.0, False), (0.5, True)])
def test_ad_psgd_equals_the_tick_by_tick_loop_with_stale_gradients(p, fixed):
    q = heterogeneous_quadratics(8, 3, seed=2)
    model = AsyncGossip(make("ring", 8), seed=9)
    late = StaleGradients(8, tau=3, p=p, fixed=fixed, seed=4)
    X0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    xs = simulate("ad-psgd", model.topology(40), q.grad_fn(), X0, 40, 0.05,
                  staleness=late.delays, tau=3)
    want = ad_psgd_loop(model, q.grad_fn(), X0, 40, 0.05, late.delays)
    torch.testing.assert_close(xs, want, rtol=0, atol=1e-13)
    d = np.stack([late.delays(t) for t in range(2000)])
    assert d.max() == 3
    if fixed:
        assert set(np.unique(d)) == {0, 3} and abs((d > 0).mean() - p) < 0.03
    else:
        assert (d > 0).all() and all(abs((d == k).mean() - 1 / 3) < 0.03 for k in (1, 2, 3))


def test_a_fixed_delay_converges_at_the_root_of_its_characteristic_polynomial():
    """Equal starts on a homogeneous quadratic: ``x_{t+1} = x_t − η μ x_{t−τ}``, whose rate is
    the largest root of ``z^{τ+1} − z^τ + η μ``; without delay ``1 − η μ``."""
    n, mu, eta, tau = 6, 2.0, 0.03, 3
    model = AsyncGossip(make("ring", n), seed=1)
    X0 = torch.ones(n, 2, dtype=torch.float64)  # noqa: N806
    grad = lambda X, t: mu * X  # noqa: E731, N803
    late = StaleGradients(n, tau=tau, fixed=True)
    xs = simulate("ad-psgd", model.topology(400), grad, X0, 400, eta,
                  staleness=late.delays, tau=tau)[:, 0, 0].numpy()
    roots = np.roots([1.0, -1.0] + [0.0] * (tau - 1) + [eta * mu])
    top = roots[np.argmax(np.abs(roots))]
    assert abs(top.imag) < 1e-12  # a real dominant root: the ratio settles on it
    assert xs[400] / xs[399] == pytest.approx(top.real, abs=1e-9)
    assert top.real < 1 - eta * mu  # overdamped: the late, larger gradient overshoots ahead
    fresh = simulate("ad-psgd", model.topology(50), grad, X0, 50, eta)[:, 0, 0].numpy()
    np.testing.assert_allclose(fresh[1:] / fresh[:-1], 1 - eta * mu, rtol=0, atol=1e-13)
    # past 2 sin(π / (2(2τ + 1))) = 0.445 the delayed recurrence is unstable, the fresh one not
    eta = 0.3
    roots = np.abs(np.roots([1.0, -1.0] + [0.0] * (tau - 1) + [eta * mu]))
    xs = simulate("ad-psgd", model.topology(600), grad, X0, 600, eta,
                  staleness=late.delays, tau=tau)[:, 0, 0].numpy()
    assert roots.max() > 1 and abs(xs[-1]) > 1e3 and abs(1 - eta * mu) < 1
    rec = [1.0] * (tau + 1)  # the scalar recurrence, written out
    for _ in range(600):
        rec.append(rec[-1] - eta * mu * rec[-1 - tau])
    np.testing.assert_allclose(xs, rec[tau:], rtol=1e-12, atol=0)
    growth = np.abs(xs[500:]).max() / np.abs(xs[400:500]).max()  # windows of many periods
    assert growth ** (1 / 100) == pytest.approx(roots.max(), rel=5e-3)


def test_zero_delays_are_the_fresh_method_bit_for_bit_and_a_second_oracle_call_is_refused():
    q = heterogeneous_quadratics(6, 2, seed=0)
    X0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # noqa: N806
    for algo in ("diffusion", "diffusion-cta", "gradient-tracking", "sgp"):
        topo = "ring" if algo != "sgp" else make("ring", 6, weights="push-sum")
        fresh = simulate(algo, topo, q.grad_fn(), X0, 20, 0.05)
        zero = simulate(algo, topo, q.grad_fn(), X0, 20, 0.05,
                        staleness=lambda t: np.zeros(6, dtype=np.int64), tau=2)
        assert torch.equal(fresh, zero)
    from flatlab.engine.oracle import DelayedGradients, FunctionOracle

    view = DelayedGradients(lambda t: np.zeros(6, dtype=np.int64), 1).at(
        FunctionOracle(q.grad_fn()), 0)
    view(X0, 0)
    with pytest.raises(FlatlabError, match="asked twice at step 0"):
        view(X0, 0)


def test_models_and_calculators_refuse_bad_input_in_one_line():
    with pytest.raises(FlatlabError, match="events .* integer >= 1, got 0"):
        AsyncGossip(make("ring", 4), events=0)
    with pytest.raises(FlatlabError, match="time-varying"):
        AsyncGossip(make("one-peer-exponential", 8))
    with pytest.raises(TheoryError, match="events"):
        async_gossip_spectrum(make("ring", 4), events=1.5)
    with pytest.raises(FlatlabError, match="tau .* integer >= 1, got 0"):
        StaleGradients(4, tau=0)
    with pytest.raises(FlatlabError, match=r"p .* in \(0, 1\], got 0"):
        StaleGradients(4, tau=2, p=0)
    with pytest.raises(FlatlabError, match="fixed must be true or false"):
        StaleGradients(4, tau=2, fixed="yes")


# --------------------------------------------------------------------------- runs
CFG = {"name": "adpsgd", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "logistic"},
       "topology": {"name": "ring", "nodes": 8, "faults": {"model": "async_gossip"}},
       "algorithm": {"name": "ad-psgd"}, "optim": {"lr": 0.1},
       "train": {"steps": 20, "staleness": {"tau": 3}},
       "measure": {"every": 5, "train_subset": 100, "test_subset": 100, "metrics": ["loss"]},
       "checkpoint_every": 7, "device": "cpu"}


def test_a_resumed_ad_psgd_run_with_stale_gradients_continues_bit_for_bit(tmp_path):
    cfg = load_config(CFG)
    run(cfg, tmp_path / "whole", progress=False)
    run(cfg, tmp_path / "cut", progress=False, stop_after=12)  # checkpoint at 7: past kept
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 7 and ck["stale"]["past"].shape[:2] == (8, 3)
    run(cfg, tmp_path / "cut", progress=False)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["state"]["x"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]["x"]
    assert torch.equal(a, b)
    fresh = load_config(dict(CFG, train={"steps": 20}))
    run(fresh, tmp_path / "fresh", progress=False)
    c = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=True)
    assert not torch.equal(a, c["state"]["x"]) and c["stale"] == {}


def test_an_asynchronous_round_takes_the_nodes_mean_time(tmp_path):
    clock = {"compute": 0.1, "compute_cv": 0.6, "latency": 0.01}
    run(load_config(dict(CFG, clock=clock, seed=3)), tmp_path / "a", progress=False)
    m = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    got = dict(m.loc[m.metric == "sim_time", ["step", "value"]].itertuples(index=False))
    wall = WallClock(8, 0.1, 0.6, 0.01, seed=3)
    assert got[20] == pytest.approx(sum(wall.compute_times(t).mean() + 0.01 for t in range(20)),
                                    rel=1e-12)
    sync = sum(wall.compute_times(t).max() + 0.01 for t in range(20))
    assert got[20] < 0.8 * sync  # the synchronous round waits for its slowest node


@pytest.mark.parametrize("change,match", [
    ({"topology": {"name": "ring", "nodes": 8}}, "ad-psgd: averages with one random neighbour"),
    ({"topology": {"name": "ring", "nodes": 8, "faults": {"model": "async_gossip", "p": 1.0}}},
     r"lost tick probability p must be in \[0, 1\), got 1.0"),
    ({"topology": {"name": "ring", "nodes": 8, "faults": {"model": "async_gossip",
                                                          "events": 0}}}, "events"),
    ({"topology": {"name": "ring", "nodes": 8, "faults": {"model": "link_failures",
                                                          "events": 3}}},
     "only async_gossip has ticks"),
    ({"train": {"steps": 5, "staleness": {"tau": 0}}}, "train.staleness: stale gradients: tau"),
    ({"train": {"steps": 5, "staleness": {"p": 0.5}}}, "train.staleness needs tau"),
    ({"train": {"steps": 5, "staleness": {"tau": 2, "lag": 1}}}, "train.staleness.lag is unknown"),
    ({"train": {"steps": 5, "staleness": 2}}, "train.staleness: 2 is not a mapping"),
    ({"algorithm": {"name": "centralized"}, "topology": {"name": "ring", "nodes": 8}},
     "train.staleness: centralized"),
])
def test_bad_async_settings_are_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(dict(CFG, **change))
    assert "\n" not in str(e.value)


def test_the_command_line_lists_and_computes_async_gossip(capsys):
    from flatlab.cli import main

    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--async-gossip",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    s = async_gossip_spectrum(make("ring", 6))
    assert got["model"] == "async gossip" and got["rate"] == pytest.approx(s.rate, rel=1e-12)
    assert main(["spectral", "--topology", "ring", "--nodes", "6", "--async-gossip", "0"]) == 2
    assert "events (ticks per round) must be an integer >= 1" in capsys.readouterr().err
