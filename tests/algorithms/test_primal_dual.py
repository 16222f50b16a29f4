"""ECL (PDMM/ADMM) on heterogeneous quadratics: exact minimizer, exact primal step, per-edge
messages (algorithms.md §7.1, §16 items 6 and 12)."""

import math

import numpy as np
import pytest
import torch

import flatlab
from flatlab.algorithms import ECLState, make, simulate
from flatlab.algorithms.primal_dual import EdgeLinks
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError

F64 = torch.float64


@pytest.mark.parametrize("hp", [{"theta": 1.0}, {"theta": 0.5}, {"theta": 1.0, "period": 5},
                                {"theta": 0.5, "period": 8, "tie": 1.0},
                                {"theta": 1.0, "dual_init": "x0"}],
                         ids=["pdmm", "admm", "pdmm-K5", "admm-K8-tied", "pdmm-x0"])
@pytest.mark.parametrize("topo,n", [("ring", 8), ("torus", 16), ("hypercube", 8)])
def test_ecl_reaches_the_exact_minimizer(hp, topo, n):
    q = heterogeneous_quadratics(n, 3, seed=2, condition=5.0)
    X0 = torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    xs = simulate("ecl", topo, q.grad_fn(), X0, steps=3000, lr=0.05, stride=100, **hp)
    err = (xs - q.x_star).abs().amax(dim=(1, 2))
    assert float(err[-1]) < 1e-9, float(err[-1])
    assert float(err[5]) < 1e-2 * float(err[0])  # and fast: linear


def test_ecl_dual_init_x0_starts_at_the_consensus_duals():
    """With z_{i|j} = A_{i|j} x⁰ and a common start the penalty pulls nowhere: the first step
    is x⁰ − g/(μ + α|N_i|); with zero duals it is pulled towards 0 as well."""
    n, d, lr, alpha = 8, 3, 0.1, 0.7
    q = heterogeneous_quadratics(n, d, seed=3)
    x0 = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(2))
    X0 = x0.expand(n, d).clone()  # noqa: N806
    topo = flatlab.topology.make("ring", n)
    g = q.grad(X0)
    for init, want in (("x0", X0 - g / (1 / lr + 2 * alpha)),
                       ("zero", X0 - (g + 2 * alpha * X0) / (1 / lr + 2 * alpha))):
        xs = simulate(make("ecl", alpha=alpha, dual_init=init), topo, q.grad_fn(), X0,
                      steps=1, lr=lr)
        torch.testing.assert_close(xs[1], want, rtol=0, atol=1e-14)


def test_ecl_primal_step_is_the_exact_minimizer_of_its_local_objective():
    """∇ [⟨g, x⟩ + (μ/2)‖x − x_i‖² + Σ_j (α/2)‖A_{i|j} x − z_{i|j}‖²] = 0 at x_i⁺ (item 12)."""
    n, d, lr, alpha = 6, 4, 0.1, 0.7
    topo = flatlab.topology.make("exponential-undirected", n)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(n, d, dtype=F64, generator=gen)
    X = torch.randn(n, d, dtype=F64, generator=gen)
    algo = make("ecl", alpha=alpha, period=1000)  # no exchange: look at the primal step alone
    mixer = SimulatedMixer(topo, device="cpu", dtype=F64)
    oracle = FunctionOracle(lambda x, t: G)
    state = algo.init(X, oracle, mixer)
    slots = mixer.edge_slots(0)
    z = torch.randn(state.z.shape, dtype=F64, generator=gen) * (state.links.sign != 0)[..., None]
    new = algo.step(ECLState(x=X, z=z), 0, oracle, mixer, lr).x  # links from the mixer
    W = topo.matrix(0)
    for i in range(n):
        x = new[i].clone().requires_grad_(True)
        obj = G[i] @ x + 0.5 / lr * (x - X[i]).pow(2).sum()
        for s, j in enumerate(slots.neighbors[i].tolist()):
            if j < n:
                assert W[i, j] != 0
                a = 1.0 if i < j else -1.0
                obj = obj + 0.5 * alpha * (a * x - z[i, s]).pow(2).sum()
        (grad,) = torch.autograd.grad(obj, x)
        assert float(grad.abs().max()) < 1e-12


def test_ecl_sends_one_distinct_message_per_edge_per_exchange():
    n, period, steps = 8, 3, 12
    topo = flatlab.topology.make("ring", n)
    q = heterogeneous_quadratics(n, 5, seed=0)
    mixer = SimulatedMixer(topo, device="cpu", dtype=F64)
    simulate("ecl", topo, q.grad_fn(), torch.zeros(n, 5, dtype=F64), steps=steps, lr=0.05,
             mixer=mixer, period=period)
    exchanges = steps // period
    assert mixer.stats.messages.tolist() == [2 * exchanges] * n  # two neighbours each
    assert mixer.stats.bytes.tolist() == [2 * exchanges * 5 * 8] * n


