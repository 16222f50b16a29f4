"""NodeSampler: shapes, per-node epochs without repeats, purity, determinism."""

import numpy as np
import pytest
import torch

from flatlab.data import NodeSampler, partition
from tests.data.conftest import one_line_error

N, C = 403, 5
LABELS = torch.as_tensor(np.random.default_rng(1).integers(0, C, size=N))
# inputs that name their own sample: x[j] = (j, -j, 2j) with a trailing image-like shape
X = torch.arange(N, dtype=torch.float32)[:, None, None] * torch.tensor([1.0, -1.0, 2.0])[:, None]
PART = partition(LABELS.numpy(), 6, "dirichlet", alpha=0.5, seed=0)  # m = 67


def _sample_ids(xb):
    return xb[..., 0, 0].round().long()  # [n, b]


def test_shapes_and_length():
    s = NodeSampler(X, LABELS, PART, batch_size=10, seed=0)
    assert (s.n, s.m, s.batch_size, s.steps_per_epoch, len(s)) == (6, 67, 10, 6, 6)
    xb, yb = s.batch(0)
    assert xb.shape == (6, 10, 3, 1) and yb.shape == (6, 10)
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert s.x.shape == (6, 67, 3, 1) and s.y.shape == (6, 67)
    assert s.epoch(0) == 0.0 and s.epoch(9) == pytest.approx(1.5)


def test_rows_are_the_full_samplers_rows():
    """A distributed rank's sampler (rows 2..3) gives exactly those rows of every batch."""
    full = NodeSampler(X, LABELS, PART, batch_size=10, seed=3)
    part = NodeSampler(X, LABELS, PART, batch_size=10, seed=3, rows=slice(2, 4))
    assert part.n == 2 and part.n_total == 6 and part.steps_per_epoch == full.steps_per_epoch
    for step in (0, 5, 6, 13):  # within and across epochs
        xb, yb = full.batch(step)
        pb, qb = part.batch(step)
        assert torch.equal(pb, xb[2:4]) and torch.equal(qb, yb[2:4])
    with pytest.raises(Exception, match="contiguous slice"):
        NodeSampler(X, LABELS, PART, batch_size=10, rows=slice(0, 6, 2))


def test_labels_follow_inputs():
    s = NodeSampler(X, LABELS, PART, batch_size=8, seed=3)
    for step in (0, 5, 17):
        xb, yb = s.batch(step)
        torch.testing.assert_close(yb, LABELS[_sample_ids(xb)])
        torch.testing.assert_close(xb, X[_sample_ids(xb)])


def test_one_epoch_is_a_prefix_of_a_permutation_of_each_node():
    b = 10
    s = NodeSampler(X, LABELS, PART, batch_size=b, seed=0)
    for epoch in (0, 1):
        steps = range(epoch * len(s), (epoch + 1) * len(s))
        seen = torch.cat([_sample_ids(s.batch(t)[0]) for t in steps], dim=1).numpy()  # [n, 60]
        perm = s.permutation(epoch).cpu().numpy()
        for i in range(PART.n):
            row = PART.indices[i]
            assert len(set(seen[i])) == len(s) * b  # no sample twice within an epoch
            assert set(seen[i]) <= set(row)  # only the node's own samples
            np.testing.assert_array_equal(np.sort(perm[i]), np.arange(PART.size))
            np.testing.assert_array_equal(seen[i], row[perm[i][: len(s) * b]])


def test_pure_function_of_step_and_deterministic():
    a = NodeSampler(X, LABELS, PART, batch_size=7, seed=11)
    b = NodeSampler(X, LABELS, PART, batch_size=7, seed=11)
    order = [30, 0, 12, 30, 1, 9, 0]
    first = {t: a.batch(t)[0].clone() for t in order}
    for t in reversed(order):
        torch.testing.assert_close(b.batch(t)[0], first[t], rtol=0, atol=0)
        torch.testing.assert_close(a.batch(t)[0], first[t], rtol=0, atol=0)
    c = NodeSampler(X, LABELS, PART, batch_size=7, seed=12)
    assert not torch.equal(c.batch(0)[0], first[0])


def test_nodes_and_epochs_get_different_orders():
    s = NodeSampler(X, LABELS, PART, batch_size=5, seed=0)
    p0 = s.permutation(0)
    assert len({tuple(r.tolist()) for r in p0}) == PART.n
    assert not torch.equal(s.permutation(1), p0)
    assert torch.equal(s.permutation(0), p0)


def test_dtype_cast_and_regression_targets():
    y = torch.randn(N, 2)
    s = NodeSampler(X, y, partition(LABELS.numpy(), 4, "iid"), batch_size=4, dtype=torch.float64)
    xb, yb = s.batch(3)
    assert xb.dtype == torch.float64 and yb.dtype == torch.float64 and yb.shape == (4, 4, 2)
    torch.testing.assert_close(yb, y[_sample_ids(xb)].double())
    s2 = NodeSampler(X, LABELS, PART, batch_size=4, dtype=torch.float64)
    assert s2.y.dtype == torch.int64


def test_batch_equal_to_m_gives_one_step_per_epoch():
    s = NodeSampler(X, LABELS, PART, batch_size=PART.size, seed=0)
    assert len(s) == 1
    ids = _sample_ids(s.batch(4)[0]).numpy()
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(PART.indices, axis=1))


@pytest.mark.parametrize("call, pattern", [
    (lambda: NodeSampler(X, LABELS, PART, batch_size=68), "batch_size (m = 67 samples per node)"),
    (lambda: NodeSampler(X, LABELS, PART, batch_size=0), "must be >= 1"),
    (lambda: NodeSampler(X, LABELS[:10], PART, batch_size=4), "y has 10"),
    (lambda: NodeSampler(X[:100], LABELS[:100], PART, batch_size=4), "the data have 100 samples"),
    (lambda: NodeSampler(X, LABELS, PART.indices, batch_size=4), "needs a flatlab.data.Partition"),
    (lambda: NodeSampler(X.numpy(), LABELS, PART, batch_size=4), "needs torch tensors"),
    (lambda: NodeSampler(X, LABELS, PART, batch_size=4, dtype=torch.int32), "floating dtype"),
    (lambda: NodeSampler(X, LABELS, PART, batch_size=4, seed=-2), "seed must be >= 0"),
    (lambda: NodeSampler(X, LABELS, PART, batch_size=4).batch(-1), "step must be >= 0"),
    (lambda: NodeSampler(X, LABELS, PART, batch_size=4, device="nowhere"), "bad device"),
])
def test_errors_are_one_line(call, pattern):
    assert pattern in one_line_error(call)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_do_not_depend_on_the_device():
    cpu = NodeSampler(X, LABELS, PART, batch_size=9, seed=4)
    gpu = NodeSampler(X, LABELS, PART, batch_size=9, seed=4, device="cuda")
    assert gpu.x.device.type == "cuda"
    for step in (0, 7, 8, 31):
        xb, yb = gpu.batch(step)
        assert xb.device.type == "cuda"
        torch.testing.assert_close(xb.cpu(), cpu.batch(step)[0], rtol=0, atol=0)
        torch.testing.assert_close(yb.cpu(), cpu.batch(step)[1], rtol=0, atol=0)
