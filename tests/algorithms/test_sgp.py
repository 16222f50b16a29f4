"""Stochastic Gradient Push (Assran et al. 2019) against what push-sum guarantees, in float64.

- Gossip alone (zero gradients) on an irregular digraph: the ratios z = x/w reach the exact average
  of x^0 while the numerators, plain iteration with the same P, do not (they tend to n pi x̄).
- Mass: Σ_i w_i = n at every step; Σ_i x_i moves by exactly −η Σ_i g_i.
- Constant step on heterogeneous quadratics: the fixed point equals the closed form
  D z = P (D z − η ∇F(z)), D = diag(n pi); the local gradients cancel there, x* is missed by O(η).
- On doubly stochastic topologies w stays 1 and SGP is diffusion (DSGD); with momentum it is
  dsgdm (adapt-then-combine, momentum on the pre-mix iterate), with either weight-decay point.
- Momentum and weight decay as the authors' code takes them (torch.optim.SGD stepping the
  numerator): against the per-node loop (tests/reference/algorithms.py, loop_sgp, one
  torch.optim.SGD per node) to 1e-13 on a static and a time-varying irregular digraph where
  w != 1; the buffers are never mixed (their sums move by local terms only), decay on the
  numerator makes the mass-conserving average decay as in centralized SGD, and the fixed point
  with momentum is SGP's with the step lr / (1 - beta).
- Every other registered algorithm that mixes refuses a column-stochastic topology in one line,
  before anything runs (check_topology, simulate's init, config validation); centralized, which
  never mixes, runs on it and does not depend on it.
The engine-wide comparison with the per-node loops is tests/algorithms/test_against_loop.py.
"""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.algorithms import available, make, simulate
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError, ConfigError
from flatlab.experiment import load_config
from tests.algorithms.test_against_loop import engine_and_loop, topology_of
from tests.reference.mixing import perron_vector, push_sum_loop

F64 = torch.float64
#: an irregular, strongly connected digraph on 8 nodes: arcs i -> j
ARCS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 0), (0, 4), (0, 6),
        (2, 7), (5, 1), (5, 2), (5, 3)]


def digraph():
    return flatlab.topology.from_edges(ARCS, 8, directed=True)


def test_push_sum_gossip_reaches_the_exact_average_where_plain_mixing_is_biased():
    X0 = torch.randn(8, 5, dtype=F64, generator=torch.Generator().manual_seed(0))  # noqa: N806
    xs, state = simulate("sgp", digraph(), lambda X, t: torch.zeros_like(X), X0, steps=400,
                         lr=0.1, return_state=True)
    mean = X0.mean(0)
    assert float((xs[-1] - mean).abs().max()) < 1e-10  # every z_i is the average of x^0
    P = push_sum_loop(8, ARCS)  # noqa: N806
    plain = np.linalg.matrix_power(P, 400) @ X0.numpy()  # x <- P x alone
    np.testing.assert_allclose(state.numerator.numpy(), plain, rtol=0, atol=1e-12)
    pi = perron_vector(P)
    np.testing.assert_allclose(plain, 8 * np.outer(pi, mean.numpy()), rtol=0, atol=1e-10)
    assert np.abs(plain - mean.numpy()).max() > 0.05  # the bias push-sum's weights remove
    np.testing.assert_allclose(state.w.numpy().ravel(), 8 * pi, rtol=0, atol=1e-12)


def recorded_gradients():
    """Noisy gradients of heterogeneous quadratics (8 nodes, d = 4), and the list each call's
    gradients are appended to (what the numerators' sums must move by)."""
    noisy = heterogeneous_quadratics(8, 4, seed=3, dtype=F64).grad_fn(noise=0.5, seed=4)
    seen: list[torch.Tensor] = []

    def grad_fn(X, t):  # noqa: N803
        g = noisy(X, t)
        seen.append(g)
        return g

    return grad_fn, seen


