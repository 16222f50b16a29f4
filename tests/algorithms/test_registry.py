"""One suite over the whole registry (every name in ``available()``), as optax does.

Later algorithms get these checks by registering: construction and errors, state shapes and
dtypes across steps, checkpoint round trips that continue bit for bit, device-free plain state,
and convergence on a well-conditioned quadratic to a point where the local gradients sum to zero
(exact methods: to x* itself). The multi-process counterpart, every registered algorithm on the
distributed mixer against the simulated one, is ``tests/comm/test_distributed.py``.
"""

import dataclasses

import pytest
import torch

import flatlab
from flatlab.algorithms import (
    Algorithm,
    State,
    aliases,
    available,
    get,
    load_state,
    make,
    simulate,
    state_dict,
)
from flatlab.comm import SimulatedMixer
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle
from flatlab.errors import AlgorithmError

NAMES = available()


REFUSALS = {"d2": "lambda_min(W) > -1/3", "ecl": "needs a", "ngpd": "needs a",
            "choco": "needs a static", "adagossip": "needs a static",
            "ad-psgd": "averages with one random neighbour per tick"}


def topology_for(name, topology):
    """``topology``, or for an algorithm that refuses it (d2 where ``lambda_min(W) <= -1/3``, the
    primal-dual methods on directed or time-varying graphs) the undirected exponential graph of
    the same size, after checking that the refusal names why."""
    try:
        make(name).check_topology(topology)
        return topology
    except AlgorithmError as e:
        assert name in REFUSALS and REFUSALS[name] in str(e), str(e)
    if name == "ad-psgd":  # its own network: asynchronous pairwise ticks
        from flatlab.topology.faults import AsyncGossip

        return AsyncGossip(flatlab.topology.make("exponential-undirected", topology.n),
                           seed=0).topology(64)
    return flatlab.topology.make("exponential-undirected", topology.n)


def test_registry_lists_and_aliases():
    assert {"centralized", "consensus", "diffusion", "diffusion-cta"} <= set(NAMES)
    assert aliases()["dsgd"] == "diffusion"
    assert get("dsgd") is get("diffusion")
    assert type(make("d-psgd")).name == "consensus"
    with pytest.raises(AlgorithmError,
                       match="unknown algorithm 'sgd'; available: ad-psgd, adagossip, centralized"):
        make("sgd")


@pytest.mark.parametrize("name", NAMES)
def test_construction(name):
    algo = make(name)
    assert isinstance(algo, Algorithm) and type(algo).name == name
    assert make(name, **algo.hparams()) == algo
    doc = type(algo).__doc__ or ""
    # the update rule, its messages and its state are documented
    assert ("⁺" in doc or "^{t+1}" in doc) and "Messages" in doc and "State" in doc
    with pytest.raises(dataclasses.FrozenInstanceError):
        algo.some_field = 1  # hyper-parameters are frozen
    with pytest.raises(AlgorithmError, match="unknown hyper-parameter nope; accepted"):
        make(name, nope=1)


def hessians(q):
    """The quadratics' exact Hessians as a metric (natural-gradient methods need one)."""
    return lambda X, t: q.H.to(X.dtype)


def problem(dtype):
    q = heterogeneous_quadratics(8, 4, seed=11, condition=3.0, dtype=dtype)
    return q, q.grad_fn(noise=0.01, seed=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_state_shapes_dtypes_and_checkpoint_roundtrip(name, dtype):
    q, gf = problem(dtype)
    topo = topology_for(name, flatlab.topology.make("one-peer-exponential", 8))
    algo = make(name)
    oracle = FunctionOracle(gf, metric_fn=hessians(q))
    mixer = SimulatedMixer(topo, device="cpu", dtype=dtype)
    state = algo.init(torch.zeros(8, 4, dtype=dtype), oracle, mixer)
    assert isinstance(state, State) and state.t == 0

    def tensors(s):
        return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
                if isinstance(getattr(s, f.name), torch.Tensor)}

    shapes = {k: (v.shape, v.dtype) for k, v in tensors(state).items()}
    for t in range(7):
        state = algo.step(state, t, oracle, mixer, 0.05)
        assert {k: (v.shape, v.dtype) for k, v in tensors(state).items()
                if k != "loss"} == {k: v for k, v in shapes.items() if k != "loss"}
    assert state.t == 7 and state.x.dtype == dtype
    saved = state_dict(state)
    restored = load_state(saved, state)
    a, b = state, restored
    for t in range(7, 12):
        a = algo.step(a, t, oracle, mixer, 0.05)
        b = algo.step(b, t, oracle, mixer, 0.05)
    for k, v in tensors(a).items():
        assert torch.equal(v, tensors(b)[k]), k


