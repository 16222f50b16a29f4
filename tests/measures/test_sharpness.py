"""Sharpness measures against closed forms on quadratics, and the ReLU rescaling invariance."""

import numpy as np
import pytest
import torch
from torch import nn

from flatlab.engine import NodeStack
from flatlab.errors import FlatlabError
from flatlab.measures import (
    MeasureError,
    model_loss,
    sharpness_average,
    sharpness_keskar,
    sharpness_sam,
    sharpness_worst,
)


def quadratic(lam, *, seed=0, diagonal=False, offset=0.0):
    """f(x) = offset + 1/2 (x - c)^T H (x - c), H = Q diag(lam) Q^T, with numpy H and c."""
    rng = np.random.default_rng(seed)
    lam = np.asarray(lam, dtype=np.float64)
    P = lam.size
    Q = np.eye(P) if diagonal else np.linalg.qr(rng.standard_normal((P, P)))[0]
    H = Q @ np.diag(lam) @ Q.T
    c = rng.standard_normal(P)
    Ht, ct = torch.tensor(H), torch.tensor(c)

    def f(x):
        r = x - ct
        return offset + 0.5 * r @ Ht @ r

    return f, H, c


LAM = [5.0, 3.0, 2.0, 1.0, 0.5, 0.1, 0.0, 0.0]


@pytest.mark.parametrize("rho", [0.01, 0.5])
def test_worst_l2_at_minimum_is_half_rho2_lambda_max(rho):
    f, H, c = quadratic(LAM)
    r = sharpness_worst(f, torch.tensor(c), rho=rho, steps=60)
    assert r.value == pytest.approx(0.5 * rho**2 * max(LAM), rel=1e-6)
    assert r.delta_norm == pytest.approx(rho, rel=1e-12)
    assert r.loss == pytest.approx(0.0, abs=1e-15)
    assert r.perturbed_loss - r.loss == r.value
    top = np.linalg.eigh(H)[1][:, -1]
    cos = abs(r.delta.numpy() @ top) / np.linalg.norm(r.delta.numpy())
    assert cos == pytest.approx(1.0, abs=1e-6)
    assert (r.rho, r.norm, r.adaptive, r.steps, r.step_size) == (rho, "l2", False, 60, 2 * rho)


def test_worst_adaptive_l2_is_top_eigenvalue_of_scaled_hessian():
    # max_{||delta / |c| || <= rho} 1/2 delta^T H delta = rho^2/2 lambda_max(D H D), D = diag|c|
    f, H, c = quadratic(LAM, seed=1)
    D = np.diag(np.abs(c))
    expect = 0.5 * 0.1**2 * np.linalg.eigvalsh(D @ H @ D)[-1]
    r = sharpness_worst(f, torch.tensor(c), rho=0.1, adaptive=True, steps=60)
    assert r.value == pytest.approx(expect, rel=1e-6)
    assert float((r.delta / torch.tensor(np.abs(c))).norm()) == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_linf_on_diagonal_quadratic(adaptive):
    # max over the box |delta_i| <= rho c_i of 1/2 sum lam_i delta_i^2 = 1/2 rho^2 sum lam_i c_i^2
    f, _, c = quadratic(LAM, diagonal=True)
    rho = 0.05
    r = sharpness_worst(f, torch.tensor(c), rho=rho, norm="linf", adaptive=adaptive, steps=10)
    scale = np.abs(c) if adaptive else np.ones_like(c)
    assert r.value == pytest.approx(0.5 * rho**2 * np.sum(np.array(LAM) * scale**2), rel=1e-12)
    assert r.delta_norm == pytest.approx(rho, rel=1e-12)
    assert np.all(np.abs(r.delta.numpy()) <= rho * scale * (1 + 1e-12))


