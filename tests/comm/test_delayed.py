"""Bounded communication delays: the schedule, the delayed mixer against a per-node loop, runs.

``x_i⁺ = Σ_j w_ij(t) x_j(t − d_{ij,t})`` (flatlab.comm.delayed) is checked against an explicit
loop over nodes and neighbours in float64, channel by channel; a run with delays resumes bit for
bit; what cannot run with delays is refused in one line. (The distributed mixer with delays is
run against the simulated one in tests/experiment/test_distributed_runs.py, FAULT_RUNS.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatlab.comm import DelayedMixer, SimulatedMixer
from flatlab.errors import ConfigError, FlatlabError
from flatlab.experiment import load_config, run
from flatlab.topology import make
from flatlab.topology.faults import LinkFailures, MessageDelays


def test_the_schedule_draws_delays_on_links_only_seeded_by_round():
    late = MessageDelays(6, tau=3, p=0.5, seed=1)
    d = late.delays(4)
    assert d.shape == (6, 6) and (np.diag(d) == 0).all() and d.min() >= 0 and d.max() <= 3
    np.testing.assert_array_equal(d, MessageDelays(6, tau=3, p=0.5, seed=1).delays(4))
    assert not np.array_equal(d, late.delays(5))
    many = np.stack([late.delays(t) for t in range(2000)])
    off = ~np.eye(6, dtype=bool)
    assert abs((many[:, off] > 0).mean() - 0.5) < 0.01  # late with probability p
    assert set(np.unique(many[:, off])) == {0, 1, 2, 3}  # uniform on 1 … tau when late
    fixed = MessageDelays(6, tau=2, fixed=True).delays(0)
    assert (fixed[off] == 2).all()  # p = 1, exactly tau


@pytest.mark.parametrize("kwargs,match", [
    ({"tau": 0}, "tau .* must be an integer in 1 … 100"),
    ({"tau": 101}, "tau .* must be an integer in 1 … 100"),
    ({"tau": 2, "p": 0}, r"p .* must be in \(0, 1\]"),
    ({"tau": 2, "fixed": "yes"}, "fixed must be true or false"),
])
def test_bad_delays_are_one_line(kwargs, match):
    with pytest.raises(FlatlabError, match=match):
        MessageDelays(4, **kwargs)


def loop_reference(topology, late, inputs):
    """Per node and neighbour: x_i⁺ = Σ_j w_ij(t) x_j(t − d_ij), channel by channel."""
    out = []
    for t, channels in enumerate(inputs):
        w, d = topology.matrix(t), late.delays(t)
        got = []
        for c, X in enumerate(channels):
            y = np.zeros_like(X)
            for i in range(X.shape[0]):
                for j in range(X.shape[0]):
                    if w[i, j] != 0:
                        y[i] += w[i, j] * inputs[max(0, t - d[i, j])][c][j]
            got.append(y)
        out.append(got)
    return out


@pytest.mark.parametrize("faulty", [False, True])
def test_the_delayed_mixer_equals_the_per_node_loop_channel_by_channel(faulty):
    ring = make("ring", 6)
    topology = LinkFailures(ring, p=0.3, seed=2).topology(5) if faulty else ring
    late = MessageDelays(6, tau=2, p=0.6, seed=7)
    rng = np.random.default_rng(0)
    inputs = [[rng.normal(size=(6, 3)), rng.normal(size=(6, 2, 2))] for _ in range(5)]
    mixer = DelayedMixer(topology, late, device="cpu", dtype=torch.float64)
    got = [[mixer.mix(torch.as_tensor(X), t).numpy() for X in channels]
           for t, channels in enumerate(inputs)]
    want = loop_reference(topology, late, inputs)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    plain = SimulatedMixer(topology, device="cpu", dtype=torch.float64)
    for t, channels in enumerate(inputs):
        for X in channels:
            plain.mix(torch.as_tensor(X), t)
    assert torch.equal(mixer.stats.bytes, plain.stats.bytes)  # the same messages, later


def test_delayed_gossip_reaches_consensus_but_not_the_average():
    late = MessageDelays(8, tau=3, p=0.7, seed=0)
    mixer = DelayedMixer(make("ring", 8), late, device="cpu", dtype=torch.float64)
    X = torch.as_tensor(np.random.default_rng(1).normal(size=(8, 4)))
    Y = X
    for t in range(600):
        Y = mixer.mix(Y, t)
    assert float((Y - Y.mean(0)).abs().max()) < 1e-10
    assert float((Y.mean(0) - X.mean(0)).abs().max()) > 1e-4  # a late value is not conserved


def test_the_past_round_trips_and_a_damaged_one_is_refused():
    late = MessageDelays(4, tau=2, seed=0)
    a = DelayedMixer(make("ring", 4), late, device="cpu", dtype=torch.float64)
    b = DelayedMixer(make("ring", 4), late, device="cpu", dtype=torch.float64)
    X = torch.randn(4, 3, dtype=torch.float64)
    for t in range(3):
        X = a.mix(X, t)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mix(X, 3), b.mix(X, 3))
    with pytest.raises(FlatlabError, match="delayed messages of channel 0"):
        b.load_state_dict({"channel0": torch.zeros(4, 5, 3)})


CFG = {"name": "late", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "logistic"},
       "topology": {"name": "ring", "nodes": 8, "delays": {"tau": 2, "p": 0.5}},
       "algorithm": {"name": "gradient-tracking"}, "optim": {"lr": 0.1},
       "train": {"steps": 20},
       "measure": {"every": 5, "train_subset": 100, "test_subset": 100, "metrics": ["loss"]},
       "checkpoint_every": 7, "device": "cpu"}


def test_a_resumed_run_with_late_messages_continues_bit_for_bit(tmp_path):
    cfg = load_config(CFG)
    run(cfg, tmp_path / "whole", progress=False)
    run(cfg, tmp_path / "cut", progress=False, stop_after=12)  # checkpoint at 7: past kept
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    # tracking gossips [X | Y] in one message: one channel, its last tau + 1 inputs
    assert ck["step"] == 7 and set(ck["delays"]) == {"channel0"}
    assert ck["delays"]["channel0"].shape[:2] == (8, 3)  # rows first: [n, tau + 1, numel]
    run(cfg, tmp_path / "cut", progress=False)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    on_time = load_config({k: v for k, v in CFG.items() if k != "topology"}
                          | {"topology": {"name": "ring", "nodes": 8}})
    run(on_time, tmp_path / "on-time", progress=False)
    c = torch.load(tmp_path / "on-time" / "checkpoint.pt", weights_only=True)
    assert not torch.equal(a["x"], c["state"]["x"]) and c["delays"] == {}


@pytest.mark.parametrize("change,match", [
    ({"algorithm": {"name": "sgp"}}, "topology.delays: sgp mixes column-stochastic"),
    ({"algorithm": {"name": "ecl"}}, "topology.delays: ecl exchanges per-edge duals"),
    ({"algorithm": {"name": "centralized"}}, "topology.delays: centralized averages"),
    ({"backend": "distributed", "topology": {"name": "ring", "nodes": 8, "delays": {"tau": 2},
                                             "faults": {"model": "link_failures", "p": 0.2}}},
     r"graph must be static .*, and topology.faults \(link_failures\) makes it vary"),
    ({"backend": "distributed", "topology": {"name": "ring", "nodes": 8, "delays": {"tau": 2},
                                             "local_steps": 2}},
     "and topology.local_steps=2 makes it vary"),
    ({"algorithm": {"name": "diffusion"},
      "topology": {"name": "ring", "nodes": 8, "delays": {"tau": 2},
                   "faults": {"model": "message_drops", "p": 0.1}}},
     "late messages need doubly stochastic gossip, but message_drops makes the rounds "
     "row-stochastic"),
    ({"topology": {"name": "ring", "nodes": 8, "delays": {"p": 0.5}}},
     "topology.delays needs tau"),
    ({"topology": {"name": "ring", "nodes": 8, "delays": {"tau": 2, "lag": 1}}},
     "topology.delays.lag is unknown"),
    ({"topology": {"name": "ring", "nodes": 8, "delays": {"tau": -1}}},
     "topology.delays: message delays: tau"),
])
def test_what_cannot_run_with_late_messages_is_refused_in_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(dict(CFG, **change))
    assert "\n" not in str(e.value)
