"""CHOCO-SGD and AdaGossip: exact properties (docs/reference/algorithms.md §9.2-9.3, §16 item 10).

On float64 quadratics: the identity compressor with gamma = 1 is diffusion step for step; any
compressor with a common scalar gamma preserves the network mean exactly; CHOCO-gossip alone
reaches consensus at the initial mean; AdaGossip's per-coordinate steps move the mean. Bytes are
counted at the compressed size.
"""

import pytest
import torch

import flatlab
from flatlab.algorithms import make, simulate
from flatlab.comm import SimulatedMixer
from flatlab.comm import compress as C
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError

N, D = 16, 3


def _setup(n=N, d=D, seed=4):
    q = heterogeneous_quadratics(n, d, seed=seed, condition=3.0)
    X0 = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # noqa: N806
    return q, X0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_identity_compressor_with_gamma_one_is_diffusion(momentum):
    q, X0 = _setup()  # noqa: N806
    topo = flatlab.topology.make("ring", N)
    hp = {"momentum": momentum}
    ref = simulate(make("dsgdm", **hp) if momentum else make("diffusion"), topo, q.grad_fn(),
                   X0, steps=300, lr=0.05)
    got = simulate(make("choco", compressor="identity", gamma=1.0, **hp), topo, q.grad_fn(),
                   X0, steps=300, lr=0.05)
    assert float((got - ref).abs().max()) < 1e-12
    assert float((ref[-1] - ref[0]).abs().max()) > 0.1


COMPRESSORS = [{"compressor": "top-k", "fraction": 1 / 3}, {"compressor": "sign"},
               {"compressor": "qsgd", "levels": 2}, {"compressor": "random-k", "fraction": 0.5},
               {"compressor": "random-k", "fraction": 0.5, "scaled": True, "gamma": 0.05}]


@pytest.mark.parametrize("hp", COMPRESSORS, ids=lambda h: "-".join(map(str, h.values())))
@pytest.mark.parametrize("topo_name", ["ring", "torus", "exponential-undirected"])
def test_common_scalar_gamma_preserves_the_network_mean(hp, topo_name):
    q, X0 = _setup()  # noqa: N806
    topo = flatlab.topology.make(topo_name, N)
    lr = 0.05
    xs = simulate(make("choco", **{"gamma": 0.3, **hp}), topo, q.grad_fn(), X0, steps=200,
                  lr=lr)
    # mean(x^{t+1}) = mean(x^{t+1/2}) = mean(x^t) - lr mean(grad(x^t))
    pred = xs[:-1].mean(1) - lr * torch.stack([q.grad(x) for x in xs[:-1]]).mean(1)
    assert float((xs[1:].mean(1) - pred).abs().max()) < 1e-13
    assert float((xs[-1] - xs[0]).abs().max()) > 0.1  # it moved


def test_choco_gossip_reaches_consensus_at_the_initial_mean():
    _, X0 = _setup()  # noqa: N806
    topo = flatlab.topology.make("ring", N)
    zero = lambda X, t: torch.zeros_like(X)  # noqa: E731 - lr = 0: gossip alone
    xs = simulate(make("choco", compressor="top-k", fraction=1 / 3, gamma=0.3), topo, zero, X0,
                  steps=3000, lr=0.0, stride=100)
    final = xs[-1]
    assert float((final - final.mean(0)).abs().max()) < 1e-12  # consensus (§16: 2e-15)
    assert float((final.mean(0) - X0.mean(0)).abs().max()) < 1e-12  # at the initial mean
    # and the error contracts on the way (not a stall at the start)
    err = (xs - xs.mean(1, keepdim=True)).norm(dim=(1, 2))
    assert float(err[10]) < 1e-2 * float(err[0])


def test_choco_diverges_with_gamma_one_and_top_k():
    q, X0 = _setup()  # noqa: N806
    xs = simulate(make("choco", compressor="top-k", fraction=1 / 3, gamma=1.0), "ring",
                  q.grad_fn(), X0, steps=400, lr=0.05, stride=100)
    assert not torch.isfinite(xs[-1]).all() or float(xs[-1].abs().max()) > 1e4 * float(
        X0.abs().max())


def test_adagossip_moves_the_network_mean():
    q, X0 = _setup()  # noqa: N806
    lr = 0.05
    xs = simulate(make("adagossip", compressor="top-k", fraction=1 / 3, gamma=0.5, beta=0.9),
                  "ring", q.grad_fn(), X0, steps=200, lr=lr)
    pred = xs[:-1].mean(1) - lr * torch.stack([q.grad(x) for x in xs[:-1]]).mean(1)
    assert float((xs[1:].mean(1) - pred).abs().max()) > 1e-4  # not preserved, not assumed


def test_adagossip_with_identity_and_small_errors_is_choco_gamma_one():
    # e is tiny compared with gamma, so every gamma_i clamps to 1: CHOCO with gamma = 1
    q, X0 = _setup()  # noqa: N806
    X0 = X0 * 1e-6  # noqa: N806
    small = lambda X, t: 1e-6 * q.grad(X)  # noqa: E731
    a = simulate(make("adagossip", compressor="identity"), "ring", small, X0, steps=50, lr=0.05)
    b = simulate(make("choco", compressor="identity", gamma=1.0), "ring", small, X0, steps=50,
                 lr=0.05)
    assert float((a - b).abs().max()) < 1e-18


@pytest.mark.parametrize("hp", [{"compressor": "top-k", "fraction": 0.01},
                                {"compressor": "qsgd", "levels": 15},
                                {"compressor": "sign", "per_layer": False}])
def test_bytes_are_the_compressed_size(hp):
    from flatlab.engine import GradientOracle, NodeStack

    template = flatlab.models.make("mlp", input_shape=(64,), num_classes=10, seed=0,
                                   hidden=(32,))
    stack = NodeStack(template, 8, device="cpu")
    oracle = GradientOracle(stack)
    mixer = SimulatedMixer(flatlab.topology.make("ring", 8), device="cpu")
    algo = make("choco", **hp)
    data = flatlab.data.load("digits", seed=0)
    batch = (data.x_train[:64].reshape(8, 8, -1).float(), data.y_train[:64].reshape(8, 8))
    state = algo.init(stack.initial_params(), oracle, mixer)
    for _ in range(3):
        state = algo.step(state, batch, oracle, mixer, 0.1)
    blocks = algo.blocks(oracle)
    per_msg = C.payload_bytes(algo.q, stack.P, blocks)
    assert torch.equal(mixer.stats.bytes, torch.full((8,), 3 * 2 * per_msg))
    assert per_msg < 0.25 * 4 * stack.P
    if hp.get("per_layer", True):
        assert len(blocks) == len(list(template.parameters()))


def test_refusals_are_one_line():
    with pytest.raises(AlgorithmError, match="choco: needs a static topology"):
        make("choco").check_topology(flatlab.topology.make("one-peer-exponential", 8))
    with pytest.raises(AlgorithmError, match="unknown compressor 'top1'"):
        make("choco", compressor="top1")
    with pytest.raises(AlgorithmError, match="adagossip: .*fraction must be in"):
        make("adagossip", fraction=2.0)
    with pytest.raises(AlgorithmError, match="gamma must be in"):
        make("choco", gamma=0.0)
    with pytest.raises(AlgorithmError, match="beta must be in"):
        make("adagossip", beta=1.0)


def test_function_oracle_compresses_the_whole_vector():
    q, X0 = _setup()  # noqa: N806
    assert make("choco").blocks(FunctionOracle(q.grad_fn())) is None