def test_worst_explicit_scale_equals_adaptive_and_stack_equals_rows():
    f, _, c = quadratic(LAM, seed=2)
    rng = np.random.default_rng(3)
    X = torch.tensor(c + 0.3 * rng.standard_normal((3, c.size)))
    batch = sharpness_worst(f, X, rho=0.2, steps=15)
    assert batch.value.shape == (3,) and batch.delta.shape == X.shape
    for i in range(3):
        one = sharpness_worst(f, X[i], rho=0.2, steps=15)
        assert batch.value[i].item() == one.value
        assert torch.equal(batch.delta[i], one.delta)
        assert one.value > 0
    a = sharpness_worst(f, X[0], rho=0.2, adaptive=True, steps=15)
    b = sharpness_worst(f, X[0], rho=0.2, scale=X[0].abs(), steps=15)
    assert a.value == b.value


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_closed_form_on_quadratic(adaptive):
    f, H, c = quadratic(LAM, seed=4)
    x = c + np.random.default_rng(5).standard_normal(c.size)
    rho, eta = 0.3, 0.01
    g = H @ (x - c)
    s = np.abs(x) + eta if adaptive else np.ones_like(x)
    delta = rho * s**2 * g / np.linalg.norm(s * g)
    expect = g @ delta + 0.5 * delta @ H @ delta
    r = sharpness_sam(f, torch.tensor(x), rho=rho, adaptive=adaptive, eta=eta)
    assert r.value == pytest.approx(expect, rel=1e-12)
    assert np.allclose(r.delta.numpy(), delta, rtol=1e-12, atol=0)
    assert r.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    if not adaptive:  # rho ||g|| + rho^2/2 g^T H g / ||g||^2, exact on a quadratic
        gh = g / np.linalg.norm(g)
        assert r.value == pytest.approx(rho * np.linalg.norm(g) + 0.5 * rho**2 * gh @ H @ gh,
                                        rel=1e-12)


def test_sam_at_exact_minimum_is_zero():
    f, _, c = quadratic(LAM)
    r = sharpness_sam(f, torch.tensor(c), rho=0.1)
    assert r.value == 0.0 and r.grad_norm == 0.0 and not r.delta.any()


def test_average_is_half_sigma2_trace_with_shrinking_stderr():
    f, H, c = quadratic(LAM, seed=6)
    sigma = 0.1
    expect = 0.5 * sigma**2 * np.trace(H)
    sd = 0.5 * sigma**2 * np.sqrt(2 * np.trace(H @ H))  # std of 1/2 sigma^2 z^T H z
    small = sharpness_average(f, torch.tensor(c), sigma=sigma, samples=400, seed=1)
    large = sharpness_average(f, torch.tensor(c), sigma=sigma, samples=1600, seed=2)
    for r, n in ((small, 400), (large, 1600)):
        assert abs(r.value - expect) < 4 * r.stderr
        assert r.stderr == pytest.approx(sd / np.sqrt(n), rel=0.25)
    assert 0.35 < large.stderr / small.stderr < 0.65


def test_average_adaptive_and_antithetic_closed_forms():
    f, H, c = quadratic(LAM, seed=7)
    sigma = 0.2
    D = np.diag(np.abs(c))
    r = sharpness_average(f, torch.tensor(c), sigma=sigma, adaptive=True, samples=800)
    assert abs(r.value - 0.5 * sigma**2 * np.trace(D @ H @ D)) < 4 * r.stderr
    # away from the minimum the antithetic pair mean is exactly 1/2 d^T H d: same law as at c
    x = torch.tensor(c + np.random.default_rng(8).standard_normal(c.size))
    r = sharpness_average(f, x, sigma=sigma, samples=800, antithetic=True)
    assert abs(r.value - 0.5 * sigma**2 * np.trace(H)) < 4 * r.stderr
    assert r.stderr == pytest.approx(0.5 * sigma**2 * np.sqrt(2 * np.trace(H @ H) / 800),
                                     rel=0.25)


def test_keskar_closed_form_on_diagonal_quadratic():
    # 100 * max_{|d_i| <= eps(|c_i|+1)} 1/2 sum lam_i d_i^2 / (1 + f(c)), f(c) = offset
    f, _, c = quadratic(LAM, diagonal=True, offset=0.7)
    eps = 1e-3
    inc = 0.5 * eps**2 * np.sum(np.array(LAM) * (np.abs(c) + 1) ** 2)
    r = sharpness_keskar(f, torch.tensor(c), eps=eps, steps=10)
    assert r.increase == pytest.approx(inc, rel=1e-9)
    assert r.value == pytest.approx(100 * inc / 1.7, rel=1e-9)
    assert r.loss == pytest.approx(0.7, rel=1e-15)
    assert np.all(np.abs(r.delta.numpy()) <= eps * (np.abs(c) + 1) * (1 + 1e-12))


def relu_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16, bias=False), nn.ReLU(), nn.Linear(16, 2, bias=False))


