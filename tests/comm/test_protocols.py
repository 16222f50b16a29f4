"""Both mixers implement both declared interfaces: gossip (Mixer) and collectives
(CollectiveGroup), and their edge slots point each exchanged message at its dual's place."""

import socket

import pytest
import torch
import torch.distributed as dist
from typing_extensions import get_protocol_members

import flatlab
from flatlab.comm import CollectiveGroup, DistributedMixer, EdgeSlots, Mixer, SimulatedMixer

# every attribute flatlab.experiment and flatlab.measures use of a run's mixer (either class)
USED_BY_RUNNER_AND_MEASURES = ("rank", "world_size", "device", "all_reduce", "gather",
                               "gather_object", "gathered_stats", "waiting", "calls", "stats",
                               "local_rows", "is_main", "mix", "mean", "exchange", "edges",
                               "in_edges", "topology", "n", "period")


@pytest.fixture
def one_process_group():
    """A gloo group of one process (DistributedMixer needs an initialised group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def mixers(topo):
    return [SimulatedMixer(topo, device="cpu", dtype=torch.float64),
            DistributedMixer(topo, dtype=torch.float64)]


def test_protocol_members_are_the_declared_ones():
    assert get_protocol_members(Mixer) == {"n", "stats", "local_rows", "mix", "exchange", "mean",
                                           "edges", "in_edges", "edge_slots", "require"}
    assert get_protocol_members(CollectiveGroup) == {
        "rank", "world_size", "device", "stats", "calls", "local_rows", "is_main", "waiting",
        "all_reduce", "gather", "gather_object", "gathered_stats"}


def test_both_mixers_satisfy_both_protocols(one_process_group):
    for mixer in mixers(flatlab.topology.make("ring", 4)):
        assert isinstance(mixer, Mixer) and isinstance(mixer, CollectiveGroup)
        for proto in (Mixer, CollectiveGroup):
            for member in get_protocol_members(proto):
                assert hasattr(mixer, member), (type(mixer).__name__, member)
        for member in USED_BY_RUNNER_AND_MEASURES:
            assert hasattr(mixer, member), (type(mixer).__name__, member)
        assert mixer.calls >= 0 and not mixer.waiting and mixer.is_main
        assert mixer.rank == 0 and mixer.world_size == 1
        assert mixer.local_rows == slice(0, 4) and mixer.n == 4


@pytest.mark.parametrize("name,n", [("ring", 8), ("torus", 9), ("star", 6), ("exponential", 8),
                                    ("one-peer-exponential", 8)])
def test_edge_slots_locate_every_edge_in_both_neighbour_lists(name, n):
    topo = flatlab.topology.make(name, n)
    mixer = SimulatedMixer(topo, device="cpu", dtype=torch.float64)
    for t in range(topo.period):
        s = mixer.edge_slots(t)
        assert isinstance(s, EdgeSlots)
        W = topo.matrix(t)
        for i in range(n):
            want = sorted(j for j in range(n) if j != i and (W[i, j] != 0 or W[j, i] != 0))
            assert s.neighbors[i, :len(want)].tolist() == want
            assert (s.neighbors[i, len(want):] == n).all() and int(s.degree[i]) == len(want)
        assert s.neighbors.shape[1] == int(s.degree.max())
        src, dst = mixer.edges(t)
        assert torch.equal(s.neighbors[s.out_rows, s.out_slots], dst)
        assert torch.equal(s.out_rows, src)
        isrc, idst = mixer.in_edges(t)
        assert torch.equal(s.neighbors[s.in_rows, s.in_slots], isrc)
        assert torch.equal(s.in_rows, idst)


def test_require_applies_the_condition_to_the_schedule(one_process_group):
    topo = flatlab.topology.make("one-peer-exponential", 4)
    for mixer in mixers(topo):
        seen = []
        mixer.require(seen.append)
        assert seen == [topo]
        with pytest.raises(flatlab.AlgorithmError, match="choco: needs a static topology"):
            mixer.require(flatlab.algorithms.make("choco").check_topology)