def test_ecl_duals_stop_moving_at_the_fixed_point():
    """At the fixed point each message equals the dual it updates, y_{i|j} = z_{j|i}."""
    n = 8
    q = heterogeneous_quadratics(n, 3, seed=5)
    _, state = simulate("ecl", "ring", q.grad_fn(), torch.zeros(n, 3, dtype=F64), steps=3000,
                        lr=0.05, return_state=True)
    mixer = SimulatedMixer(flatlab.topology.make("ring", n), device="cpu", dtype=F64)
    slots, links = mixer.edge_slots(0), EdgeLinks.of(mixer, torch.device("cpu"))
    for i in range(n):
        for s, j in enumerate(slots.neighbors[i].tolist()):
            t = slots.neighbors[j].tolist().index(i)
            a = float(links.sign[i, s])
            y = state.z[i, s] - 2 * a * state.x[i]
            torch.testing.assert_close(y, state.z[j, t], rtol=0, atol=1e-10)


@pytest.mark.parametrize("topo", ["one-peer-exponential", "exponential"])
def test_ecl_refuses_directed_or_time_varying_topologies(topo):
    T = flatlab.topology.make(topo, 8)
    with pytest.raises(AlgorithmError, match="ecl: needs a"):
        simulate("ecl", T, lambda X, t: X, torch.zeros(8, 2, dtype=F64), steps=1, lr=0.1)


def test_ecl_tied_penalty_follows_the_learning_rate():
    algo = make("ecl", tie=1.0, period=8)
    deg = torch.tensor([2, 4])
    np.testing.assert_allclose(algo.penalty(deg, 0.01).numpy(),
                               [1 / (0.01 * (8 * 2 + 8 - 2)), 1 / (0.01 * (8 * 4 + 8 - 4))])
    assert float(algo.penalty(deg, 0.005)[0]) == pytest.approx(2 * float(algo.penalty(deg,
                                                                                      0.01)[0]))
    with pytest.raises(AlgorithmError, match="negative penalty"):
        make("ecl", tie=2.0, period=1).penalty(deg, 0.1)


@pytest.mark.parametrize("topo,n,theta,lr", [("ring", 8, 1.0, 1.0), ("torus", 9, 1.0, 0.5),
                                             ("torus", 9, 0.5, 0.5),
                                             ("hypercube", 8, 0.5, 0.5)])
def test_ngpd_with_the_exact_hessian_reaches_the_exact_minimizer(topo, n, theta, lr):
    """The reconstruction with F̃_i = H_i (§16 item 6), ill-conditioned quadratics."""
    q = heterogeneous_quadratics(n, 3, seed=1, condition=20.0)
    X0 = torch.zeros(n, 3, dtype=F64)
    xs = simulate("ngpd", topo, q.grad_fn(), X0, steps=2500, lr=lr, stride=100,
                  metric_fn=lambda X, t: q.H, damping=1e-10, theta=theta,
                  period=1 if theta == 1 else 3)
    err = (xs - q.x_star).abs().amax(dim=(1, 2))
    assert float(err[-1]) < 1e-9, float(err[-1])


def test_ngpd_with_a_zero_metric_and_unit_damping_is_ecl():
    """μ (0 + 1·I) + α|N_i| I is ECL's μ + α|N_i|: the two must agree to rounding."""
    q = heterogeneous_quadratics(8, 3, seed=4)
    X0 = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(8, 3, 3, dtype=F64)
    for hp in ({"theta": 1.0}, {"theta": 0.5, "period": 3, "tie": 1.0}):
        ngpd = simulate("ngpd", "ring", q.grad_fn(noise=0.1, seed=2), X0, 60, 0.05,
                        metric_fn=lambda X, t: zero, damping=1.0, **hp)
        ecl = simulate("ecl", "ring", q.grad_fn(noise=0.1, seed=2), X0, 60, 0.05, **hp)
        assert float((ngpd - ecl).abs().max()) < 1e-12


def test_ngpd_curvature_schedule_and_running_average():
    """Factors are refreshed every factor_every steps as ξ F + (1 − ξ) F_batch and the basis
    every inverse_every steps; between refreshes the step uses the frozen eigenbasis."""
    n, d = 4, 2
    q = heterogeneous_quadratics(n, d, seed=0)
    seen = []

    def metric(X, t):
        seen.append(t)
        return q.H * (1 + t)

    _, state = simulate("ngpd", "ring", q.grad_fn(), torch.zeros(n, d, dtype=F64), steps=7,
                        lr=0.1, metric_fn=metric, factor_every=3, inverse_every=6, ema=0.5,
                        return_state=True)
    assert seen == [0, 3, 6]
    expected = q.H * (0.25 * 1 + 0.25 * 4 + 0.5 * 7)  # F0, then two halvings
    torch.testing.assert_close(state.factors[:, 1:].reshape(n, d, d), expected, rtol=1e-12,
                               atol=1e-12)
    d_g = state.basis[:, -d:]
    torch.testing.assert_close(d_g, torch.linalg.eigvalsh(expected), rtol=1e-10, atol=1e-12)


