"""The tuning split (stratified, seeded, disjoint: data.holdout) and data.label_noise."""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.data import holdout, label_noise, load
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


def test_label_noise_relabels_exactly_a_share_with_other_classes_uniformly():
    ds = load("digits")
    noisy = label_noise(ds, 0.3, seed=5)
    changed = noisy.y_train != ds.y_train
    assert int(changed.sum()) == round(0.3 * ds.num_train) == noisy.info["noisy"]
    assert torch.equal(noisy.x_train, ds.x_train) and torch.equal(noisy.y_test, ds.y_test)
    # the new label is one of the C − 1 others, each about equally often (C − 1 = 9 shifts)
    shift = ((noisy.y_train - ds.y_train) % 10)[changed]
    counts = torch.bincount(shift, minlength=10).numpy()
    assert counts[0] == 0
    expected = changed.sum().item() / 9
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # chi-square with 8 degrees of freedom: P(> 26.1) = 0.001
    assert torch.equal(label_noise(ds, 0.3, seed=5).y_train, noisy.y_train)
    assert not torch.equal(label_noise(ds, 0.3, seed=6).y_train, noisy.y_train)
    assert label_noise(ds, 0.0) is ds
    with pytest.raises(DataError, match="label_noise must be < 1"):
        label_noise(ds, 1.0)
    with pytest.raises(DataError, match="needs a classification task"):
        label_noise(load("least-squares", nodes=4), 0.1)


def test_a_run_with_label_noise_trains_on_noisy_labels_and_tests_on_true_ones(tmp_path):
    cfg = {"data": {"name": "digits", "label_noise": 0.2, "holdout": 0.1},
           "model": {"name": "logistic"}, "topology": {"name": "ring", "nodes": 4},
           "train": {"steps": 2}, "measure": {"every": 2, "metrics": ["accuracy"]}}
    run = flatlab.experiment.runner.build(flatlab.experiment.load_config(cfg))
    want = holdout(label_noise(load("digits"), 0.2), 0.1)  # noise first, then the holdout split
    assert torch.equal(run.test_eval[1], want.y_test)
    assert run.dataset.info["label_noise"] == 0.2
    with pytest.raises(ConfigError, match="data.label_noise"):
        flatlab.experiment.load_config({**cfg, "data": {"name": "digits", "label_noise": -0.1}})
