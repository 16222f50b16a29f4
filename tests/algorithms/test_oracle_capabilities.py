"""What algorithms may ask of an oracle beyond gradients: declared capabilities (a curvature
metric for NGPD, parameter slices for per-layer compression, the weight decay it adds for SGP's
decay on the numerators), never a look inside."""

import torch

from flatlab.curvature.kfac import kfac_factors, kfac_layers
from flatlab.data import heterogeneous_quadratics
from flatlab.engine import FunctionOracle, GradientOracle, NodeStack, SAMOracle
from flatlab.engine.oracle import (
    DecayOracle,
    DenseMetricBlock,
    LayeredOracle,
    MetricBlock,
    MetricOracle,
    Oracle,
)


def stack_and_batch():
    template = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    stack = NodeStack(template.double(), 2, device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 6, 5, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (2, 6), generator=gen))
    return stack, batch


def test_gradient_oracle_gives_the_kfac_metric_and_its_parameter_slices():
    stack, batch = stack_and_batch()
    oracle = GradientOracle(stack)
    assert isinstance(oracle, MetricOracle) and isinstance(oracle, LayeredOracle)
    blocks = oracle.metric_blocks(stack.P)
    assert blocks == kfac_layers(stack.module)
    assert all(isinstance(b, MetricBlock) for b in blocks)
    X = stack.initial_params()
    for fisher in ("empirical", "true"):
        got = oracle.metric_factors(X, batch, blocks, fisher=fisher,
                                    generator=torch.Generator().manual_seed(4))
        want = kfac_factors(stack, X, *batch, fisher=fisher,
                            generator=torch.Generator().manual_seed(4), layers=blocks)
        for (a, g), ly in zip(got, blocks, strict=True):
            assert torch.equal(a, want[ly.module][0]) and torch.equal(g, want[ly.module][1])
    assert oracle.parameter_slices() == [sl for _, sl, _ in stack.layout]


def test_function_oracle_metric_is_one_dense_block_and_only_with_metric_fn():
    q = heterogeneous_quadratics(3, 4, seed=0)
    plain = FunctionOracle(q.grad_fn())
    assert isinstance(plain, Oracle) and not isinstance(plain, LayeredOracle)
    assert plain.metric_blocks(4) is None
    oracle = FunctionOracle(q.grad_fn(), metric_fn=lambda X, t: q.H)
    (block,) = oracle.metric_blocks(4)
    assert isinstance(block, DenseMetricBlock) and isinstance(block, MetricBlock)
    ((a, g),) = oracle.metric_factors(torch.zeros(3, 4, dtype=torch.float64), 0, [block])
    assert torch.equal(a, torch.ones(3, 1, 1, dtype=torch.float64)) and torch.equal(g, q.H)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert block.matrix(x).shape == (3, 4, 1)  # [g_dim, a_dim] = [d, 1]
    out = torch.zeros_like(x)
    block.scatter(block.matrix(x), out)
    assert torch.equal(out, x)


def test_every_oracle_flatlab_builds_states_the_weight_decay_it_adds():
    """DecayOracle: G = ∇F(X) + weight_decay · X, taken at the point of the call."""
    stack, batch = stack_and_batch()
    X = stack.initial_params()  # noqa: N806
    plain = GradientOracle(stack)
    decayed = GradientOracle(stack, weight_decay=0.1)
    sam = SAMOracle(GradientOracle(stack, weight_decay=0.1), rho=0.05)
    for oracle, wd in ((plain, 0.0), (decayed, 0.1), (sam, 0.1)):
        assert isinstance(oracle, DecayOracle) and oracle.weight_decay == wd
    # Tolerances from float64's eps and the scale compared (a gradient and its decay are added
    # by kernels whose rounding differs across CPUs: one ulp of the sum, not of the difference).
    eps = torch.finfo(torch.float64).eps
    g = plain(X, batch)[1]
    torch.testing.assert_close(decayed(X, batch)[1] - g, 0.1 * X, rtol=0,
                               atol=4 * eps * float((g.abs() + 0.1 * X.abs()).max()))
    q = heterogeneous_quadratics(3, 4, seed=0)
    f = FunctionOracle(q.grad_fn(), weight_decay=0.2)
    Y = torch.randn(3, 4, dtype=torch.float64)  # noqa: N806
    assert isinstance(f, DecayOracle) and f.weight_decay == 0.2
    want = q.grad(Y) + 0.2 * Y
    torch.testing.assert_close(f(Y, 0)[1], want, rtol=0, atol=4 * eps * float(want.abs().max()))
    assert not isinstance(lambda X, batch: (None, X), DecayOracle)  # a bare callable states none
