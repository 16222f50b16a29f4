"""Exact properties of the momentum, tracking and bias-corrected families (algorithms.md §16).

On heterogeneous quadratics ``f_i(x) = ½ (x − b_i)ᵀ H_i (x − b_i)`` in float64 with exact
gradients: the exact methods reach ``x*`` at a linear rate; the momentum variants stop at the
DSGD-ATC fixed points the reference states (solved here as linear systems); the tracking
invariants hold at every step, read off the iterates themselves; D² diverges where Exact
Diffusion converges; with ``W = J`` only the adapt-then-combine forms are centralized SGD.
"""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.algorithms import make, simulate
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError, ConfigError
from flatlab.theory import d2_radius
from tests.algorithms.test_dsgd_exact import closed_form_fixed_point

F64 = torch.float64
LR = 0.05


def quadratic():
    q = heterogeneous_quadratics(8, 3, seed=1, condition=4.0)
    X0 = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    return q, X0


EXACT = [
    ("gradient-tracking", {"form": "diging"}, "ring"),
    ("gradient-tracking", {"form": "atc"}, "ring"),
    ("gradient-tracking", {}, "one-peer-exponential"),
    ("momentum-tracking", {"momentum": 0.9, "y0": "average"}, "ring"),
    ("momentum-tracking", {"momentum": 0.9, "y0": "local"}, "ring"),
    ("momentum-tracking", {"momentum": 0.9}, "exponential"),
    ("exact-diffusion", {}, "ring"),
    ("exact-diffusion", {}, "torus"),
    ("d2", {}, "exponential-undirected"),  # lambda_min(W) > -1/3
]