def test_total_weight_is_n_and_the_numerators_move_by_the_summed_gradients():
    grad_fn, seen = recorded_gradients()

    for topo in (digraph(), flatlab.topology.make("one-peer-exponential", 8, weights="push-sum")):
        algo, oracle = make("sgp"), FunctionOracle(grad_fn)
        mixer = SimulatedMixer(topo, device="cpu", dtype=F64)
        state = algo.init(torch.randn(8, 4, dtype=F64), oracle, mixer)
        for t in range(500):
            before = state.numerator.sum(0)
            state = algo.step(state, t, oracle, mixer, 0.05)
            assert abs(float(state.w.sum()) - 8.0) < 1e-12
            expected = before - 0.05 * seen[-1].sum(0)
            assert float((state.numerator.sum(0) - expected).abs().max()) < 1e-12
            assert torch.equal(state.x, state.numerator / state.w)


def closed_form_fixed_point(P, q, lr):  # noqa: N803
    """D z = P (D z − lr H (z − b)), D = diag(n pi), solved as one linear system."""
    n, d = q.n, q.d
    Dk = np.kron(np.diag(n * perron_vector(P)), np.eye(d))  # noqa: N806
    Pk = np.kron(P, np.eye(d))  # noqa: N806
    H = np.zeros((n * d, n * d))  # noqa: N806
    for i in range(n):
        H[i * d:(i + 1) * d, i * d:(i + 1) * d] = q.H[i].numpy()
    b = q.b.numpy().reshape(-1)
    return np.linalg.solve(Dk - Pk @ Dk + lr * Pk @ H, lr * Pk @ H @ b).reshape(n, d)


@pytest.mark.parametrize("lr", [0.1, 0.05])
def test_constant_step_fixed_point_equals_the_closed_form(lr):
    q = heterogeneous_quadratics(8, 3, seed=1, condition=4.0)
    xs = simulate("sgp", digraph(), q.grad_fn(), torch.zeros(8, 3, dtype=F64), steps=4000,
                  lr=lr, stride=4000)
    Z = xs[-1].numpy()  # noqa: N806
    np.testing.assert_allclose(Z, closed_form_fixed_point(push_sum_loop(8, ARCS), q, lr),
                               rtol=0, atol=1e-11)
    # the local gradients at the de-biased models cancel, yet the models miss x* by O(lr)
    assert np.abs(q.grad(torch.as_tensor(Z)).sum(0).numpy()).max() < 1e-11
    miss = np.abs(Z - q.x_star.numpy()).max()
    assert 0.2 * lr < miss < 5 * lr, miss


def test_decaying_step_approaches_the_minimiser():
    """η_t = 0.2 / (1 + t/50): the O(η) bias vanishes and z_i -> x* on the time-varying graph."""
    q = heterogeneous_quadratics(8, 3, seed=2, condition=3.0)
    topo = flatlab.topology.make("one-peer-exponential", 8, weights="push-sum")
    lr = lambda t: 0.2 / (1 + t / 50)  # noqa: E731
    xs = simulate("sgp", topo, q.grad_fn(), torch.zeros(8, 3, dtype=F64), steps=20000, lr=lr,
                  stride=10000)
    err = [float((x - q.x_star).abs().max()) for x in xs]
    assert err[0] > 0.5 and err[-1] < 4 * lr(20000)  # 1.6e-3 against 2.0e-3
    assert err[-1] < 0.6 * err[-2]  # and still shrinking as η_t does


@pytest.mark.parametrize("hp", [{}, {"momentum": 0.9, "nesterov": True,
                                     "weight_decay_on": "numerator"}])
def test_checkpoint_round_trip_continues_bit_for_bit_where_w_is_not_one(hp):
    q = heterogeneous_quadratics(8, 4, seed=7, dtype=F64)
    gf = q.grad_fn(noise=0.1, seed=8)
    algo, oracle = make("sgp", **hp), FunctionOracle(gf, weight_decay=1e-2)
    mixer = SimulatedMixer(digraph(), device="cpu", dtype=F64)
    a = algo.init(torch.randn(8, 4, dtype=F64), oracle, mixer)
    for t in range(10):
        a = algo.step(a, t, oracle, mixer, 0.05)
    assert float((a.w - 1).abs().max()) > 0.1
    b = flatlab.algorithms.load_state(flatlab.algorithms.state_dict(a), a)
    for t in range(10, 20):
        a, b = (algo.step(s, t, oracle, mixer, 0.05) for s in (a, b))
    assert set(flatlab.algorithms.state_dict(a)) == {"__class__", "x", "t", "loss",
                                                      "numerator", "w", "m"}
    assert (a.m is None) == (b.m is None) == (not hp)  # a buffer only with momentum
    for f in ("x", "numerator", "w") + (("m",) if hp else ()):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("topo", ["ring", "one-peer-exponential", "exponential", "torus"])
