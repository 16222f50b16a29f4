"""gradient_noise against a per-node autograd loop (float64)."""

import pytest
import torch

from flatlab.experiment import build, load_config
from flatlab.measures import MeasureError, gradient_noise

CFG = {"data": {"name": "digits", "partition": "dirichlet", "alpha": 0.3, "batch_size": 8},
       "model": {"name": "mlp", "options": {"hidden": [12]}}, "topology": {"nodes": 4},
       "optim": {"weight_decay": 1e-3}, "dtype": "float64", "device": "cpu"}


def _local_grad(stack, x, inputs, targets, wd):
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(
            torch.func.functional_call(stack.module, stack.layout.unflatten(xr), (inputs,)),
            targets)
        (g,) = torch.autograd.grad(loss, xr)
    return g + wd * x


def test_gradient_noise_matches_a_per_node_loop():
    run = build(load_config(CFG))
    x = run.stack.initial_params()[0] + 0.01 * torch.randn(run.stack.P, dtype=torch.float64,
                                                            generator=torch.Generator()
                                                            .manual_seed(0))
    r = gradient_noise(run.oracle, run.sampler, x, draws=3)
    s, n = run.sampler, run.n
    full = torch.stack([_local_grad(run.stack, x, s.x[i], s.y[i], 1e-3) for i in range(n)])
    zeta2 = ((full - full.mean(0)) ** 2).sum(1).mean()
    sigma2 = 0.0
    for d in range(3):
        xb, yb = s.batch(d)
        g = torch.stack([_local_grad(run.stack, x, xb[i], yb[i], 1e-3) for i in range(n)])
        sigma2 += float(((g - full) ** 2).sum(1).mean()) / 3
    assert r.zeta2 == pytest.approx(float(zeta2), rel=1e-10)
    assert r.sigma2 == pytest.approx(sigma2, rel=1e-10)
    assert r.grad_norm2 == pytest.approx(float(full.mean(0) @ full.mean(0)), rel=1e-10)
    assert r.batch_size == 8 and r.draws == 3


def test_a_full_local_batch_has_no_noise():
    m = build(load_config(CFG)).sampler.m
    run = build(load_config({**CFG, "data": {**CFG["data"], "batch_size": m}}))
    assert run.sampler.batch_size == run.sampler.m  # a batch is the whole local set
    x = run.stack.initial_params()[0]
    assert gradient_noise(run.oracle, run.sampler, x, draws=2).sigma2 < 1e-25
    with pytest.raises(MeasureError, match="draws"):
        gradient_noise(run.oracle, run.sampler, x, draws=0)


def test_noise_along_directions_matches_the_per_node_loop_and_its_trace_is_unbiased():
    from flatlab.curvature import as_operator
    from flatlab.measures import noise_along

    run = build(load_config(CFG))
    P, n, s = run.stack.P, run.n, run.sampler  # noqa: N806
    gen = torch.Generator().manual_seed(1)
    x = run.stack.initial_params()[0] + 0.01 * torch.randn(P, dtype=torch.float64, generator=gen)
    V = torch.linalg.qr(torch.randn(P, 3, dtype=torch.float64, generator=gen))[0].T  # noqa: N806
    B = torch.randn(P, P, dtype=torch.float64, generator=gen)  # noqa: N806
    A = B @ B.T / P  # noqa: N806 - a dense SPD "Hessian"
    r = noise_along(run.oracle, s, x, V, hessian=as_operator(A), probes=3000, draws=3, seed=2)
    full = torch.stack([_local_grad(run.stack, x, s.x[i], s.y[i], 1e-3) for i in range(n)])
    xi = []
    for d in range(3):
        xb, yb = s.batch(d)
        xi += [_local_grad(run.stack, x, xb[i], yb[i], 1e-3) - full[i] for i in range(n)]
    xi = torch.stack(xi)
    torch.testing.assert_close(r.noise, ((xi @ V.T) ** 2).mean(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(r.heterogeneity, (full - full.mean(0)) @ V.T, rtol=1e-10,
                               atol=1e-14)
    assert r.heterogeneity.sum(0).abs().max() < 1e-12
    assert r.sigma2 == pytest.approx(gradient_noise(run.oracle, s, x, draws=3).sigma2,
                                     rel=1e-12)
    exact = float(torch.einsum("ip,pq,iq->i", xi, A, xi).mean())  # tr(A S̄)
    assert abs(r.trace_hs - exact) < 4 * r.trace_hs_stderr
    assert r.trace_hs_stderr < 0.1 * exact  # narrow enough to fail
    none = noise_along(run.oracle, s, x, V, draws=3)
    assert none.trace_hs != none.trace_hs  # nan without a Hessian
    with pytest.raises(MeasureError, match="vectors must be"):
        noise_along(run.oracle, s, x, V[:, :5])
