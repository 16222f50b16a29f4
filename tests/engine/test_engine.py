"""The node stack against separate modules: layout, per-node gradients, buffers, evaluation."""

import copy

import pytest
import torch
from torch import nn

from flatlab.engine import (
    FunctionOracle,
    GradientOracle,
    NodeStack,
    Objective,
    ParamLayout,
    evaluate,
    full_gradient,
    resolve_device,
    resolve_dtype,
)
from flatlab.errors import CurvatureError, FlatlabError, MeasureError
from tests.reference.algorithms import LoopNodes, buffers, flat, set_flat


def mlp(bn=False, dropout=0.0):
    layers = [nn.Linear(6, 12)]
    if bn:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 4)]
    return nn.Sequential(*layers)


def conv():
    return nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 4, 3, padding=1),
                         nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(24, 4))


def batch(n, b, gen, dtype=torch.float32):
    return (torch.randn(n, b, 6, generator=gen, dtype=dtype),
            torch.randint(0, 4, (n, b), generator=gen))


def test_layout_roundtrip_and_views():
    torch.manual_seed(0)
    m = mlp(bn=True)
    lay = ParamLayout.from_module(m)
    assert lay.P == sum(p.numel() for p in m.parameters())
    assert lay.names == tuple(k for k, _ in m.named_parameters())
    x = lay.flatten_module(m)
    params = lay.unflatten(x)
    for k, p in m.named_parameters():
        assert torch.equal(params[k], p.detach())
        assert params[k].data_ptr() >= x.data_ptr()  # a view into x, not a copy
    params["0.weight"].add_(1.0)
    assert torch.equal(x[lay.slice("0.weight")], (m[0].weight.detach() + 1).reshape(-1))
    X = torch.randn(3, lay.P)
    assert torch.equal(lay.flatten(lay.unflatten(X)), X)
    with pytest.raises(KeyError):
        lay.slice("nope")


