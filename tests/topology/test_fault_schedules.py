"""Links that fail in a run (issue 34): the schedule a run mixes with, and its config."""

import numpy as np
import pytest

from flatlab.errors import ConfigError, TopologyError
from flatlab.experiment import load_config
from flatlab.experiment.assemble import build
from flatlab.topology import Topology, make
from flatlab.topology.faults import LinkFailures, NodeChurn

RUN = {"name": "lf", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "logistic"}, "algorithm": {"name": "diffusion"},
       "topology": {"name": "torus", "nodes": 9,
                    "faults": {"model": "link_failures", "p": 0.25}},
       "train": {"steps": 40}, "seed": 7, "device": "cpu"}


def test_a_schedule_plays_the_models_rounds_and_p_zero_is_the_base():
    faults = LinkFailures(make("ring", 8), p=0.4, seed=3)
    sched = faults.topology(30)
    assert sched.period == 30 and sched.time_varying and sched.symmetric
    for t in range(30):
        np.testing.assert_array_equal(sched.matrix(t), faults.matrix(t))
    base = make("ring", 8).matrix()
    assert sum(not np.array_equal(sched.matrix(t), base) for t in range(30)) > 20
    assert LinkFailures(make("ring", 8), p=0.0).topology(30).period == 1
    with pytest.raises(TopologyError, match="rounds must be an integer >= 1"):
        faults.topology(0)


def test_a_run_mixes_with_the_model_seeded_by_its_own_seed():
    run = build(load_config(RUN))
    want = LinkFailures(make("torus", 9), p=0.25, seed=7)
    assert run.mixer.topology.period == 40
    for t in (0, 1, 17, 39):
        np.testing.assert_array_equal(run.mixer.topology.matrix(t), want.matrix(t))


@pytest.mark.parametrize("faults, match", [
    ({"model": "link_failures", "p": 1.0}, r"topology.faults: link failure probability p must "
                                           r"be in \[0, 1\), got 1.0"),
    ({"model": "storms", "p": 0.1}, r"topology.faults.model.*accepted: link_failures"),
    ({"model": "node_churn", "p": -0.1}, r"node churn probability p must be in \[0, 1\)"),
    ({"model": "link_failures", "q": 0.1}, r"topology.faults.q is unknown; accepted: model, p"),
    ("often", r"topology.faults: 'often' is not a mapping"),
])
def test_bad_faults_are_one_line(faults, match):
    with pytest.raises(ConfigError, match=match):
        load_config({**RUN, "topology": {**RUN["topology"], "faults": faults}})


def test_methods_that_need_a_static_graph_and_local_steps_refuse_failing_links():
    with pytest.raises(ConfigError, match=r"choco: needs a static topology"):
        load_config({**RUN, "algorithm": {"name": "choco"}})
    with pytest.raises(ConfigError, match=r"link failures need a static undirected graph"):
        load_config({**RUN, "topology": {**RUN["topology"], "local_steps": 2}})