def test_on_doubly_stochastic_topologies_sgp_is_dsgd(topo):
    q = heterogeneous_quadratics(8, 4, seed=5, dtype=F64)
    T = flatlab.topology.make(topo, 8)  # noqa: N806
    X0 = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    gf = q.grad_fn(noise=0.3, seed=6)
    a, state = simulate("sgp", T, gf, X0, steps=300, lr=0.05, return_state=True)
    b = simulate("dsgd", T, gf, X0, steps=300, lr=0.05)
    assert float((a - b).abs().max()) < 1e-12
    assert float((state.w - 1).abs().max()) < 1e-14
    assert float((a[-1] - a[0]).abs().max()) > 0.1


#: registered methods that take exact network averages and never mix, so any topology will do
NEVER_MIXES = {"centralized"}
OTHERS = [a for a in available() if a != "sgp" and a not in NEVER_MIXES]


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_algorithm_refuses_a_column_stochastic_topology_in_one_line(name):
    topo = flatlab.topology.make("exponential", 8, weights="push-sum")
    with pytest.raises(AlgorithmError, match="column-stochastic") as e:
        make(name).check_topology(topo)
    assert "\n" not in str(e.value) and "sgp" in str(e.value)
    calls = []

    def grad_fn(X, t):  # noqa: N803
        calls.append(t)
        return X

    with pytest.raises(AlgorithmError, match="column-stochastic"):
        simulate(name, topo, grad_fn, torch.zeros(8, 3, dtype=F64), steps=3, lr=0.1,
                 metric_fn=lambda X, t: torch.eye(3, dtype=F64).expand(8, 3, 3))
    assert calls == []  # refused in init, before any step
    cfg = {"topology": {"name": "one-peer-exponential", "nodes": 8, "weights": "push-sum"},
           "algorithm": {"name": name}}
    with pytest.raises(ConfigError, match="config field algorithm: .*column-stochastic") as e:
        load_config(cfg)
    assert "\n" not in str(e.value)


def test_sgp_accepts_the_config_and_refuses_a_round_without_self_weight():
    cfg = load_config({"topology": {"name": "one-peer-exponential", "nodes": 8,
                                    "weights": "push-sum"},
                       "algorithm": {"name": "push-sum"}})
    assert cfg.algorithm.name == "push-sum" and type(make(cfg.algorithm.name)).name == "sgp"
    perm = np.roll(np.eye(3), 1, axis=0)  # node i sends everything to i + 1: P_ii = 0
    topo = flatlab.topology.from_matrix([perm, (np.eye(3) + perm) / 2], stochastic="column")
    with pytest.raises(AlgorithmError, match=r"positive self-weight .* P_0\[0, 0\] = 0") as e:
        make("sgp").check_topology(topo)
    assert "\n" not in str(e.value)
    # the same schedule as doubly stochastic: w stays 1, nothing is divided by zero
    make("sgp").check_topology(flatlab.topology.from_matrix([perm, (np.eye(3) + perm) / 2]))


# -- momentum and weight decay as the authors' code takes them ----------------------------------


def push_sum_weights(topo, steps):
    """w^t = P_{t-1} ... P_0 1 for t = 0 .. steps, in numpy, from the topology's matrices."""
    w = [np.ones(topo.n)]
    for t in range(steps):
        w.append(topo.matrix(t) @ w[-1])
    return np.array(w)


MOMENTA = [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]
DECAYS = [(0.0, "z"), (1e-2, "z"), (1e-2, "numerator")]