@pytest.mark.parametrize("make", [mlp, conv, lambda: mlp(bn=True)], ids=["mlp", "conv", "bn"])
@pytest.mark.parametrize("method", ["vmap", "autograd"])
def test_gradients_equal_separate_modules(make, method):
    torch.manual_seed(1)
    n, b = 5, 7
    template = make().double()
    stack = NodeStack(template, n, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    X = stack.initial_params() + 0.1 * torch.randn(n, stack.P, generator=gen, dtype=torch.float64)
    inputs, targets = batch(n, b, gen, torch.float64)
    oracle = GradientOracle(stack, weight_decay=0.01, method=method)
    losses, G = oracle(X, (inputs, targets))
    loop = LoopNodes(template, n, weight_decay=0.01)
    for i in range(n):
        li, gi = loop.grad(i, X[i], inputs[i], targets[i])
        assert abs(float(losses[i]) - li) < 1e-12
        torch.testing.assert_close(G[i], gi, rtol=0, atol=1e-12)
    for k, v in buffers(loop).items():  # BatchNorm statistics: each node its own
        torch.testing.assert_close(stack.buffers[k], v, rtol=0, atol=1e-12)
    if make is not mlp:
        return
    assert oracle.calls == 1


def test_batchnorm_buffers_per_node_and_never_shared():
    torch.manual_seed(3)
    stack = NodeStack(mlp(bn=True), 4, device="cpu")
    gen = torch.Generator().manual_seed(0)
    GradientOracle(stack)(stack.initial_params(), batch(4, 8, gen))
    rm = stack.buffers["1.running_mean"]
    assert rm.shape == (4, 12)
    assert not torch.allclose(rm[0], rm[1])
    assert int(stack.buffers["1.num_batches_tracked"][0]) == 1


def test_dropout_masks_differ_per_node():
    torch.manual_seed(4)
    stack = NodeStack(mlp(dropout=0.5), 4, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x1, y1 = batch(1, 8, gen)
    X = stack.initial_params()
    _, G = GradientOracle(stack)(X, (x1.expand(4, -1, -1), y1.expand(4, -1)))
    assert not torch.allclose(G[0], G[1])  # same params and data, different masks
    stack_nodrop = NodeStack(mlp(dropout=0.0), 4, device="cpu")
    _, G0 = GradientOracle(stack_nodrop)(stack_nodrop.initial_params(),
                                         (x1.expand(4, -1, -1), y1.expand(4, -1)))
    torch.testing.assert_close(G0[0], G0[1])


def test_evaluate_matches_loop():
    torch.manual_seed(5)
    n = 4
    template = mlp(bn=True).double()
    stack = NodeStack(template, n, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    X = stack.initial_params() + 0.3 * torch.randn(n, stack.P, generator=gen, dtype=torch.float64)
    GradientOracle(stack)(X, batch(n, 9, gen, torch.float64))  # give each node its own BN stats
    inputs = torch.randn(301, 6, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 4, (301,), generator=gen)
    ev = evaluate(stack, X, inputs, targets, batch_size=100)
    for i in range(n):
        m = copy.deepcopy(template)
        set_flat(m, X[i])
        for k, v in m.named_buffers():
            v.copy_(stack.buffers[k][i])
        m.eval()
        with torch.no_grad():
            out = m(inputs)
        ref = float(nn.functional.cross_entropy(out, targets))
        assert abs(float(ev.loss_nodes[i]) - ref) < 1e-12
        assert float(ev.accuracy_nodes[i]) == pytest.approx(float((out.argmax(1) == targets)
                                                                  .double().mean()), abs=1e-15)
    avg = copy.deepcopy(template)
    set_flat(avg, X.mean(0))
    for k, v in avg.named_buffers():
        if v.is_floating_point():
            v.copy_(stack.buffers[k].mean(0))
    avg.eval()
    with torch.no_grad():
        out = avg(inputs)
    assert ev.loss_avg == pytest.approx(float(nn.functional.cross_entropy(out, targets)), abs=1e-12)
    assert ev.size == 301
    # the full gradient at the average, chunked, equals one backward on the whole set
    g = full_gradient(stack, X.mean(0), inputs, targets, batch_size=64)
    avg.zero_grad()
    nn.functional.cross_entropy(avg(inputs), targets).backward()
    torch.testing.assert_close(g, torch.cat([p.grad.reshape(-1) for p in avg.parameters()]),
                               rtol=0, atol=1e-13)


@pytest.mark.parametrize("make", [conv, lambda: mlp(bn=True)], ids=["conv", "bn"])
def test_objective_of_the_nodes_is_the_one_model_objective_row_by_row(make):
    torch.manual_seed(2)
    stack = NodeStack(make().double(), 3, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    X = stack.initial_params() + 0.2 * torch.randn(3, stack.P, generator=gen, dtype=torch.float64)
    GradientOracle(stack)(X, batch(3, 9, gen, torch.float64))  # each node its own BN stats
    inputs, targets = torch.randn(50, 6, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    every = Objective(stack, inputs, targets, nodes=True, batch_size=16)
    values = every(X)
    loss, acc = every.evaluate(X)
    for method in ("autograd", "func"):
        val, G = every.value_and_grad(X, method=method)
        for i in range(3):
            one = Objective(stack, inputs, targets, buffers={k: v[i] for k, v in
                                                             stack.buffers.items()},
                            batch_size=16)
            v1, g1 = one.value_and_grad(X[i], method=method)
            assert float(one(X[i])) == pytest.approx(float(values[i]), rel=1e-13)
            assert float(v1) == pytest.approx(float(val[i]), rel=1e-13)
            torch.testing.assert_close(g1, G[i], rtol=1e-12, atol=1e-14)
            l1, a1 = one.evaluate(X[i])
            assert float(l1) == pytest.approx(float(loss[i]), rel=1e-13)
            assert float(a1) == float(acc[i])
    assert stack.module.training  # the mode is restored


def test_objective_refusals_are_measure_and_curvature_errors():
    stack = NodeStack(mlp(), 2, device="cpu")
    inputs, targets = torch.randn(10, 6), torch.randint(0, 4, (10,))
    f = Objective(stack, inputs, targets)
    calls = [lambda: Objective(stack, inputs, targets[:-1]),
             lambda: Objective(stack, inputs[:0], targets[:0]),
             lambda: Objective(stack, inputs, targets, batch_size=0),
             lambda: Objective(stack, inputs, targets, nodes=True, buffers={}),
             lambda: f(torch.zeros(stack.P + 1)),
             lambda: f(torch.zeros(stack.P, dtype=torch.float64)),
             lambda: Objective(stack, inputs, targets, nodes=True)(torch.zeros(stack.P)),
             lambda: f.value_and_grad(torch.zeros(stack.P), method="fd")]
    for call in calls:
        with pytest.raises(MeasureError) as e:
            call()
        assert isinstance(e.value, CurvatureError) and "\n" not in str(e.value)


def test_regression_loss_and_float32_default():
    stack = NodeStack(nn.Linear(3, 2), 2, device="cpu", loss="mse")
    assert stack.dtype == torch.float32
    X = stack.initial_params()
    a = torch.randn(2, 5, 3)
    y = torch.randn(2, 5, 2)
    losses, G = GradientOracle(stack)(X, (a, y))
    m = nn.Linear(3, 2)
    set_flat(m, X[0])
    with torch.no_grad():
        ref = 0.5 * (m(a[0]) - y[0]).pow(2).sum(-1).mean()
    assert float(losses[0]) == pytest.approx(float(ref), rel=1e-6)
    assert flat(m).shape[0] == G.shape[1]


def test_init_different_and_errors():
    stack = NodeStack(nn.Linear(3, 2), 3, device="cpu", init="different",
                      reinit=lambda s: (torch.manual_seed(s), nn.Linear(3, 2))[1])
    X = stack.initial_params()
    assert not torch.equal(X[0], X[1])
    with pytest.raises(FlatlabError, match="init"):
        NodeStack(nn.Linear(3, 2), 3, device="cpu", init="different")
    with pytest.raises(FlatlabError, match="loss"):
        NodeStack(nn.Linear(3, 2), 3, device="cpu", loss="hinge")
    with pytest.raises(FlatlabError, match="nodes"):
        NodeStack(nn.Linear(3, 2), 0, device="cpu")
    assert resolve_dtype("float64") == torch.float64
    with pytest.raises(FlatlabError, match="float32, float64"):
        resolve_dtype("float16")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(FlatlabError, match="CUDA is not available"):
            resolve_device("cuda")


def test_function_oracle_checks_shape():
    o = FunctionOracle(lambda X, t: X[:, :1])
    with pytest.raises(ValueError, match="shaped like X"):
        o(torch.zeros(3, 2), 0)
    loss, G = FunctionOracle(lambda X, t: X * t, weight_decay=0.5)(torch.ones(2, 2), 3)
    assert loss is None and torch.equal(G, torch.full((2, 2), 3.5))


@pytest.mark.slow
def test_compiled_oracle_equals_eager():
    """torch.compile of the vmapped gradient (opt-in; tens of seconds to compile)."""
    torch.manual_seed(6)
    stack = NodeStack(mlp(), 4, device="cpu")
    gen = torch.Generator().manual_seed(3)
    X = stack.initial_params()
    b = batch(4, 8, gen)
    l1, g1 = GradientOracle(stack, method="vmap")(X, b)
    l2, g2 = GradientOracle(stack, method="vmap", compile=True)(X, b)
    torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compile=True needs method='vmap'"):
        GradientOracle(stack, method="autograd", compile=True)