def test_adaptive_sharpness_is_invariant_to_relu_rescaling():
    # Dinh et al. 2017: W1 -> a W1, W2 -> W2 / a leaves a bias-free ReLU network unchanged
    stack = NodeStack(relu_mlp(0), n=1, device="cpu", dtype="float64", loss="mse")
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    targets = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    f = model_loss(stack, inputs, targets, batch_size=32)
    x = stack.initial_params()[0]
    s1, s2 = stack.layout.slice("0.weight"), stack.layout.slice("2.weight")
    y = x.clone()
    y[s1] *= 3.0
    y[s2] /= 3.0
    assert float(f(y)) == pytest.approx(float(f(x)), rel=1e-13)

    def measures(z, adaptive):
        return [
            sharpness_worst(f, z, rho=0.05, adaptive=adaptive, steps=15).value,
            sharpness_worst(f, z, rho=0.01, norm="linf", adaptive=adaptive, steps=15).value,
            sharpness_sam(f, z, rho=0.05, adaptive=adaptive).value,
            sharpness_average(f, z, sigma=0.05, adaptive=adaptive, samples=20).value,
        ]

    ax, ay = measures(x, True), measures(y, True)
    assert all(v > 0 for v in ax[:3])
    assert ay == pytest.approx(ax, rel=1e-7)
    px, py = measures(x, False), measures(y, False)
    for a, b in zip(px, py, strict=True):
        assert abs(b / a - 1) > 0.1


def test_model_loss_is_the_exact_mean_and_chunked_gradient_matches():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 4))
    stack = NodeStack(module, n=3, device="cpu", dtype="float64", loss="cross_entropy")
    stack.buffers["1.running_mean"].normal_()
    inputs = torch.randn(30, 3, dtype=torch.float64)
    targets = torch.randint(0, 4, (30,))
    x = stack.initial_params()[1] + 0.1
    f = model_loss(stack, inputs, targets, batch_size=7)  # chunks of 7, last one of 2
    bufs = stack.average_buffers()
    with stack.mode(train=False):
        direct = stack.node_loss(x, bufs, inputs, targets)
    assert float(f(x)) == pytest.approx(float(direct), rel=1e-13)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xr), xr)
    v, g2 = f.value_and_grad(x)
    assert float(v) == pytest.approx(float(direct), rel=1e-13)
    assert torch.allclose(g, g2, rtol=1e-12, atol=1e-14)
    assert stack.module.training  # the mode is restored
    for bad in (torch.zeros(stack.P + 1, dtype=torch.float64), x.float()):
        with pytest.raises(MeasureError) as e:
            f(bad)
        one_line(e)
    with pytest.raises(MeasureError):
        model_loss(stack, inputs, targets[:-1])


def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    assert isinstance(excinfo.value, FlatlabError)


@pytest.mark.parametrize("call", [
    lambda f, x: sharpness_worst(f, x, rho=0.0),
    lambda f, x: sharpness_worst(f, x, rho=-1.0),
    lambda f, x: sharpness_worst(f, x, rho=float("nan")),
    lambda f, x: sharpness_worst(f, x, rho=0.1, norm="l3"),
    lambda f, x: sharpness_worst(f, x, rho=0.1, steps=-1),
    lambda f, x: sharpness_worst(f, x, rho=0.1, scale=torch.ones(3, dtype=torch.float64)),
    lambda f, x: sharpness_worst(f, x, rho=0.1, adaptive=True, scale=1.0),
    lambda f, x: sharpness_worst(f, x.reshape(2, 4, 1), rho=0.1),
    lambda f, x: sharpness_worst(f, x.long(), rho=0.1),
    lambda f, x: sharpness_worst(lambda z: z * 2, x, rho=0.1),
    lambda f, x: sharpness_worst(lambda z: z.detach().sum(), x, rho=0.1),
    lambda f, x: sharpness_sam(f, x, rho=0),
    lambda f, x: sharpness_sam(f, x, rho=0.1, eta=-1),
    lambda f, x: sharpness_average(f, x, sigma=0),
    lambda f, x: sharpness_average(f, x, sigma=0.1, samples=1),
    lambda f, x: sharpness_keskar(f, x, eps=0),
    lambda f, x: sharpness_worst(f, torch.stack([x, x]), rho=0.1,
                                 scale=torch.ones(3, 8, dtype=torch.float64)),
], ids=lambda c: "")
def test_bad_input_gives_one_line_errors(call):
    f, _, c = quadratic(LAM)
    with pytest.raises(MeasureError) as e:
        call(f, torch.tensor(c))
    one_line(e)


def test_python_and_run_measure_defaults_agree():
    """A sharpness computed in a notebook and one scheduled in a run use the same defaults."""
    import dataclasses
    import inspect

    from flatlab.measures import named, sharpness

    for fn, settings in ((sharpness.sharpness_worst, named.WorstSharpnessSettings),
                         (sharpness.sharpness_average, named.AverageSharpnessSettings),
                         (sharpness.sharpness_sam, named.SamSharpnessSettings),
                         (sharpness.sharpness_keskar, named.KeskarSharpnessSettings)):
        params = inspect.signature(fn).parameters
        for f in dataclasses.fields(settings):
            if f.name in ("every",):  # the schedule's, not the function's
                continue
            assert params[f.name].default == getattr(settings(), f.name), (fn.__name__, f.name)