@pytest.mark.parametrize("decay", DECAYS, ids=lambda d: f"wd{d[0]:g}-{d[1]}")
@pytest.mark.parametrize("hp", MOMENTA, ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("topo", ["digraph+push-sum", "digraphs+push-sum"])
def test_momentum_and_weight_decay_equal_the_per_node_torch_sgd_loop(topo, hp, decay):
    """float64, 25 steps of an MLP on 8 nodes: the engine against one torch.optim.SGD per node
    stepping its numerator (loop_sgp), on a static and a time-varying irregular digraph."""
    wd, on = decay
    w = push_sum_weights(topology_of(topo, 8), 25)
    assert w.min() < 0.75 and w.max() > 1.45  # far from 1 on both digraphs
    traj, ref, _, _ = engine_and_loop("sgp", topo, "dirichlet", "mlp", F64,
                                      {**hp, "weight_decay_on": on}, weight_decay=wd)
    err = float((traj - ref).abs().max())
    assert err < 1e-13, f"max deviation {err:.3g}"
    assert float((traj[-1] - traj[0]).abs().max()) > 0.1


@pytest.mark.parametrize("hp", [{}, {"momentum": 0.9, "nesterov": True}])
def test_the_two_weight_decay_points_differ_exactly_where_w_is_not_one(hp):
    """Decay at z (default) or at the numerator x = w z: apart where w != 1, equal on a doubly
    stochastic topology (w = 1, x = z) bit for bit."""
    q = heterogeneous_quadratics(8, 4, seed=5, dtype=F64)
    X0 = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1))  # noqa: N806

    def run(topo, on):
        return simulate("sgp", topology_of(topo, 8), q.grad_fn(noise=0.3, seed=6), X0,
                        steps=200, lr=0.05, weight_decay=1e-2, weight_decay_on=on, **hp)

    for topo in ("digraph+push-sum", "digraphs+push-sum"):
        gap = float((run(topo, "z") - run(topo, "numerator")).abs().max())
        assert 1e-5 < gap < 0.1, (topo, gap)
    assert torch.equal(run("ring", "z"), run("ring", "numerator"))


@pytest.mark.parametrize("hp", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}],
                         ids=["sgd", "heavy-ball", "nesterov"])
@pytest.mark.parametrize("on", ["z", "numerator"])
def test_numerator_sums_move_by_local_terms_only(hp, on):
    """Σ_i x_i^{t+1} = Σ_i x_i^t − η Σ_i d_i with Σ_i u_i^{t+1} = β Σ_i u_i^t + Σ_i g_i: the buffers
    are never mixed. With the decay on the numerator Σ_i g_i = Σ_i ∇f_i(z_i) + λ Σ_i x_i, so the
    mass-conserving average decays as in centralized SGD; on z it is λ Σ_i z_i."""
    grad_fn, seen = recorded_gradients()

    beta, nesterov, wd, lr = hp.get("momentum", 0.0), hp.get("nesterov", False), 1e-2, 0.05
    algo, oracle = make("sgp", weight_decay_on=on, **hp), FunctionOracle(grad_fn, weight_decay=wd)
    mixer = SimulatedMixer(flatlab.topology.from_matrix(
        [push_sum_loop(8, ARCS), push_sum_loop(8, [(j, i) for i, j in ARCS])],
        stochastic="column"), device="cpu", dtype=F64)
    state = algo.init(torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(2)),
                      oracle, mixer)
    u = torch.zeros(4, dtype=F64)
    for t in range(300):
        decayed = state.numerator if on == "numerator" else state.x
        sx = state.numerator.sum(0)
        state = algo.step(state, t, oracle, mixer, lr)
        g = seen[-1].sum(0) + wd * decayed.sum(0)
        u = beta * u + g
        d = g + beta * u if nesterov else (u if beta else g)
        assert float((state.numerator.sum(0) - (sx - lr * d)).abs().max()) < 1e-12
        if beta:
            assert float((state.m.sum(0) - u).abs().max()) < 1e-12
    assert float((state.w - 1).abs().max()) > 0.1


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("on", ["z", "numerator"])
@pytest.mark.parametrize("topo", ["ring", "one-peer-exponential", "exponential", "torus"])
def test_on_doubly_stochastic_topologies_sgp_with_momentum_is_dsgdm(topo, on, nesterov):
    """w = 1, so x = z and the decay points coincide: SGP with momentum is DSGDm, the
    adapt-then-combine form with local momentum on the pre-mix iterate, X⁺ = W (X − η D)."""
    q = heterogeneous_quadratics(8, 4, seed=5, dtype=F64)
    T = flatlab.topology.make(topo, 8)  # noqa: N806
    X0 = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    gf = q.grad_fn(noise=0.3, seed=6)
    a = simulate("sgp", T, gf, X0, steps=300, lr=0.05, weight_decay=1e-2, momentum=0.9,
                 nesterov=nesterov, weight_decay_on=on)
    b = simulate("dsgdm", T, gf, X0, steps=300, lr=0.05, weight_decay=1e-2, momentum=0.9,
                 nesterov=nesterov)
    assert float((a - b).abs().max()) < 1e-12
    assert float((a[-1] - a[0]).abs().max()) > 0.1


