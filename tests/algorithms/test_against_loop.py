"""The vectorized engine against the per-node loop reference (tests/reference/algorithms.py).

Same models, same minibatches, same W_t: the trajectories over many steps must agree to 1e-5 in
float32 and 1e-10 in float64, on several topologies (static, directed, time-varying,
column-stochastic) and splits.
"""

import pytest
import torch

import flatlab
from flatlab.algorithms import make
from flatlab.comm import SimulatedMixer
from flatlab.data import NodeSampler, load, partition
from flatlab.engine import GradientOracle, NodeStack
from flatlab.models import make as make_model
from flatlab.topology.faults import AsyncGossip, LinkFailures
from tests.reference.algorithms import LOOPS, LoopNodes, buffers, run_loop

DIGITS = load("digits", seed=0)

CASES = [
    # algorithm, topology, split, model, dtype, hparams
    ("diffusion", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("diffusion", "one-peer-exponential", "iid", "logistic", torch.float32, {}),
    ("diffusion", "exponential", "classes", "mlp", torch.float32, {}),
    ("consensus", "ring", "iid", "mlp", torch.float32, {}),
    ("consensus", "exponential", "dirichlet", "logistic", torch.float64, {}),
    ("consensus", "one-peer-exponential", "shards", "mlp", torch.float64, {}),
    ("diffusion-cta", "torus", "dirichlet", "mlp", torch.float32, {}),
    ("diffusion-cta", "one-peer-exponential", "iid", "logistic", torch.float64, {}),
    ("centralized", "ring", "dirichlet", "mlp", torch.float32, {"momentum": 0.9}),
    ("centralized", "ring", "iid", "logistic", torch.float64, {"momentum": 0.9,
                                                               "nesterov": True}),
    ("centralized", "ring", "classes", "mlp", torch.float64, {}),
    ("dsgdm", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("dsgdm", "one-peer-exponential", "classes", "mlp", torch.float32, {"nesterov": True}),
    ("qg-dsgdm", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("qg-dsgdm", "exponential", "classes", "logistic", torch.float32,
     {"nesterov": True, "c": 0.2}),
    ("decentlam", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("decentlam", "one-peer-exponential", "iid", "logistic", torch.float32, {"momentum": 0.5}),
    ("gradient-tracking", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("gradient-tracking", "one-peer-exponential", "classes", "mlp", torch.float64, {}),
    ("gradient-tracking", "ring", "dirichlet", "mlp", torch.float64, {"form": "atc"}),
    ("gradient-tracking", "one-peer-exponential", "iid", "logistic", torch.float32,
     {"form": "atc"}),
    ("momentum-tracking", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("momentum-tracking", "one-peer-exponential", "classes", "mlp", torch.float64,
     {"y0": "local"}),
    ("momentum-tracking", "torus", "iid", "logistic", torch.float32, {"momentum": 0.5}),
    ("exact-diffusion", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("exact-diffusion", "one-peer-exponential", "classes", "logistic", torch.float32, {}),
    ("d2", "exponential-undirected", "dirichlet", "mlp", torch.float64, {}),
    ("d2", "ring", "classes", "mlp", torch.float64, {"allow_unstable": True}),
    ("choco", "ring", "dirichlet", "mlp", torch.float64, {"fraction": 0.1}),
    ("choco", "torus", "iid", "logistic", torch.float64,
     {"compressor": "qsgd", "levels": 4, "momentum": 0.9, "nesterov": True, "gamma": 0.3,
      "per_layer": False}),
    # compressors are discontinuous (a selection, a sign, a rounding): a float32 rounding
    # difference can flip one, so they are compared in float64 and float32 runs the identity
    ("choco", "exponential", "classes", "mlp", torch.float64,
     {"compressor": "random-k", "fraction": 0.2, "gamma": 0.2}),
    ("choco", "ring", "iid", "mlp", torch.float32,
     {"compressor": "identity", "gamma": 0.7, "momentum": 0.9}),
    ("choco", "ring", "dirichlet", "logistic", torch.float64,
     {"compressor": "sign", "momentum": 0.5}),
    ("adagossip", "ring", "dirichlet", "mlp", torch.float64, {"fraction": 0.1}),
    ("adagossip", "exponential-undirected", "iid", "logistic", torch.float64,
     {"compressor": "qsgd", "levels": 8, "biased": False, "gamma": 0.5, "beta": 0.9,
      "momentum": 0.9}),
    ("adagossip", "torus", "classes", "mlp", torch.float64, {"compressor": "sign"}),
    ("ecl", "ring", "dirichlet", "mlp", torch.float64, {}),
    ("ecl", "torus", "classes", "mlp", torch.float64, {"theta": 0.5, "period": 3,
                                                        "dual_init": "x0"}),
    ("ecl", "exponential-undirected", "iid", "logistic", torch.float32,
     {"theta": 0.5, "period": 4, "tie": 1.0}),
    # push-sum: an irregular digraph (w moves away from 1), the time-varying one-peer exponential
    # graph (SGP's default) and a doubly stochastic ring (w stays 1)
    ("sgp", "digraph+push-sum", "dirichlet", "mlp", torch.float64, {}),
    ("sgp", "one-peer-exponential+push-sum", "classes", "mlp", torch.float64, {}),
    ("sgp", "star+push-sum", "iid", "logistic", torch.float64, {}),
    ("sgp", "ring", "dirichlet", "logistic", torch.float32, {}),
    # the authors' local step (torch.optim.SGD on the numerator): momentum, Nesterov, and weight
    # decay on the numerator, on the irregular digraph and on two alternating irregular ones
    ("sgp", "digraph+push-sum", "dirichlet", "mlp", torch.float64, {"momentum": 0.9}),
    ("sgp", "digraphs+push-sum", "classes", "mlp", torch.float64,
     {"momentum": 0.9, "nesterov": True, "weight_decay_on": "numerator"}),
    ("sgp", "star+push-sum", "iid", "logistic", torch.float32,
     {"momentum": 0.5, "weight_decay_on": "numerator"}),
    # links that fail (issue 34): the run's schedule against the fault model's own rounds
    ("diffusion", "torus~lf", "dirichlet", "mlp", torch.float64, {}),
    ("gradient-tracking", "ring~lf", "classes", "mlp", torch.float64, {}),
    ("momentum-tracking", "exponential-undirected~lf", "dirichlet", "logistic", torch.float64,
     {}),
    ("sgp", "ring~lf", "iid", "mlp", torch.float64, {"momentum": 0.9}),
    # AD-PSGD over asynchronous pairwise ticks (its stale gradients: test_async_gossip.py)
    ("ad-psgd", "torus~ag", "dirichlet", "mlp", torch.float64, {}),
]

#: an irregular, strongly connected directed graph on 8 nodes: arcs i -> j
DIGRAPH = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 0), (0, 4), (0, 6),
           (2, 7), (5, 1), (5, 2), (5, 3)]


#: another one, with other out-degrees (3, 1, 2, 1, 1, 2, 1, 1)
DIGRAPH_B = [(0, 3), (0, 5), (0, 7), (1, 0), (2, 1), (2, 6), (3, 2), (4, 3), (5, 4), (5, 0),
             (6, 5), (7, 6)]


def link_failures(spec: str, n: int) -> LinkFailures | AsyncGossip:
    """``NAME~lf``: the graph's edges fail with probability 0.3 in each round; ``NAME~ag``:
    asynchronous pairwise gossip over it (``n`` ticks a round)."""
    if spec.endswith("~ag"):
        return AsyncGossip(topology_of(spec.removesuffix("~ag"), n), seed=4)
    return LinkFailures(topology_of(spec.removesuffix("~lf"), n), p=0.3, seed=4)


def topology_of(spec: str, n: int, rounds: int = 25) -> flatlab.topology.Topology:
    """A generator name, ``NAME+RULE`` for a weight rule, ``digraph`` (:data:`DIGRAPH`),
    ``digraphs+push-sum``: time-varying, push-sum weights on :data:`DIGRAPH` and
    :data:`DIGRAPH_B` in turn (both irregular, so the weights w do not stay 1), or ``NAME~lf``:
    :func:`link_failures`' schedule of ``rounds`` rounds, as a run under ``topology.faults``
    mixes with."""
    if spec.endswith(("~lf", "~ag")):
        return link_failures(spec, n).topology(rounds)
    name, _, rule = spec.partition("+")
    if name == "digraph":
        return flatlab.topology.from_edges(DIGRAPH, n, directed=True, weights=rule or None)
    if name == "digraphs":
        assert rule == "push-sum"
        rounds = [flatlab.topology.from_edges(arcs, n, directed=True).matrix()
                  for arcs in (DIGRAPH, DIGRAPH_B)]
        return flatlab.topology.from_matrix(rounds, name="digraphs", stochastic="column")
    return flatlab.topology.make(name, n, weights=rule or None)

# NGPD's loop reference solves a dense P x P system per node per step: fewer nodes and steps
NGPD_CASES = [
    ("ngpd", "ring", "dirichlet", "logistic", torch.float64, {"factor_every": 3,
                                                              "inverse_every": 6}),
    ("ngpd", "exponential-undirected", "iid", "mlp-small", torch.float64,
     {"theta": 0.5, "period": 2, "damping": 0.1, "ema": 0.5, "factor_every": 2,
      "inverse_every": 4, "dual_init": "x0"}),
]


def engine_and_loop(name, topo_name, split, model, dtype, hp, steps=25, n=8, norm="none",
                    weight_decay=1e-3):
    topo = topology_of(topo_name, n)
    part = partition(DIGITS, n, split, alpha=0.3, seed=1)
    sampler = NodeSampler(DIGITS.x_train, DIGITS.y_train, part, batch_size=8, seed=2,
                          dtype=dtype)
    opts = {"hidden": (32,), "norm": norm} if model == "mlp" else {}
    if model == "mlp-small":  # small enough for the dense metric of the NGPD loop reference
        model, opts = "mlp", {"hidden": (6,), "norm": norm}
    template = make_model(model, input_shape=(64,), num_classes=10, seed=3, **opts).to(dtype)
    stack = NodeStack(template, n, device="cpu", dtype=dtype)
    oracle = GradientOracle(stack, weight_decay=weight_decay)
    mixer = SimulatedMixer(topo, device="cpu", dtype=dtype)
    algo = make(name, **hp)
    lr = lambda t: 0.2 / (1 + 0.05 * t)  # noqa: E731 - a schedule, to exercise the lr argument
    state = algo.init(stack.initial_params(), oracle, mixer)
    traj = [state.x]
    for t in range(steps):
        state = algo.step(state, sampler.batch(t), oracle, mixer, lr(t))
        traj.append(state.x)
    loop = LoopNodes(template, n, weight_decay=weight_decay)
    # the loop mixes with each round drawn from the fault model itself, not the schedule
    W_at = (link_failures(topo_name, n).matrix if topo_name.endswith(("~lf", "~ag"))  # noqa: N806
            else topo.matrix)
    ref = run_loop(name, loop, lambda t: W_at(t), sampler.batch, lr, steps, **algo.hparams())
    return torch.stack(traj), ref, stack, loop


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-"
                         f"{str(c[4])[-7:]}")
def test_engine_equals_per_node_loop(case):
    name, topo, split, model, dtype, hp = case
    traj, ref, _, _ = engine_and_loop(name, topo, split, model, dtype, hp)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert traj.shape == ref.shape
    err = float((traj - ref).abs().max())
    assert err < tol, f"max deviation {err:.3g} over {traj.shape[0] - 1} steps"
    assert float((traj[-1] - traj[0]).abs().max()) > 1e-2  # it actually moved


@pytest.mark.parametrize("case", NGPD_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_ngpd_equals_its_dense_per_node_loop(case):
    name, topo, split, model, dtype, hp = case
    traj, ref, _, _ = engine_and_loop(name, topo, split, model, dtype, hp, steps=9, n=4)
    err = float((traj - ref).abs().max())
    assert err < 1e-10, f"max deviation {err:.3g}"
    assert float((traj[-1] - traj[0]).abs().max()) > 1e-2


def test_engine_equals_loop_with_batchnorm_buffers():
    traj, ref, stack, loop = engine_and_loop("diffusion", "ring", "dirichlet", "mlp",
                                             torch.float64, {}, steps=15, norm="batch")
    assert float((traj - ref).abs().max()) < 1e-10
    for k, v in buffers(loop).items():
        torch.testing.assert_close(stack.buffers[k], v, rtol=0, atol=1e-10)


def test_every_registered_algorithm_has_a_loop_reference():
    for name in flatlab.algorithms.available():
        if name in ("centralized", "consensus", "diffusion", "diffusion-cta", "ad-psgd") \
                or name in LOOPS:
            continue
        pytest.fail(f"{name} has no per-node loop reference in tests/reference/algorithms.py")
