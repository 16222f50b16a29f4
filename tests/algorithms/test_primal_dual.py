"""ECL (PDMM/ADMM) on heterogeneous quadratics: exact minimizer, exact primal step, per-edge
messages (algorithms.md §7.1, §16 items 6 and 12)."""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.algorithms import ECLState, make, simulate
from flatlab.algorithms.primal_dual import edge_slots
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError

F64 = torch.float64


@pytest.mark.parametrize("hp", [{"theta": 1.0}, {"theta": 0.5}, {"theta": 1.0, "period": 5},
                                {"theta": 0.5, "period": 8, "tie": 1.0}],
                         ids=["pdmm", "admm", "pdmm-K5", "admm-K8-tied"])
@pytest.mark.parametrize("topo,n", [("ring", 8), ("torus", 16), ("hypercube", 8)])
def test_ecl_reaches_the_exact_minimizer(hp, topo, n):
    q = heterogeneous_quadratics(n, 3, seed=2, condition=5.0)
    X0 = torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    xs = simulate("ecl", topo, q.grad_fn(), X0, steps=3000, lr=0.05, stride=100, **hp)
    err = (xs - q.x_star).abs().amax(dim=(1, 2))
    assert float(err[-1]) < 1e-9, float(err[-1])
    assert float(err[5]) < 1e-2 * float(err[0])  # and fast: linear


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
    slots = edge_slots(topo)
    z = torch.randn(state.z.shape, dtype=F64, generator=gen) * (slots.sign != 0)[..., None]
    new = algo.step(ECLState(x=X, z=z), 0, oracle, mixer, lr).x
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
    slots = edge_slots(flatlab.topology.make("ring", n))
    for i in range(n):
        for s, j in enumerate(slots.neighbors[i].tolist()):
            t = slots.neighbors[j].tolist().index(i)
            a = float(slots.sign[i, s])
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