@pytest.mark.parametrize("case", EXACT, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_exact_methods_reach_the_minimizer_at_a_linear_rate(case):
    name, hp, topo = case
    q, X0 = quadratic()
    T = flatlab.topology.make(topo, 8)
    xs = simulate(name, T, q.grad_fn(), X0, steps=4000, lr=LR, stride=20, **hp)
    err = (xs - q.x_star).abs().amax(dim=(1, 2)).numpy()
    assert err[-1] < 1e-9, f"{name} {hp}: final max node error {err[-1]:.3g}"
    # linear rate: every window of 20 steps shrinks the error by a factor bounded away from 1
    # until it reaches rounding (a sublinear method would slow down instead)
    live = np.flatnonzero(err > 1e-11)
    ratios = err[live[1:]] / err[live[1:] - 1]
    assert live.size > 5 and ratios.max() < 0.8, ratios.max()


def _diffusion_fixed_point(q, lr):
    return torch.as_tensor(closed_form_fixed_point("diffusion", flatlab.topology.make(
        "ring", 8).matrix(0), q, lr))


BIASED = [  # name, hyper-parameters, step of the DSGD-ATC fixed point it stops at (§16 item 5)
    ("dsgdm", {"momentum": 0.9}, LR / (1 - 0.9)),
    ("dsgdm", {"momentum": 0.5, "nesterov": True}, LR / (1 - 0.5)),
    ("qg-dsgdm", {"momentum": 0.9}, LR),
    ("qg-dsgdm", {"momentum": 0.9, "nesterov": True}, LR * (1 + 0.9)),
    ("decentlam", {"momentum": 0.9}, LR),
    ("decentlam", {"momentum": 0.5}, LR),
]


@pytest.mark.parametrize("case", BIASED, ids=lambda c: f"{c[0]}-{c[1]}")
def test_momentum_variants_stop_at_the_stated_diffusion_fixed_points(case):
    name, hp, step = case
    q, X0 = quadratic()
    xs = simulate(name, "ring", q.grad_fn(), X0, steps=6000, lr=LR, stride=3000, **hp)
    X = xs[-1]
    assert float((xs[-1] - xs[-2]).abs().max()) < 1e-13  # converged
    ref = _diffusion_fixed_point(q, step)
    assert float((X - ref).abs().max()) < 1e-11
    assert float((X - q.x_star).abs().max()) > 1e-2  # biased: not x*
    assert float(q.grad(X).sum(0).abs().max()) < 1e-11  # yet the local gradients cancel


def test_dsgdm_amplifies_the_bias_qg_and_decentlam_do_not():
    q, X0 = quadratic()
    bias = {}
    for name in ("diffusion", "dsgdm", "qg-dsgdm", "decentlam"):
        X = simulate(name, "ring", q.grad_fn(), X0, steps=6000, lr=LR, stride=6000)[-1]
        bias[name] = float((X - q.x_star).norm())
    assert bias["dsgdm"] > 3 * bias["diffusion"]
    assert bias["qg-dsgdm"] == pytest.approx(bias["diffusion"], rel=1e-9)
    assert bias["decentlam"] == pytest.approx(bias["diffusion"], rel=1e-9)


def _steps(name, hp, topo, q, X0, steps, noise=0.0):
    """States after each step, with the gradient oracle's values for independent checks."""
    algo = make(name, **hp)
    gf = q.grad_fn(noise=noise, seed=4)
    mixer = SimulatedMixer(topo, device="cpu", dtype=F64)
    oracle = FunctionOracle(gf)
    state = algo.init(X0.clone(), oracle, mixer)
    out = [state]
    for t in range(steps):
        state = algo.step(state, t, oracle, mixer, LR)
        out.append(state)
    return out, gf


@pytest.mark.parametrize("form", ["diging", "atc"])
def test_gradient_tracking_invariant_holds_at_every_step(form):
    """Σ_i y_i^t = Σ_i g_i^t, with noisy gradients too (the invariant is structural)."""
    q, X0 = quadratic()
    topo = flatlab.topology.make("ring", 8)
    W = torch.as_tensor(topo.matrix(0))
    states, gf = _steps("gradient-tracking", {"form": form}, topo, q, X0, 60, noise=0.3)
    for t in range(60):
        X, Xn = states[t].x, states[t + 1].x
        G = gf(X, t)
        # the tracker actually used, read off the iterates: DIGing X⁺ = W X − ηY, ATC X⁺ = W(X − ηY)
        if form == "diging":
            Y = (W @ X - Xn) / LR
        else:
            Y = torch.linalg.solve(W, W @ X - Xn) / LR
        torch.testing.assert_close(Y.sum(0), G.sum(0), rtol=0, atol=1e-10)
        torch.testing.assert_close(states[t + 1].g, G, rtol=0, atol=0)
        torch.testing.assert_close(states[t + 1].y.sum(0), G.sum(0), rtol=0, atol=1e-10)
        if t == 0:
            torch.testing.assert_close(Y, G, rtol=0, atol=1e-10)  # y^0 = g^0


@pytest.mark.parametrize("y0", ["average", "local"])
def test_momentum_tracking_invariants_hold_at_every_step(y0):
    """y^t = u^t − c^{t−1}: Σ_i y_i^t = Σ_i u_i^t; y_i^0 = ḡ^0 (average start) or g_i^0 (local)."""
    q, X0 = quadratic()
    topo = flatlab.topology.make("exponential", 8)
    W = torch.as_tensor(topo.matrix(0))
    beta = 0.9
    states, gf = _steps("momentum-tracking", {"momentum": beta, "y0": y0}, topo, q, X0, 60,
                        noise=0.3)
    U_prev = None
    for t in range(60):
        X, Xn = states[t].x, states[t + 1].x
        Y = (W @ X - Xn) / LR  # X⁺ = W X − η Y
        U = states[t + 1].u
        torch.testing.assert_close(Y.sum(0), U.sum(0), rtol=0, atol=1e-9)
        assert float(states[t + 1].c.sum(0).abs().max()) < 1e-9
        G = gf(X, t)
        if t == 0:
            start = G.mean(0).expand_as(G) if y0 == "average" else G
            torch.testing.assert_close(Y, start, rtol=0, atol=1e-10)
        else:  # U^{t} = β U^{t−1} + G^{t}: weight decay and all, the tracked quantity
            torch.testing.assert_close(U, beta * U_prev + G, rtol=0, atol=1e-12)
        U_prev = U


def test_d2_diverges_where_exact_diffusion_converges():
    """n = 2, W = [[0.2, 0.8], [0.8, 0.2]] (λ_min = −0.6), η = 0.01 (§16 item 8)."""
    W = np.array([[0.2, 0.8], [0.8, 0.2]])
    q = heterogeneous_quadratics(2, 3, seed=2)
    X0 = torch.zeros(2, 3, dtype=F64)
    assert d2_radius(W) > 1
    with pytest.raises(AlgorithmError, match=r"d2: is unstable .* lambda_min\(W\) > -1/3"):
        simulate("d2", W, q.grad_fn(), X0, steps=1, lr=0.01)
    with pytest.warns(RuntimeWarning, match="d2 is unstable"):
        xs = simulate("d2", W, q.grad_fn(), X0, steps=200, lr=0.01, allow_unstable=True)
    err = (xs - q.x_star).abs().amax(dim=(1, 2))
    assert float(err[40]) > 10 * float(err[0]) and float(err[-1]) > 1e6 * float(err[0])
    ed = simulate("exact-diffusion", W, q.grad_fn(), X0, steps=6000, lr=0.01)
    assert float((ed[-1] - q.x_star).abs().max()) < 1e-9


@pytest.mark.parametrize("name,n", [("ring", 8), ("ring", 7), ("ring", 4), ("torus", 16),
                                    ("hypercube", 8), ("exponential-undirected", 8),
                                    ("complete", 6), ("star", 8), ("path", 5)])
def test_d2_radius_below_one_exactly_when_lambda_min_exceeds_minus_a_third(name, n):
    T = flatlab.topology.make(name, n)
    lam_min = np.linalg.eigvalsh(T.matrix(0))[0]
    r = d2_radius(T)
    assert (r < 1 - 1e-9) == (lam_min > -1 / 3 + 1e-9)
    assert d2_radius(flatlab.topology.make(name, n, lazy=True)) < 1  # (I + W)/2 always contracts
    # the per-mode formula of the static path against the dense companion product
    dense = flatlab.topology.from_matrix([T.matrix(0), T.matrix(0)])
    assert d2_radius(dense) == pytest.approx(r, abs=1e-6)


def test_d2_radius_of_a_time_varying_circulant_equals_the_dense_product():
    T = flatlab.topology.make("one-peer-exponential", 8)
    dense = flatlab.topology.from_matrix([T.matrix(t) for t in range(T.period)])
    assert dense.group is None and T.group is not None
    assert d2_radius(T) == pytest.approx(d2_radius(dense), rel=1e-9)


def test_a_run_of_d2_on_an_unstable_topology_is_refused_at_validation():
    with pytest.raises(ConfigError, match="config field algorithm: d2: is unstable on ring"):
        flatlab.experiment.load_config({"algorithm": {"name": "d2"},
                                        "topology": {"name": "ring", "nodes": 8}})
    cfg = flatlab.experiment.load_config({"algorithm": {"name": "d2"},
                                          "topology": {"name": "ring", "nodes": 8,
                                                       "lazy": True}})
    flatlab.experiment.validate(cfg)


def _complete_graph_run(name, hp, q, X0, steps=30):
    return simulate(name, "complete", q.grad_fn(noise=0.2, seed=1), X0, steps=steps, lr=LR,
                    **hp)


@pytest.mark.parametrize("name,hp,central", [
    ("diffusion", {}, {}),
    ("dsgdm", {"momentum": 0.9}, {"momentum": 0.9}),
    ("dsgdm", {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "nesterov": True}),
    ("gradient-tracking", {"form": "atc"}, {}),
])
def test_complete_graph_atc_forms_are_centralized_sgd(name, hp, central):
    q, _ = quadratic()
    X0 = torch.randn(1, 3, dtype=F64, generator=torch.Generator().manual_seed(3)).expand(8, 3)
    xs = _complete_graph_run(name, hp, q, X0.clone())
    ref = _complete_graph_run("centralized", central, q, X0.clone())
    assert float((xs - ref).abs().max()) < 1e-12
    assert float((ref[-1] - ref[0]).abs().max()) > 0.1


@pytest.mark.parametrize("name,hp", [("gradient-tracking", {"form": "diging"}),
                                     ("momentum-tracking", {"momentum": 0.9})])
def test_complete_graph_diging_and_momentum_tracking_are_not_centralized(name, hp):
    q, _ = quadratic()
    X0 = torch.randn(1, 3, dtype=F64, generator=torch.Generator().manual_seed(3)).expand(8, 3)
    xs = _complete_graph_run(name, hp, q, X0.clone())
    central = {"momentum": hp.get("momentum", 0.0)}
    ref = _complete_graph_run("centralized", central, q, X0.clone())
    spread = float((xs[-1] - xs[-1].mean(0)).abs().max())
    assert spread > 1e-6  # nodes differ by η(g_i^t − g_i^{t−1})-type terms
    assert float((xs - ref).abs().max()) > 1e-6


def test_noisy_floors_of_exact_methods_do_not_depend_on_heterogeneity():
    """§16 item 15: scaling the spread of the b_i at fixed noise σ scales the error floor of DSGD
    and its momentum variants (bias ∝ ζ*, floor ∝ ζ*²) but leaves those of GT, MT and ED as they
    are (their floors come from the noise alone)."""
    floors = {}
    for h in (1.0, 10.0):
        q = heterogeneous_quadratics(16, 4, seed=3, heterogeneity=h, condition=3.0)
        X0 = q.x_star.expand(16, 4).clone()
        for name in ("diffusion", "dsgdm", "qg-dsgdm", "decentlam", "gradient-tracking",
                     "momentum-tracking", "exact-diffusion"):
            xs = simulate(name, "ring", q.grad_fn(noise=0.1, seed=1), X0, steps=2000, lr=0.02,
                          stride=10)
            floors[name, h] = float(((xs[100:] - q.x_star) ** 2).sum(-1).mean())
    for name in ("diffusion", "dsgdm", "qg-dsgdm", "decentlam"):
        assert floors[name, 10.0] > 50 * floors[name, 1.0], name
    for name in ("gradient-tracking", "momentum-tracking", "exact-diffusion"):
        assert floors[name, 10.0] == pytest.approx(floors[name, 1.0], rel=1e-3), name
        assert floors[name, 1.0] < 0.01 * floors["diffusion", 1.0]
