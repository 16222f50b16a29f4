"""The tuning split: stratified, seeded, disjoint, and wired into runs as data.holdout."""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.data import holdout, load
from flatlab.errors import ConfigError, DataError


def _rows(x):
    return {tuple(r) for r in x.reshape(x.shape[0], -1).tolist()}


def test_holdout_is_a_stratified_disjoint_seeded_split_of_the_training_set():
    ds = load("digits", seed=0)
    h = holdout(ds, 0.2, seed=3)
    assert h.num_train + h.num_test == ds.num_train
    assert _rows(h.x_train).isdisjoint(_rows(h.x_test))
    assert _rows(h.x_train) | _rows(h.x_test) == _rows(ds.x_train)
    full = torch.bincount(ds.y_train, minlength=10).numpy()
    held = torch.bincount(h.y_test, minlength=10).numpy()
    np.testing.assert_array_equal(held, np.round(0.2 * full))  # per class
    assert torch.equal(holdout(ds, 0.2, seed=3).x_test, h.x_test)
    assert not torch.equal(holdout(ds, 0.2, seed=4).x_test, h.x_test)
    assert h.info["holdout"] == 0.2 and _rows(h.x_test).isdisjoint(_rows(ds.x_test))


def test_holdout_keeps_natural_nodes_equal_and_drops_the_optimum():
    ds = load("least-squares", nodes=4, seed=0)
    h = holdout(ds, 0.25)
    assert np.bincount(h.node_ids).tolist() == [np.bincount(ds.node_ids)[0] * 3 // 4] * 4
    assert ds.optimum is not None and h.optimum is None
    with pytest.raises(DataError, match="holdout must be < 1"):
        holdout(ds, 1.0)


def test_a_run_with_holdout_evaluates_on_the_held_out_share(tmp_path):
    cfg = {"data": {"name": "digits", "holdout": 0.1}, "model": {"name": "logistic"},
           "topology": {"name": "ring", "nodes": 4}, "train": {"steps": 2},
           "measure": {"every": 2, "metrics": ["accuracy"]}}
    run = flatlab.experiment.runner.build(flatlab.experiment.load_config(cfg))
    held = holdout(load("digits"), 0.1)
    assert torch.equal(run.test_eval[0], held.x_test) and held.num_test == 142
    with pytest.raises(ConfigError, match="data.holdout"):
        flatlab.experiment.load_config({**cfg, "data": {"name": "digits", "holdout": 1.5}})
