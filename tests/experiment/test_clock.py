"""The simulated wall clock (issue 34: time, not only steps) against its formula."""

import math

import numpy as np
import pandas as pd
import pytest

from flatlab.comm.clock import WallClock
from flatlab.errors import ConfigError
from flatlab.experiment import load_config, run

CFG = {"name": "clk", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
       "model": {"name": "logistic"}, "topology": {"name": "ring", "nodes": 8},
       "algorithm": {"name": "diffusion"}, "optim": {"lr": 0.1}, "train": {"steps": 20},
       "measure": {"every": 5, "train_subset": 100, "test_subset": 100, "metrics": ["loss"]},
       "clock": {"compute": 0.1, "latency": 0.01, "bandwidth": 1.0e6},
       "checkpoint_every": 7, "device": "cpu"}
#: Bytes a node sends a step on the ring: 2 neighbours x (64 x 10 + 10) float32 parameters.
SENT = 2 * 650 * 4


def sim_time(path):
    m = pd.read_parquet(path / "metrics.parquet")
    t = m[m.metric == "sim_time"]
    return dict(zip(t.step, t.value, strict=True))


def test_a_synchronous_step_takes_compute_transfer_and_latency(tmp_path):
    """Every node computes 0.1 s and sends 5200 bytes at 1 MB/s; a round adds 10 ms."""
    run(load_config(CFG), tmp_path / "r", progress=False)
    got = sim_time(tmp_path / "r")
    assert sorted(got) == [0, 5, 10, 15, 20]
    m = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    assert sorted(set(m.loc[m.metric == "train_loss", "step"])) == [0, 5, 10, 15, 20]  # measured
    for step, value in got.items():
        assert value == pytest.approx(step * (0.1 + SENT / 1e6 + 0.01), rel=1e-12)


def test_a_local_step_sends_nothing_and_adds_no_latency(tmp_path):
    cfg = dict(CFG, topology={"name": "ring", "nodes": 8, "local_steps": 5})
    run(load_config(cfg), tmp_path / "r", progress=False)
    got = sim_time(tmp_path / "r")  # one gossip round in 5 steps
    for step, value in got.items():
        rounds = step // 5
        assert value == pytest.approx(step * 0.1 + rounds * (SENT / 1e6 + 0.01), rel=1e-12)


def test_a_resumed_run_has_the_uninterrupted_clock(tmp_path):
    cfg = load_config(dict(CFG, clock={"compute": 0.05, "compute_cv": 0.8, "latency": 0.002}))
    run(cfg, tmp_path / "whole", progress=False)
    run(cfg, tmp_path / "cut", progress=False, stop_after=12)  # checkpoint at 7
    run(cfg, tmp_path / "cut", progress=False)
    assert sim_time(tmp_path / "cut") == sim_time(tmp_path / "whole")


def test_compute_times_are_lognormal_with_the_stated_mean_and_spread_however_split():
    clock = WallClock(4, compute=0.2, compute_cv=0.5, seed=3)
    draws = np.stack([clock.compute_times(t) for t in range(5000)])
    mean, sd = draws.mean(), draws.std()
    assert abs(mean - 0.2) < 3 * sd / math.sqrt(draws.size)
    assert sd / mean == pytest.approx(0.5, rel=0.05)
    np.testing.assert_array_equal(clock.compute_times(7)[2:], clock.compute_times(7)[2:4])
    # the synchronous step waits for the slowest: E max over 4 nodes is above the mean
    assert draws.max(1).mean() > 1.3 * mean


@pytest.mark.parametrize("field, value, match", [
    ("compute", -1.0, r"clock.compute: -1.0 is not accepted; accepted: seconds >= 0"),
    ("bandwidth", 0.0, r"clock.bandwidth: 0.0 is not accepted; accepted: bytes per second"),
    ("latency", -0.1, r"clock.latency"),
])
def test_bad_clock_settings_are_one_line(field, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(dict(CFG, clock={**CFG["clock"], field: value}))


def test_a_deadline_makes_the_slow_nodes_stragglers_and_caps_the_wait(tmp_path):
    """``T_t = max_i (min(c_i, D) + b_i/B) + L``; the nodes past D miss that step's gradient."""
    from flatlab.experiment.assemble import build

    clock = {"compute": 0.1, "compute_cv": 0.8, "latency": 0.01, "bandwidth": 1.0e6,
             "deadline": 0.15}
    cfg = load_config(dict(CFG, clock=clock, seed=2))
    wall = WallClock(8, 0.1, 0.8, 0.01, 1.0e6, seed=2, deadline=0.15)
    built = build(cfg)
    late = np.stack([wall.late(t) for t in range(20)])
    assert 0.05 < late.mean() < 0.5  # some nodes, not all, miss the deadline
    for t in range(20):
        np.testing.assert_array_equal(built.straggling(t).numpy(), late[t])
        np.testing.assert_array_equal(late[t], wall.compute_times(t) > 0.15)
    run(cfg, tmp_path / "d", progress=False)
    want = sum(np.minimum(wall.compute_times(t), 0.15).max() + SENT / 1e6 + 0.01
               for t in range(20))
    assert sim_time(tmp_path / "d")[20] == pytest.approx(want, rel=1e-12)
    run(load_config(dict(CFG, clock={**clock, "deadline": None}, seed=2)), tmp_path / "w",
        progress=False)
    assert sim_time(tmp_path / "w")[20] > sim_time(tmp_path / "d")[20]  # it waited for them
    import torch

    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["state"]["x"]
            for r in ("d", "w"))
    assert not torch.equal(a, b)  # and their gradients were missing
    far = load_config(dict(CFG, clock={**clock, "deadline": 1e9}, seed=2))
    assert not any(build(far).straggling(t).any() for t in range(20))


@pytest.mark.parametrize("change, match", [
    ({"clock": {"compute": 0.1, "deadline": 0.0}}, "clock.deadline: 0.0 is not accepted"),
    ({"clock": {"latency": 0.1, "deadline": 1.0}}, "beside a clock.compute > 0"),
    ({"clock": {"compute": 0.1, "deadline": 1.0},
      "topology": {"name": "ring", "nodes": 8, "faults": {"model": "async_gossip"}},
      "algorithm": {"name": "ad-psgd"}}, "an asynchronous network has no round to close"),
    ({"clock": {"compute": 0.1, "deadline": 1.0}, "algorithm": {"name": "centralized"}},
     "centralized cannot have"),
])
def test_bad_deadlines_are_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(dict(CFG, **change))
    assert "\n" not in str(e.value)