def test_ngpd_trains_a_model_through_the_runner(tmp_path):
    cfg = flatlab.experiment.load_config({
        "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "topology": {"name": "ring", "nodes": 4},
        "algorithm": {"name": "ngpd", "params": {"fisher": "true", "factor_every": 5}},
        "optim": {"lr": 0.05}, "train": {"steps": 40}, "checkpoint_every": 15,
        "measure": {"every": 40, "metrics": ["loss", "accuracy"]}})
    res = flatlab.experiment.run(cfg, tmp_path / "a", progress=False)
    assert res.status == "done"
    s = flatlab.results.summary(tmp_path / "a").iloc[0]
    assert s["test_accuracy"] > 0.5
    cut = flatlab.experiment.run(cfg, tmp_path / "b", progress=False, stop_after=22)
    assert cut.status == "running"
    flatlab.experiment.run(cfg, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state"]
    for k in ("x", "z", "factors", "basis"):
        assert torch.equal(a[k], b[k]), k


def test_ngpd_marks_a_node_whose_curvature_blew_up_as_diverging():
    """Non-finite factors (a diverging run) must not crash the eigendecomposition: that node's
    loss reads NaN, so the runner records the run as diverged, and the others step on."""
    n, d = 4, 2
    q = heterogeneous_quadratics(n, d, seed=0)
    bad = {"t": None}

    def metric(X, t):  # node 1's metric overflows at step 3
        M = q.H.clone()  # noqa: N806
        if t == 3:
            M[1] = math.inf
            bad["t"] = t
        return M

    algo = make("ngpd", factor_every=3, inverse_every=3, ema=0.5)
    mixer = SimulatedMixer(flatlab.topology.make("ring", n), device="cpu", dtype=F64)
    oracle = FunctionOracle(q.grad_fn(), metric_fn=metric)
    state = algo.init(torch.zeros(n, d, dtype=F64), oracle, mixer)
    for t in range(4):
        state = algo.step(state, t, oracle, mixer, 0.1)
    assert bad["t"] == 3
    assert torch.isnan(state.loss[1]) and torch.isfinite(state.loss[[0, 2, 3]]).all()
    assert torch.isfinite(state.x).all()



@pytest.mark.parametrize("name,keys", [("ecl", {"z"}), ("ngpd", {"z", "factors", "basis"})])
def test_derived_links_and_metric_are_not_checkpointed(name, keys):
    """Edge links and the metric's blocks are rebuilt by init: checkpoints keep their old keys,
    and load_state takes them from the template."""
    q = heterogeneous_quadratics(8, 3, seed=0)
    mixer = SimulatedMixer(flatlab.topology.make("ring", 8), device="cpu", dtype=F64)
    oracle = FunctionOracle(q.grad_fn(), metric_fn=lambda X, t: q.H)
    algo = make(name)
    state = algo.step(algo.init(torch.zeros(8, 3, dtype=F64), oracle, mixer), 0, oracle, mixer,
                      0.1)
    saved = flatlab.algorithms.state_dict(state)
    assert set(saved) == {"__class__", "x", "t", "loss"} | keys
    restored = flatlab.algorithms.load_state(saved, state)
    assert restored.links is state.links
    assert getattr(restored, "metric", None) is getattr(state, "metric", None)
    a, b = algo.step(state, 1, oracle, mixer, 0.1), algo.step(restored, 1, oracle, mixer, 0.1)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)


def test_ngpd_refuses_an_oracle_without_a_metric_in_one_line():
    q = heterogeneous_quadratics(4, 2, seed=0)
    mixer = SimulatedMixer(flatlab.topology.make("ring", 4), device="cpu", dtype=F64)
    X0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(AlgorithmError, match=r"^ngpd: needs an oracle with a curvature metric "
                       r".*; this FunctionOracle has no metric_fn$"):
        make("ngpd").init(X0, FunctionOracle(q.grad_fn()), mixer)
    with pytest.raises(AlgorithmError, match=r"^ngpd: needs an oracle with a curvature metric "
                       r".*; a function has none$"):
        make("ngpd").init(X0, lambda X, batch: (None, q.grad(X)), mixer)
    with pytest.raises(AlgorithmError, match="ngpd: needs an oracle with a curvature metric"):
        simulate("ngpd", "ring", q.grad_fn(), X0, steps=1, lr=0.1)
    # a topology ngpd cannot run on is named first, whatever the oracle
    with pytest.raises(AlgorithmError, match="^ngpd: needs a static topology"):
        simulate("ngpd", "one-peer-exponential", q.grad_fn(), X0, steps=1, lr=0.1)
