"""Partitions: sizes, disjointness, determinism, heterogeneity, against independent references."""

import numpy as np
import pandas as pd
import pytest
import torch

from flatlab import data
from flatlab.data import Partition, partition
from tests.data.conftest import one_line_error
from tests.data.reference_dirichlet import dirichlet_partition

N, C = 2000, 10
LABELS = np.random.default_rng(0).integers(0, C, size=N)
SCHEMES = [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("classes", {"classes_per_node": 3}),
           ("shards", {"shards_per_node": 2})]


def _loop_histogram(indices, labels, classes):
    hist = np.zeros((len(indices), classes), dtype=np.int64)
    for i, row in enumerate(indices):
        for j in row:
            hist[i, labels[j]] += 1
    return hist


@pytest.mark.parametrize("scheme, kwargs", SCHEMES)
@pytest.mark.parametrize("n", [1, 7, 16])
def test_equal_sizes_disjoint_rows_and_histogram(scheme, kwargs, n):
    if scheme == "classes" and n * kwargs["classes_per_node"] < C:
        assert "cannot cover all 10 classes" in one_line_error(partition, LABELS, n, scheme,
                                                                **kwargs)
        return
    p = partition(LABELS, n, scheme, seed=3, **kwargs)
    assert isinstance(p, Partition) and p.scheme == scheme
    assert p.indices.dtype == np.int64 and p.indices.shape == (n, p.size) and p.n == n
    flat = p.indices.ravel()
    assert len(np.unique(flat)) == flat.size  # disjoint rows, no repeats
    assert flat.min() >= 0 and flat.max() < N
    if scheme in ("iid", "dirichlet", "shards"):
        assert p.size == N // n if scheme != "shards" else p.size == 2 * (N // (2 * n))
    np.testing.assert_array_equal(p.histogram, _loop_histogram(p.indices, LABELS, C))


@pytest.mark.parametrize("scheme, kwargs", SCHEMES)
def test_deterministic_per_seed(scheme, kwargs):
    a = partition(LABELS, 8, scheme, seed=1, **kwargs)
    b = partition(LABELS, 8, scheme, seed=1, **kwargs)
    c = partition(LABELS, 8, scheme, seed=2, **kwargs)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert a.params["seed"] == 1


