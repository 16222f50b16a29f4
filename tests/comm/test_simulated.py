"""The simulated mixer against W @ X from the topology, exact invariants and traffic counts."""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.comm import SimulatedMixer
from flatlab.errors import FlatlabError
from tests import precision

pytestmark = pytest.mark.kernels  # float32 results of other kernels: make test-kernels

TOPOLOGIES = [("ring", 16), ("torus", 16), ("exponential", 16), ("one-peer-exponential", 16),
              ("erdos-renyi", 20), ("star", 9), ("complete", 5)]


@pytest.mark.parametrize("name,n", TOPOLOGIES)
def test_mix_equals_matrix_product_every_method(name, n):
    topo = flatlab.topology.make(name, n)
    methods = ["dense", "sparse"] + (["shift"] if topo.group is not None else [])
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    scale = precision.magnitude(X)  # the rows of W are convex weights: |W X| <= max |X|
    for method in methods:
        mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float64, method=method)
        for t in range(2 * topo.period + 1):
            ref = topo.matrix(t) @ X.numpy()
            precision.assert_close(mixer.mix(X, t), torch.from_numpy(ref), scale=scale,
                                   what=f"{method} mix, round {t}")


@pytest.mark.parametrize("name,n", TOPOLOGIES)
def test_gossip_preserves_mean_and_contracts_by_rho(name, n):
    """docs/reference/algorithms.md §16 items 1-2: 1ᵀ W X = 1ᵀ X, ‖WX − JX‖ ≤ ρ ‖X − JX‖."""
    topo = flatlab.topology.make(name, n)
    mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    Y = mixer.mix(X, 0)
    precision.assert_close(Y.mean(0), X.mean(0), scale=precision.magnitude(X), what="mean")
    if not topo.time_varying:
        rho = flatlab.spectral(topo).rho
        dev = lambda Z: float((Z - Z.mean(0)).norm())  # noqa: E731
        assert dev(Y) <= rho * dev(X) + 1e-12


def test_time_varying_product_over_a_period_is_exact_average():
    topo = flatlab.topology.make("one-peer-exponential", 16)
    mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float64)
    X = torch.randn(16, 3, dtype=torch.float64)
    Y = X
    for t in range(topo.period):
        Y = mixer.mix(Y, t)
    precision.assert_close(Y, X.mean(0).expand_as(X), scale=precision.magnitude(X) * topo.period,
                           what="product over a period")


def test_shift_without_self_weight_equals_matrix_product():
    """The shift form's other start: a kernel with no self term (one-peer exponential, minus it)."""
    topo = flatlab.topology.make("torus", 12)
    mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float64, method="shift")
    self_weight = mixer._shifts[0][0]
    assert not any(self_weight[0])
    mixer._shifts[0] = mixer._shifts[0][1:]
    X = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    W = topo.matrix(0) - self_weight[1] * np.eye(12)
    precision.assert_close(mixer.mix(X, 0), torch.from_numpy(W @ X.numpy()),
                           scale=precision.magnitude(X), what="shift mix without self term")


def test_traffic_counts():
    topo = flatlab.topology.make("exponential", 8)  # directed: out-degree 3 per node
    mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float32)
    X = torch.zeros(8, 10)
    mixer.mix(X, 0)
    outdeg = np.array([len(topo.out_neighbors(i)) for i in range(8)])
    np.testing.assert_array_equal(mixer.stats.messages.numpy(), outdeg)
    np.testing.assert_array_equal(mixer.stats.bytes.numpy(), outdeg * 10 * 4)
    src, dst = mixer.edges(0)
    W = topo.matrix(0)
    assert len(src) == int((W > 0).sum() - (np.diag(W) > 0).sum())
    assert all(W[int(d), int(s)] > 0 for s, d in zip(src, dst, strict=True))
    M = torch.ones(len(src), 3, dtype=torch.float64)
    assert mixer.exchange(M, 0) is M
    np.testing.assert_array_equal(mixer.stats.messages.numpy(), 2 * outdeg)
    np.testing.assert_array_equal(mixer.stats.bytes.numpy(), outdeg * 40 + outdeg * 24)
    with pytest.raises(FlatlabError, match="one message per edge"):
        mixer.exchange(M[:-1], 0)
    before = mixer.stats.total_bytes()
    torch.testing.assert_close(mixer.mean(torch.arange(16.0).reshape(8, 2)),
                               torch.tensor([7.0, 8.0]))
    assert mixer.stats.total_bytes() - before == 8 * ((2 * 7 * 2 * 4) // 8)
    st = mixer.stats.state_dict()
    mixer.stats.bytes.zero_()
    mixer.stats.load_state_dict(st)
    assert mixer.stats.total_bytes() == int(st["bytes"].sum())


def test_errors_and_auto_method():
    ring = flatlab.topology.make("ring", 600)
    assert SimulatedMixer(ring, device="cpu").method == "shift"
    er = flatlab.topology.make("erdos-renyi", 600, edge_prob=0.02)
    assert SimulatedMixer(er, device="cpu").method == "sparse"
    assert SimulatedMixer(flatlab.topology.make("ring", 8), device="cpu").method == "dense"
    # on the CPU, O(n deg P) beyond 16 nodes (benchmarks/mix.py): shift for the ring and the
    # torus, the sparse product for denser circulants and other graphs
    assert SimulatedMixer(flatlab.topology.make("ring", 32), device="cpu").method == "shift"
    assert SimulatedMixer(flatlab.topology.make("torus", 36), device="cpu").method == "shift"
    assert SimulatedMixer(flatlab.topology.make("exponential", 32), device="cpu").method == "sparse"
    assert SimulatedMixer(flatlab.topology.make("star", 32), device="cpu").method == "sparse"
    with pytest.raises(FlatlabError, match="circulant"):
        SimulatedMixer(flatlab.topology.make("star", 5), device="cpu", method="shift")
    with pytest.raises(FlatlabError, match="accepted"):
        SimulatedMixer(flatlab.topology.make("ring", 5), device="cpu", method="fast")
    with pytest.raises(FlatlabError, match="holds 5 nodes"):
        SimulatedMixer(flatlab.topology.make("ring", 5), device="cpu").mix(torch.zeros(4, 2))


def test_dtype_mismatch_is_one_clear_error():
    mixer = SimulatedMixer(flatlab.topology.make("ring", 4), device="cpu", dtype=torch.float32)
    with pytest.raises(FlatlabError, match="works in torch.float32 but X is torch.float64"):
        mixer.mix(torch.zeros(4, 2, dtype=torch.float64))