# ---------------------------------------------------------------------- node churn
def test_under_churn_diffusion_equals_the_loop_in_which_offline_nodes_keep_their_value():
    """The independent loop: ``x ← W_t (x − μ ∇f(x))`` for the online nodes, an offline node's
    row unchanged, with ``W_t`` and the offline set drawn from the churn model itself."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.data import heterogeneous_quadratics

    q = heterogeneous_quadratics(8, 3, seed=1)
    churn = NodeChurn(make("ring", 8), p=0.3, seed=5)
    X0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # noqa: N806
    xs = simulate("diffusion", churn.topology(40), q.grad_fn(), X0, 40, 0.1,
                  offline=churn.offline)
    X = X0.clone()  # noqa: N806
    frozen = 0
    for t in range(40):
        W = torch.as_tensor(churn.matrix(t))  # noqa: N806
        off = torch.as_tensor(churn.offline(t))
        new = W @ (X - 0.1 * q.grad(X))
        new[off] = X[off]
        frozen += int(off.sum())
        X = new  # noqa: N806
        torch.testing.assert_close(xs[t + 1], X, rtol=0, atol=1e-13)
    assert frozen > 40, "the churn never took a node offline"


def test_under_churn_gradient_tracking_keeps_its_invariant_and_reaches_the_exact_minimizer():
    """Frozen rows leave ``Σ y = Σ g`` intact (W_t is doubly stochastic and leaves offline
    nodes out), so with exact gradients the exact method still reaches x*."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.data import heterogeneous_quadratics

    q = heterogeneous_quadratics(6, 4, seed=2)
    churn = NodeChurn(make("ring", 6), p=0.2, seed=1)
    X0 = torch.zeros(6, 4, dtype=torch.float64)  # noqa: N806
    xs, st = simulate("gradient-tracking", churn.topology(3000), q.grad_fn(), X0, 3000, 0.05,
                      offline=churn.offline, return_state=True)
    torch.testing.assert_close(st.y.sum(0), st.g.sum(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(xs[-1], q.x_star.expand(6, 4), rtol=0, atol=1e-10)


def test_hold_keeps_every_per_node_field_of_the_offline_rows_and_advances_the_step():
    import torch

    from flatlab.algorithms import hold
    from flatlab.algorithms.tracking import TrackingState

    old = TrackingState(x=torch.zeros(3, 2), y=torch.zeros(3, 2), g=torch.zeros(3, 2), t=4,
                        loss=torch.zeros(3))
    new = TrackingState(x=torch.ones(3, 2), y=torch.ones(3, 2), g=torch.ones(3, 2), t=5,
                        loss=torch.ones(3))
    out = hold(new, old, torch.tensor([False, True, False]))
    for name in ("x", "y", "g"):
        assert getattr(out, name)[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert out.loss.tolist() == [1.0, 0.0, 1.0] and out.t == 5


def test_churn_runs_and_refuses_what_it_cannot_mean():
    run = build(load_config({**RUN, "topology": {**RUN["topology"],
                                                 "faults": {"model": "node_churn", "p": 0.2}}}))
    want = NodeChurn(make("torus", 9), p=0.2, seed=7)
    assert run.offline(3).tolist() == want.offline(3).tolist()
    with pytest.raises(ConfigError, match=r"centralized averages with an exact all-reduce"):
        load_config({**RUN, "algorithm": {"name": "centralized"}})
    bn = {**RUN, "model": {"name": "mlp", "options": {"hidden": [8], "norm": "batch"}},
          "topology": {**RUN["topology"], "faults": {"model": "node_churn", "p": 0.2}}}
    with pytest.raises(ConfigError, match=r"batch-norm statistics"):
        build(load_config(bn))


# ---------------------------------------------------------------------- message drops
def test_under_message_drops_gossip_is_the_product_of_the_models_rounds_and_drifts():
    """Gossip only (zero gradients): the mixer plays exactly ``∏ W_t x0`` with each ``W_t``
    from the drop model; the nodes agree, on a value that has left the initial average."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.topology.faults import MessageDrops

    drops = MessageDrops(make("ring", 6), p=0.3, seed=2)
    # a round in which every message arrives is the base's (it used to fail to build)
    np.testing.assert_array_equal(drops.round_from(np.ones(drops.units, bool)).toarray(),
                                  make("ring", 6).matrix())
    X0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    xs = simulate("diffusion", drops.topology(200), lambda X, t: torch.zeros_like(X), X0, 200,
                  0.1)
    X = X0.clone()  # noqa: N806
    for t in range(200):
        X = torch.as_tensor(drops.matrix(t)) @ X  # noqa: N806
    torch.testing.assert_close(xs[-1], X, rtol=0, atol=1e-13)
    assert float((xs[-1] - xs[-1].mean(0)).abs().max()) < 1e-8, "the nodes agree"
    assert float((xs[-1].mean(0) - X0.mean(0)).abs().max()) > 1e-3, "on a drifted value"


def test_message_drops_are_for_the_plain_gossip_methods_only():
    drops = {**RUN, "topology": {**RUN["topology"],
                                 "faults": {"model": "message_drops", "p": 0.2}}}
    for name in ("consensus", "diffusion", "diffusion-cta"):
        load_config({**drops, "algorithm": {"name": name}})
    with pytest.raises(ConfigError, match=r"gradient-tracking: needs mixing that preserves the "
                                          r"average, but .* is only row-stochastic"):
        load_config({**drops, "algorithm": {"name": "gradient-tracking"}})


# ---------------------------------------------------------------------- stragglers
def test_with_stragglers_consensus_equals_the_loop_without_their_gradients():
    """``X⁺ = W X − μ (G with the stragglers' rows 0)``, the stragglers drawn by the model."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.data import heterogeneous_quadratics
    from flatlab.topology.faults import Stragglers

    q = heterogeneous_quadratics(8, 3, seed=3)
    late = Stragglers(8, p=0.4, seed=6)
    X0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # noqa: N806
    xs = simulate("consensus", "ring", q.grad_fn(), X0, 30, 0.1, straggling=late.skips)
    W = torch.as_tensor(make("ring", 8).matrix())  # noqa: N806
    X, missed = X0.clone(), 0  # noqa: N806
    for t in range(30):
        G = q.grad(X)  # noqa: N806
        skip = torch.as_tensor(late.skips(t))
        G[skip] = 0
        missed += int(skip.sum())
        X = W @ X - 0.1 * G  # noqa: N806
        torch.testing.assert_close(xs[t + 1], X, rtol=0, atol=1e-13)
    assert 60 < missed < 130  # about 0.4 of 240
    assert not np.array_equal(late.skips(0), Stragglers(8, p=0.4, seed=7).skips(0)) or \
        not np.array_equal(late.skips(1), Stragglers(8, p=0.4, seed=7).skips(1))


def test_straggler_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"train.stragglers: 1.0 is not accepted; accepted: a "
                                          r"probability in \[0, 1\)"):
        load_config({**RUN, "train": {"steps": 4, "stragglers": 1.0}})
    with pytest.raises(ConfigError, match=r"ngpd asks the oracle for curvature factors"):
        load_config({**RUN, "topology": {"name": "ring", "nodes": 4},
                     "algorithm": {"name": "ngpd"}, "train": {"steps": 4, "stragglers": 0.1}})
    run = build(load_config({**RUN, "train": {"steps": 4, "stragglers": 0.5}}))
    from flatlab.topology.faults import Stragglers

    assert run.straggling(2).tolist() == Stragglers(9, 0.5, seed=7).skips(2).tolist()


def test_push_sum_under_drops_kept_by_the_sender_conserves_its_mass_exactly():
    """The sender keeps a share it could not deliver: every round stays column-stochastic, the
    numerators and weights keep their sums, and the de-biased ratio reaches the exact average
    (gossip only) although 30% of the messages are lost."""
    import torch

    from flatlab.algorithms import simulate
    from flatlab.topology.faults import MessageDrops

    base = make("exponential", 8, weights="push-sum")
    drops = MessageDrops(base, p=0.3, seed=4)
    assert drops.keeper == "sender" and drops.stochastic == "column"
    sched = drops.topology(300)
    for t in range(300):
        np.testing.assert_allclose(sched.matrix(t).sum(0), 1.0, rtol=0, atol=1e-15)
    X0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))  # noqa: N806
    xs, st = simulate("sgp", sched, lambda X, t: torch.zeros_like(X), X0, 300, 0.1,  # noqa: N803
                      return_state=True)
    torch.testing.assert_close(st.numerator.sum(0), X0.sum(0), rtol=0, atol=1e-13)
    assert float(st.w.sum()) == pytest.approx(8.0, abs=1e-13)
    torch.testing.assert_close(xs[-1], X0.mean(0).expand(8, 3), rtol=0, atol=1e-10)


def test_who_keeps_a_lost_share_is_checked_in_one_line():
    push = {**RUN, "topology": {"name": "ring", "nodes": 6, "weights": "push-sum",
                                "faults": {"model": "message_drops", "p": 0.2}},
            "algorithm": {"name": "sgp"}}
    load_config(push)  # the sender keeps: column-stochastic rounds, which sgp mixes over
    with pytest.raises(ConfigError, match=r"kept by the receiver need a doubly stochastic graph"):
        load_config({**push, "topology": {**push["topology"], "faults": {
            "model": "message_drops", "p": 0.2, "keeper": "receiver"}}})
    with pytest.raises(ConfigError, match=r"only message_drops has one"):
        load_config({**RUN, "topology": {**RUN["topology"], "faults": {
            "model": "link_failures", "p": 0.2, "keeper": "sender"}}})


def test_gradient_tracking_under_drops_loses_its_invariant_which_is_why_it_is_refused():
    """Tracking (``y⁺ = W_t y + ∇F(x⁺) − ∇F(x)``, ``x⁺ = W_t x − η y``) keeps ``Σ_i y_i =
    Σ_i ∇f_i(x_i)`` only while ``1ᵀ W_t = 1ᵀ``: under link failures (doubly stochastic) the
    invariant holds to rounding; under receiver-kept drops (row-stochastic) it drifts, and the
    method stops at a point where the local gradients do not cancel. Measured here on the
    recursion written out; ``gradient-tracking`` refuses row-stochastic rounds in one line."""
    import torch

    from flatlab.algorithms import make as make_algorithm
    from flatlab.data import heterogeneous_quadratics
    from flatlab.errors import AlgorithmError
    from flatlab.topology.faults import LinkFailures, MessageDrops

    q = heterogeneous_quadratics(8, 3, seed=5)
    base = make("ring", 8)

    def track(model, steps=1500, lr=0.05):
        x = torch.zeros(8, 3, dtype=torch.float64)
        g = q.grad(x)
        y = g.clone()
        drift = []
        for t in range(steps):
            W = torch.as_tensor(model.matrix(t))  # noqa: N806
            x_new = W @ x - lr * y
            g_new = q.grad(x_new)
            y = W @ y + g_new - g
            x, g = x_new, g_new
            drift.append(float((y.sum(0) - g.sum(0)).norm()))
        return np.array(drift), float(q.grad(x).sum(0).norm())

    kept, stationary_kept = track(LinkFailures(base, 0.3, seed=1))
    lost, stationary_lost = track(MessageDrops(base, 0.3, seed=1))
    assert kept.max() < 1e-12 and stationary_kept < 1e-9  # the exact minimizer
    assert lost[-1] > 1e-3 and stationary_lost > 1e-3  # the invariant and the fixed point lost
    with pytest.raises(AlgorithmError, match="only row-stochastic"):
        make_algorithm("gradient-tracking").check_topology(MessageDrops(base, 0.3).topology(4))


def test_a_short_draw_is_played_although_its_rounds_do_not_connect_every_node():
    """Connectivity is the base graph's: two rounds of lost ticks or failed links need not
    join every node (a run shortened to try an example), and they are played, not refused."""
    from scipy.sparse.csgraph import connected_components

    from flatlab.topology.faults import AsyncGossip

    ring = make("ring", 16)
    for faults in (AsyncGossip(ring, seed=0), LinkFailures(ring, p=0.9, seed=0)):
        short = faults.topology(2)
        union = sum(abs(w) for w in short.rounds)
        assert connected_components(union, directed=False)[0] > 1  # the draw itself splits
        assert short.drawn and short.period == 2
        for t in range(2):
            np.testing.assert_array_equal(short.matrix(t), faults.matrix(t))
    with pytest.raises(TopologyError, match="not connected"):
        Topology(name="two pieces", rounds=(np.kron(np.eye(2), np.full((2, 2), 0.5)),))