def test_iid_is_a_prefix_of_a_permutation():
    p = partition(LABELS, 7, "iid", seed=0)
    assert p.size == N // 7
    expected = np.random.default_rng(0).permutation(N)[: 7 * (N // 7)].reshape(7, -1)
    np.testing.assert_array_equal(p.indices, expected)


@pytest.mark.parametrize("n, alpha", [(16, 1.0), (25, 0.5), (7, 10.0), (33, 0.3)])
def test_dirichlet_matches_the_official_algorithm(n, alpha):
    labels = np.random.default_rng(5).integers(0, C, size=1501)
    ref = dirichlet_partition(labels, n, alpha, seed=4)
    np.testing.assert_array_equal(partition(labels, n, "dirichlet", alpha=alpha, seed=4).indices,
                                  ref)


def test_dirichlet_large_alpha_is_nearly_iid():
    p = partition(LABELS, 10, "dirichlet", alpha=1e4, seed=0)
    glob = np.bincount(LABELS, minlength=C) / N
    local = p.histogram / p.size
    tv = 0.5 * np.abs(local - glob).sum(axis=1)
    assert tv.max() < 0.1
    np.testing.assert_allclose(p.summary()["tv"], 0.5 * np.abs(local - p.histogram.sum(0)
                                                                / p.histogram.sum()).sum(1))


def test_dirichlet_small_alpha_concentrates_each_class():
    p = partition(LABELS, 10, "dirichlet", alpha=0.01, seed=0)
    per_class = p.histogram / p.histogram.sum(axis=0, keepdims=True)  # [n, C]
    top2 = np.sort(per_class, axis=0)[-2:].sum(axis=0)
    assert top2.min() > 0.8  # most of each class sits on at most two nodes (chunk borders)
    assert (p.histogram > 0).sum(axis=1).mean() < 3


def test_dirichlet_alpha_too_small_for_many_nodes():
    labels = np.arange(400) % 2
    msg = one_line_error(partition, labels, 40, "dirichlet", alpha=0.001)
    assert "too small" in msg and "n=40" in msg


def test_classes_k_per_node_and_all_covered():
    for k in (1, 2, 5):
        p = partition(LABELS, 10, "classes", classes_per_node=k, seed=k)
        assert np.all((p.histogram > 0).sum(axis=1) == k)
        assert np.all(p.histogram.sum(axis=0) > 0)
    for n, k in [(10, 1), (20, 1), (5, 2), (7, 3)]:  # coverage by chance is unlikely here
        p = partition(LABELS[:1000] % 10 if n == 20 else LABELS, n, "classes",
                      classes_per_node=k, seed=0)
        assert np.all((p.histogram > 0).sum(axis=1) == k)
        assert np.all(p.histogram.sum(axis=0) > 0)
    full = partition(LABELS, 4, "classes", classes_per_node=C)
    assert np.all(full.histogram > 0)


def test_classes_divides_each_class_evenly_before_truncation():
    labels = np.repeat(np.arange(4), 60)  # 60 per class
    p = partition(labels, 4, "classes", classes_per_node=4, seed=0)
    # every node holds every class: 15 of each (60 / 4), and nothing is truncated
    np.testing.assert_array_equal(p.histogram, np.full((4, 4), 15))


def test_shards_give_few_classes_per_node():
    labels = np.repeat(np.arange(10), 100)
    p = partition(labels, 10, "shards", shards_per_node=2, seed=0)
    assert p.size == 100
    assert np.all((p.histogram > 0).sum(axis=1) <= 2)
    # each shard is label-sorted, so each half-row holds a single label
    halves = labels[p.indices].reshape(10, 2, 50)
    assert np.all(halves == halves[:, :, :1])


def test_natural_uses_node_ids():
    ds = data.load("least-squares", nodes=4, samples_per_node=8, seed=0)
    p = partition(ds, 4, "natural")
    np.testing.assert_array_equal(p.indices, np.arange(32).reshape(4, 8))
    assert p.histogram is None and list(p.summary().columns) == ["node", "size"]
    assert "has 4 nodes but n=5" in one_line_error(partition, ds, 5, "natural")
    gm = data.load("gaussian-mixture", nodes=5, samples=103, mc_samples=1000)
    pg = partition(gm, 5, "natural")
    assert pg.size == 20
    np.testing.assert_array_equal(gm.node_ids[pg.indices], np.repeat(np.arange(5), 20).reshape(5,
                                                                                             20))


def test_regression_accepts_only_iid_and_natural():
    ds = data.load("least-squares", nodes=2, samples_per_node=10)
    assert partition(ds, 2, "iid").histogram is None
    msg = one_line_error(partition, ds, 2, "dirichlet")
    assert "regression" in msg and "iid, natural" in msg


def test_dataset_and_tensor_inputs_agree():
    ds = data.load("gaussian-mixture", classes=4, samples=400, mc_samples=1000)
    a = partition(ds, 4, "dirichlet", alpha=0.3, seed=2)
    b = partition(ds.y_train.numpy(), 4, "dirichlet", alpha=0.3, seed=2)
    c = partition(ds.y_train, 4, "dirichlet", alpha=0.3, seed=2)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, c.indices)
    assert a.histogram.shape == (4, 4)


def test_summary_columns():
    p = partition(LABELS, 6, "classes", classes_per_node=2, seed=0)
    df = p.summary()
    assert isinstance(df, pd.DataFrame) and len(df) == 6
    assert list(df.columns) == (["node", "size"] + [f"class_{c}" for c in range(C)]
                                + ["classes", "tv"])
    assert (df["classes"] == 2).all() and (df["size"] == p.size).all()
    assert ((df["tv"] > 0) & (df["tv"] <= 1)).all()


@pytest.mark.parametrize("call, pattern", [
    (lambda: partition(LABELS, 4, "random"), "unknown partition scheme 'random'; accepted: iid"),
    (lambda: partition(LABELS, 0), "n must be >= 1"),
    (lambda: partition(LABELS, N + 1), f"must be <= {N}"),
    (lambda: partition(LABELS, 2.5), "must be an integer"),
    (lambda: partition(LABELS, 4, "dirichlet", alpha=0), "alpha must be > 0"),
    (lambda: partition(LABELS, 4, "dirichlet", alpha=float("inf")), "alpha must be finite"),
    (lambda: partition(LABELS, 4, "classes", classes_per_node=11),
     "classes_per_node must be <= 10"),
    (lambda: partition(LABELS, 4, "classes", classes_per_node=2), "cannot cover all 10 classes"),
    (lambda: partition(np.array([0, 0, 2, 2]), 2, "classes", classes_per_node=1),
     "not all present"),
    (lambda: partition(LABELS, 4, "shards", shards_per_node=0), "shards_per_node must be >= 1"),
    (lambda: partition(LABELS[:10], 4, "shards", shards_per_node=3), "12 shards exceed the 10"),
    (lambda: partition(LABELS, 4, "natural"), "needs a dataset with node_ids"),
    (lambda: partition(LABELS, 4, seed=-1), "seed must be >= 0"),
    (lambda: partition(np.zeros((3, 2), dtype=int), 2), "1-D integer label array"),
    (lambda: partition(np.array([0.5, 1.0]), 2), "1-D integer label array"),
    (lambda: partition(np.array([-1, 1]), 2), "non-negative"),
    (lambda: partition(np.array([], dtype=int), 1), "empty"),
    (lambda: partition(torch.randn(5, 3), 2), "1-D integer label array"),
])
def test_errors_are_one_line(call, pattern):
    assert pattern in one_line_error(call)
