"""Local steps (flatlab.topology.periodic): H - 1 identity rounds, then W on the H-th step.

Against independent references: H = 1 is the base topology; diffusion on the complete graph with
period H is textbook Local SGD (Stich 2019; Lin et al. 2020: H local steps, then the average),
checked on heterogeneous quadratics against a hand-written per-node loop, with exact agreement of
the nodes after steps H, 2H, ...; traffic is counted on mixing steps only; algorithms that need a
fixed W refuse it.
"""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.comm import SimulatedMixer
from flatlab.errors import AlgorithmError, ConfigError, TopologyError
from flatlab.experiment import load_config


def test_one_local_step_is_the_base_topology():
    base = flatlab.topology.make("ring", 6)
    assert flatlab.topology.periodic(base, 1) is base
    assert flatlab.topology.make("ring", 6, local_steps=1).period == 1


def test_rounds_are_identities_then_w_for_static_and_time_varying_bases():
    ring = flatlab.topology.make("ring", 6)
    local = flatlab.topology.periodic(ring, 3)
    assert local.period == 3 and local.params["local_steps"] == 3
    np.testing.assert_array_equal(local.matrix(0), np.eye(6))  # nodes still identical: no round
    np.testing.assert_array_equal(local.matrix(1), np.eye(6))
    np.testing.assert_array_equal(local.matrix(2), ring.matrix(0))
    np.testing.assert_array_equal(local.matrix(5), ring.matrix(0))
    ope = flatlab.topology.make("one-peer-exponential", 8)  # period 3
    local = flatlab.topology.make("one-peer-exponential", 8, local_steps=2)
    assert local.period == 6
    for t in range(6):
        want = ope.matrix(t // 2) if (t + 1) % 2 == 0 else np.eye(8)
        np.testing.assert_array_equal(local.matrix(t), want)
    # the period product is the base's: the spectral summary contracts as W alone does
    assert flatlab.spectral(local).rho == pytest.approx(flatlab.spectral(ope).rho, abs=1e-12)


@pytest.mark.parametrize("H", [1, 3, 4, 5])
def test_complete_graph_with_period_h_is_local_sgd_on_quadratics(H):
    """f_i(x) = ½ a_i ‖x − b_i‖²: H local gradient steps, then the exact average (Stich 2019,
    Algorithm 1; Lin et al. 2020, eq. 1), from a common start as Local SGD begins."""
    n, d, lr, steps = 5, 3, 0.1, 4 * 3 * 5  # a multiple of every H
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(n, d, generator=gen, dtype=torch.float64)
    X0 = torch.randn(d, dtype=torch.float64, generator=gen).expand(n, d).clone()  # noqa: N806
    topo = flatlab.topology.make("complete", n, local_steps=H)
    xs = flatlab.simulate("diffusion", topo, lambda X, t: a * (X - b), X0, steps=steps, lr=lr)
    x = [X0[i].clone() for i in range(n)]  # the hand-written loop of Local SGD
    for k in range(steps // H):
        for _ in range(H):  # H local steps
            x = [x[i] - lr * a[i] * (x[i] - b[i]) for i in range(n)]
        avg = sum(x) / n  # then the average
        x = [avg.clone() for _ in range(n)]
        t = (k + 1) * H  # the nodes agree exactly after steps H, 2H, ...
        torch.testing.assert_close(xs[t], torch.stack(x), rtol=1e-13, atol=1e-15)
        assert float((xs[t] - xs[t].mean(0)).abs().max()) <= 1e-15
    assert float((xs[-1] - xs[-1].mean(0)).abs().max()) <= 1e-15  # the run ends averaged
    if H > 1:  # and between averages the nodes drift apart (the heterogeneity is real)
        assert float((xs[H - 1] - xs[H - 1].mean(0)).abs().max()) > 1e-3


def test_traffic_is_counted_on_mixing_steps_only():
    base = flatlab.topology.make("ring", 8)
    mixer = SimulatedMixer(flatlab.topology.periodic(base, 4), device="cpu")
    X = torch.randn(8, 10)  # noqa: N806
    for t in range(12):  # mixing at t = 3, 7, 11 (the last step of each period of 4)
        out = mixer.mix(X, t)
        if (t + 1) % 4:
            assert torch.equal(out, X) and out is not X
        else:
            assert not torch.equal(out, X)
    np.testing.assert_array_equal(mixer.stats.messages.numpy(), np.full(8, 3 * 2))
    np.testing.assert_array_equal(mixer.stats.bytes.numpy(), np.full(8, 3 * 2 * 40))


def test_bad_local_steps_and_fixed_w_algorithms_are_refused_in_one_line():
    with pytest.raises(TopologyError, match="local_steps 0 is not accepted") as e:
        flatlab.topology.make("ring", 6, local_steps=0)
    assert "\n" not in str(e.value)
    with pytest.raises(AlgorithmError) as e:
        flatlab.algorithms.make("choco").check_topology(
            flatlab.topology.make("ring", 6, local_steps=2))
    assert "\n" not in str(e.value)
    cfg = {"topology": {"name": "ring", "nodes": 4, "local_steps": 0}}
    with pytest.raises(ConfigError, match="topology.local_steps"):
        load_config(cfg)


@pytest.mark.parametrize("H", [2, 8])
def test_dsgd_bound_of_local_steps_is_koloskovas_tau_form(H):
    """docs/reference/theory.md row 2': tau = H and p from W over one period (complete: p = 1)."""
    L, F0, sigma2, zeta2, T = 2.0, 3.0, 0.5, 0.7, 10_000
    b = flatlab.theory.bound("dsgd", topology=flatlab.topology.make("complete", 16,
                                                                       local_steps=H),
                             T=T, L=L, sigma2=sigma2, zeta2=zeta2, F0=F0)
    assert b.inputs["tau"] == H and b.inputs["p"] == pytest.approx(1.0, abs=1e-12)
    consensus = (L * F0 * (zeta2 ** 0.5 * H + sigma2 ** 0.5 * H ** 0.5)) ** (2 / 3) / T ** (2 / 3)
    assert b.terms["consensus"] == pytest.approx(consensus, rel=1e-12)
    assert b.terms["deterministic"] == pytest.approx(L * F0 * H / T, rel=1e-12)