@pytest.mark.parametrize("nesterov", [False, True])
def test_fixed_point_with_momentum_is_sgps_with_the_step_lr_over_one_minus_beta(nesterov):
    """u = g / (1 − β) at a fixed point, heavy ball and Nesterov alike: D z = P (D z − η' ∇F(z)),
    η' = η / (1 − β), on the irregular digraph."""
    q = heterogeneous_quadratics(8, 3, seed=1, condition=4.0)
    xs = simulate("sgp", digraph(), q.grad_fn(), torch.zeros(8, 3, dtype=F64), steps=4000,
                  lr=0.05, stride=4000, momentum=0.5, nesterov=nesterov)
    np.testing.assert_allclose(xs[-1].numpy(),
                               closed_form_fixed_point(push_sum_loop(8, ARCS), q, 0.1),
                               rtol=0, atol=1e-11)


@pytest.mark.parametrize("hp,pattern", [
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
    ({"momentum": -0.1}, r"momentum must be in \[0, 1\), got -0.1"),
    ({"nesterov": True}, "nesterov needs momentum > 0"),
    ({"weight_decay_on": "x"}, "weight_decay_on must be one of z, numerator, got 'x'"),
    ({"weight_decay_on": 1}, "hyper-parameter weight_decay_on = 1 is not accepted"),
])
def test_bad_hyper_parameters_are_refused_in_one_line(hp, pattern):
    with pytest.raises(AlgorithmError, match=f"^sgp: {pattern}") as e:
        make("sgp", **hp)
    assert "\n" not in str(e.value)
    cfg = {"topology": {"name": "one-peer-exponential", "nodes": 8, "weights": "push-sum"},
           "algorithm": {"name": "sgp", "params": hp}}
    with pytest.raises(ConfigError, match="config field algorithm") as e:
        load_config(cfg)
    assert "\n" not in str(e.value)


def test_numerator_decay_needs_an_oracle_that_states_its_decay():
    mixer = SimulatedMixer(digraph(), device="cpu", dtype=F64)

    def bare(X, batch):  # noqa: N803
        return None, X

    with pytest.raises(AlgorithmError, match="must state it .* function does not") as e:
        make("sgp", weight_decay_on="numerator").init(torch.zeros(8, 2, dtype=F64), bare, mixer)
    assert "\n" not in str(e.value)
    make("sgp").init(torch.zeros(8, 2, dtype=F64), bare, mixer)  # decay at z: nothing to move


# -- centralized never mixes ---------------------------------------------------------------------


def test_centralized_runs_on_a_column_stochastic_topology_and_does_not_depend_on_it():
    q = heterogeneous_quadratics(8, 4, seed=5, dtype=F64)
    X0 = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    gf = q.grad_fn(noise=0.3, seed=6)
    runs = [simulate("centralized", topo, gf, X0, steps=50, lr=0.05, weight_decay=1e-2,
                     momentum=0.9, nesterov=True)
            for topo in (digraph(), flatlab.topology.make("one-peer-exponential", 8,
                                                           weights="push-sum"),
                         flatlab.topology.make("ring", 8))]
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[2])
    assert float((runs[0][-1] - runs[0][0]).abs().max()) > 0.1
    cfg = load_config({"topology": {"name": "one-peer-exponential", "nodes": 8,
                                    "weights": "push-sum"},
                       "algorithm": {"name": "centralized"}})
    assert cfg.algorithm.name == "centralized"
