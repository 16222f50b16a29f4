"""Links that fail in a run (issue 34): the schedule a run mixes with, and its config."""

import numpy as np
import pytest

from flatlab.errors import ConfigError, TopologyError
from flatlab.experiment import load_config
from flatlab.experiment.assemble import build
from flatlab.topology import make
from flatlab.topology.faults import LinkFailures

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
    ({"model": "node_churn", "p": 0.1}, r"node_churn in training .* is not built yet"),
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
