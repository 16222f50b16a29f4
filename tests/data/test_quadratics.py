"""Heterogeneous quadratics: x*, zeta*^2, L, mu and gradients against loops and autograd."""

import numpy as np
import pytest
import torch

from flatlab.data import QuadraticProblem, heterogeneous_quadratics
from tests.data.conftest import one_line_error


@pytest.fixture(scope="module")
def problem():
    return heterogeneous_quadratics(12, 4, seed=3, heterogeneity=2.0, condition=20.0)


def test_shapes_and_spectra(problem):
    assert isinstance(problem, QuadraticProblem) and (problem.n, problem.d) == (12, 4)
    assert problem.H.shape == (12, 4, 4) and problem.b.shape == (12, 4)
    assert problem.H.dtype == torch.float64
    torch.testing.assert_close(problem.H, problem.H.transpose(1, 2), rtol=0, atol=0)
    eig = torch.linalg.eigvalsh(problem.H)
    assert eig.min().item() == pytest.approx(1.0, abs=1e-12)
    assert eig.max().item() == pytest.approx(20.0, rel=1e-12) == pytest.approx(problem.L)
    assert torch.all(eig[:, 0] > 1 - 1e-12) and torch.all(eig[:, -1] < 20 + 1e-10)
    mean_eig = np.linalg.eigvalsh(problem.H.mean(0).numpy())
    assert problem.mu == pytest.approx(mean_eig[0], rel=1e-12)
    assert 1.0 <= problem.mu <= problem.L


def test_x_star_is_the_global_minimizer(problem):
    g = problem.grad(problem.x_star.expand(problem.n, problem.d).clone())
    assert g.sum(dim=0).abs().max().item() < 1e-12
    x = problem.x_star.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(problem.global_loss(x), x)
    assert gx.abs().max().item() < 1e-13
    for _ in range(3):  # any other point is worse
        other = problem.x_star + 0.1 * torch.randn(problem.d, dtype=torch.float64)
        assert problem.global_loss(other) > problem.global_loss(problem.x_star)


def test_zeta2_star_matches_a_loop(problem):
    total = 0.0
    for i in range(problem.n):
        H, b = problem.H[i].numpy(), problem.b[i].numpy()  # noqa: N806
        total += float(np.sum((H @ (problem.x_star.numpy() - b)) ** 2))
    assert problem.zeta2_star == pytest.approx(total / problem.n, rel=1e-12)
    homo = heterogeneous_quadratics(5, 3, seed=0, heterogeneity=0.0)
    assert homo.zeta2_star == 0.0


def test_grad_and_loss_match_autograd_and_a_loop(problem):
    X = torch.randn(problem.n, problem.d, dtype=torch.float64, requires_grad=True)  # noqa: N806
    loss = problem.loss(X)
    (auto,) = torch.autograd.grad(loss.sum(), X)
    torch.testing.assert_close(problem.grad(X.detach()), auto, rtol=1e-13, atol=1e-13)
    for i in range(problem.n):
        diff = (X[i] - problem.b[i]).detach()
        assert loss[i].item() == pytest.approx(0.5 * float(diff @ problem.H[i] @ diff), rel=1e-12)
    g32 = problem.grad(X.detach().float())
    assert g32.dtype == torch.float32


def test_equal_curvature():
    p = heterogeneous_quadratics(6, 3, seed=1, equal_curvature=True, curvature=2.5)
    torch.testing.assert_close(p.H, 2.5 * torch.eye(3, dtype=torch.float64).expand(6, 3, 3))
    torch.testing.assert_close(p.x_star, p.b.mean(0), rtol=0, atol=1e-14)  # x* = mean of b_i
    assert p.L == pytest.approx(2.5) and p.mu == pytest.approx(2.5)
    assert p.zeta2_star == pytest.approx(2.5**2 * ((p.b - p.b.mean(0)) ** 2).sum(1).mean().item())


def test_noisy_oracle_is_deterministic_per_seed_and_step(problem):
    X = torch.zeros(problem.n, problem.d, dtype=torch.float64)  # noqa: N806
    exact = problem.grad_fn()
    torch.testing.assert_close(exact(X, 5), problem.grad(X), rtol=0, atol=0)
    fn = problem.grad_fn(noise=0.5, seed=7)
    a, b = fn(X, 3), problem.grad_fn(noise=0.5, seed=7)(X, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(fn(X, 4), a)
    assert not torch.equal(problem.grad_fn(noise=0.5, seed=8)(X, 3), a)
    eps = torch.stack([fn(X, t) - problem.grad(X) for t in range(200)])
    assert abs(eps.mean().item()) < 0.02 and eps.std().item() == pytest.approx(0.5, rel=0.05)


def test_dtype_and_determinism():
    a = heterogeneous_quadratics(4, 2, seed=5, dtype=torch.float32)
    b = heterogeneous_quadratics(4, 2, seed=5)
    assert a.H.dtype == torch.float32
    torch.testing.assert_close(a.H, b.H.float())
    assert not torch.equal(heterogeneous_quadratics(4, 2, seed=6).b, b.b)
    one = heterogeneous_quadratics(1, 1, seed=0, condition=3.0)
    assert 1.0 <= one.H.item() <= 3.0


@pytest.mark.parametrize("call, pattern", [
    (lambda: heterogeneous_quadratics(0, 3), "n must be >= 1"),
    (lambda: heterogeneous_quadratics(3, 0), "d must be >= 1"),
    (lambda: heterogeneous_quadratics(3, 2, condition=0.5), "condition must be >= 1.0"),
    (lambda: heterogeneous_quadratics(3, 2, dtype=torch.int64), "floating torch dtype"),
    (lambda: heterogeneous_quadratics(3, 2).grad(torch.zeros(2, 2)), "expected iterates [n, d]"),
    (lambda: heterogeneous_quadratics(3, 2).grad_fn(noise=-1.0), "noise must be >= 0"),
    (lambda: heterogeneous_quadratics(3, 2).global_loss(torch.zeros(3, 2)), "one point [d]"),
])
def test_errors_are_one_line(call, pattern):
    assert pattern in one_line_error(call)