# AdaGossip's second moment forgets at rate beta: with the default 0.999 it still moves after
# 4000 steps, so the fixed-point test uses 0.9.
CONVERGENCE_HPARAMS = {"adagossip": {"beta": 0.9}}
# per-node, per-coordinate consensus steps: the network mean is not preserved (pitfall 11)
MEAN_CHANGING = {"adagossip"}


#: a new random W_t every round: with heterogeneous objectives and a constant step there is no
#: fixed point (the iterates keep moving by O(η)); on a common objective x* is one
RANDOM_ROUNDS = {"ad-psgd"}


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_well_conditioned_quadratic(name):
    q = heterogeneous_quadratics(8, 3, seed=12, condition=2.0)
    X0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    topo = topology_for(name, flatlab.topology.make("ring", 8))
    if name in RANDOM_ROUNDS:
        H = q.H.mean(0)  # noqa: N806 - one objective for every node, minimised at x*
        xs = simulate(name, topo, lambda X, t: (X - q.x_star) @ H, X0, steps=4000,  # noqa: N803
                      lr=0.1, stride=1000)
        assert float((xs[-1] - q.x_star).abs().max()) < 1e-12
        moving = simulate(name, topo, q.grad_fn(), X0, steps=200, lr=0.1)
        assert float((moving[-1] - moving[-2]).abs().max()) > 1e-4  # no fixed point otherwise
        return
    xs = simulate(make(name, **CONVERGENCE_HPARAMS.get(name, {})), topo, q.grad_fn(), X0,
                  steps=4000, lr=0.1, stride=1000, metric_fn=hessians(q))
    X = xs[-1]
    step_change = float((xs[-1] - xs[-2]).abs().max())
    assert step_change < 1e-12  # a fixed point
    if name in MEAN_CHANGING:
        # the per-coordinate steps move the mean, so the local gradients do not cancel there
        assert float(q.grad(X).sum(0).abs().max()) > 1e-3
    elif get(name).exact:
        assert float((X - q.x_star).abs().max()) < 1e-9
    else:
        # where the gradient is taken (the mixed point for CTA), the local gradients cancel
        W = torch.as_tensor(topo.matrix(0))
        at = W @ X if name == "diffusion-cta" else X
        assert float(q.grad(at).sum(0).abs().max()) < 1e-10
        assert float((X - q.x_star).abs().max()) > 1e-4  # and it is biased


def test_load_state_refuses_another_class():
    q, gf = problem(torch.float64)
    mixer = SimulatedMixer(flatlab.topology.make("ring", 8), device="cpu", dtype=torch.float64)
    a = make("centralized", momentum=0.9).init(torch.zeros(8, 4, dtype=torch.float64),
                                               FunctionOracle(gf), mixer)
    b = make("diffusion").init(torch.zeros(8, 4, dtype=torch.float64), FunctionOracle(gf), mixer)
    with pytest.raises(AlgorithmError, match="checkpoint holds a CentralizedState"):
        load_state(state_dict(a), b)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    """Two fresh runs from the same seeds give bit-identical trajectories (CPU)."""
    q, _ = problem(torch.float32)
    topo = topology_for(name, flatlab.topology.make("exponential", 8))
    X0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    runs = [simulate(name, topo, q.grad_fn(noise=0.05, seed=9), X0, steps=40, lr=0.05,
                     metric_fn=hessians(q))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert float((runs[0][-1] - runs[0][0]).abs().max()) > 1e-2
