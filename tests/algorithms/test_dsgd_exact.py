"""Exact properties of the first algorithms on heterogeneous quadratics (algorithms.md §16)."""

import numpy as np
import pytest
import torch

import flatlab
from flatlab.algorithms import simulate
from flatlab.data import heterogeneous_quadratics

F64 = torch.float64


def stacked(q):
    """Block-diagonal Hessian and stacked b (node-major), numpy float64."""
    n, d = q.n, q.d
    H = np.zeros((n * d, n * d))
    for i in range(n):
        H[i * d:(i + 1) * d, i * d:(i + 1) * d] = q.H[i].numpy()
    return H, q.b.numpy().reshape(-1)


def closed_form_fixed_point(form, W, q, lr):
    """Solve the fixed-point equation of each order as one linear system (float64)."""
    n, d = q.n, q.d
    H, b = stacked(q)
    Wk = np.kron(W, np.eye(d))
    eye = np.eye(n * d)
    if form == "diffusion":      # X = W (X - lr H (X - b))
        A, rhs = eye - Wk @ (eye - lr * H), Wk @ (lr * H @ b)
    elif form == "consensus":    # X = W X - lr H (X - b)
        A, rhs = eye - Wk + lr * H, lr * H @ b
    elif form == "diffusion-cta":  # X = W X - lr H (W X - b)
        A, rhs = eye - (eye - lr * H) @ Wk, lr * H @ b
    return np.linalg.solve(A, rhs).reshape(n, d)


@pytest.mark.parametrize("form", ["diffusion", "consensus", "diffusion-cta"])
@pytest.mark.parametrize("topo", ["ring", "exponential"])
def test_constant_step_fixed_points_equal_closed_form_and_differ_from_xstar(form, topo):
    q = heterogeneous_quadratics(8, 3, seed=1, condition=4.0)
    T = flatlab.topology.make(topo, 8)
    lr = 0.1
    xs = simulate(form, T, q.grad_fn(), torch.zeros(8, 3, dtype=F64), steps=3000, lr=lr,
                  stride=3000)
    X = xs[-1].numpy()
    ref = closed_form_fixed_point(form, T.matrix(0), q, lr)
    np.testing.assert_allclose(X, ref, rtol=0, atol=1e-11)
    # at every fixed point the local gradients (at the point where they are taken: the mixed
    # point for CTA) sum to zero exactly, yet x_i != x*
    at = T.matrix(0) @ X if form == "diffusion-cta" else X
    assert np.abs(q.grad(torch.as_tensor(at)).sum(0).numpy()).max() < 1e-11
    assert np.abs(X - q.x_star.numpy()).max() > 1e-2


def test_equal_curvature_eigenbasis_formulas():
    """ATC: X_k = ηhλ_k/(1 − (1 − ηh)λ_k) B_k; DGD: X_k = ηh/(1 + ηh − λ_k) B_k (§16 item 4)."""
    h, lr, n = 2.0, 0.05, 10
    q = heterogeneous_quadratics(n, 2, seed=3, equal_curvature=True, curvature=h)
    T = flatlab.topology.make("ring", n)
    lam, U = np.linalg.eigh(T.matrix(0))
    Bk = U.T @ q.b.numpy()
    for form, coef in [("diffusion", lr * h * lam / (1 - (1 - lr * h) * lam)),
                       ("consensus", lr * h / (1 + lr * h - lam))]:
        X = simulate(form, T, q.grad_fn(), torch.zeros(n, 2, dtype=F64), 4000, lr)[-1]
        np.testing.assert_allclose(U.T @ X.numpy(), coef[:, None] * Bk, rtol=0, atol=1e-11)
        np.testing.assert_allclose(X.numpy().mean(0), q.x_star.numpy(), rtol=0, atol=1e-12)


def test_bias_is_first_order_in_lr_and_larger_for_consensus():
    """Disagreement (I − J)X∞ ≈ −η (I − W)^† W ∇F(1x*ᵀ) (ATC), −η (I − W)^† ∇F(1x*ᵀ) (DGD).

    §16 item 4 states it for X∞ − 1x*ᵀ; with unequal curvatures H_i the mean x̄∞ also moves by
    O(η), so the first-order formula holds for the disagreement only (checked here).
    """
    q = heterogeneous_quadratics(12, 2, seed=4)
    W = flatlab.topology.make("ring", 12).matrix(0)
    G = q.grad(q.x_star.expand(12, 2)).numpy()
    pinv = np.linalg.pinv(np.eye(12) - W)
    first = {"diffusion": -pinv @ W @ G, "consensus": -pinv @ G}
    err = {}
    for form in ("diffusion", "consensus"):
        for lr in (5e-4, 2.5e-4):
            X = closed_form_fixed_point(form, W, q, lr)
            err[form, lr] = np.abs(X - q.x_star.numpy()).max()
            dev = X - X.mean(0)
            rel = np.abs(dev / lr - first[form]).max() / np.abs(first[form]).max()
            assert rel < 70 * lr  # the remainder is O(lr)
        assert err[form, 2.5e-4] / err[form, 5e-4] == pytest.approx(0.5, abs=0.01)
    assert err["consensus", 2.5e-4] > err["diffusion", 2.5e-4]


def test_complete_graph_diffusion_is_centralized_exactly():
    """§16 item 9: with W = J and equal starts, ATC diffusion = centralized SGD (noisy too)."""
    q = heterogeneous_quadratics(6, 4, seed=5)
    T = flatlab.topology.make("complete", 6)
    gf = q.grad_fn(noise=0.3, seed=1)
    X0 = torch.randn(4, dtype=F64).expand(6, 4).clone()
    a = simulate("diffusion", T, gf, X0, 200, 0.05)
    c = simulate("centralized", T, gf, X0, 200, 0.05)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-14)
    cons = simulate("consensus", T, gf, X0, 200, 0.05)
    assert float((cons - c).abs().max()) > 1e-6  # the DGD order does not reduce to it


def test_gossip_only_preserves_mean_and_reaches_consensus_at_rate_rho():
    T = flatlab.topology.make("ring", 10)
    rho = flatlab.spectral(T).rho
    X0 = torch.randn(10, 3, dtype=F64)
    xs = simulate("diffusion", T, lambda X, t: torch.zeros_like(X), X0, 60, 0.1)
    torch.testing.assert_close(xs.mean(1), X0.mean(0).expand(61, 3), rtol=0, atol=1e-14)
    dev = (xs - xs.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    assert bool((dev[1:] <= rho * dev[:-1] + 1e-14).all())
    # and the contraction factor is attained asymptotically
    assert float(dev[-1] / dev[-2]) == pytest.approx(rho, rel=1e-6)


def test_centralized_reaches_xstar_with_and_without_momentum():
    q = heterogeneous_quadratics(5, 3, seed=6, condition=3.0)
    for hp in ({}, {"momentum": 0.9}, {"momentum": 0.5, "nesterov": True}):
        X = simulate("centralized", "ring", q.grad_fn(), torch.zeros(5, 3, dtype=F64), 3000,
                     0.1, **hp)[-1]
        assert float((X - q.x_star).abs().max()) < 1e-12


def test_simulate_arguments():
    q = heterogeneous_quadratics(4, 2, seed=0)
    X0 = torch.zeros(4, 2, dtype=F64)
    xs = simulate("dsgd", ("ring", 4), q.grad_fn(), X0, 10, lambda t: 0.1 / (t + 1), stride=3)
    assert xs.shape == (4, 4, 2)
    W = flatlab.topology.make("ring", 4).matrix(0)
    xs2, state = simulate(flatlab.algorithms.make("diffusion"), W, q.grad_fn(), X0, 9,
                          lambda t: 0.1 / (t + 1), return_state=True)
    torch.testing.assert_close(xs2[-1], state.x)
    torch.testing.assert_close(xs2[3], xs[1])
    assert state.t == 9
    with pytest.raises(flatlab.FlatlabError, match="8 nodes but X0 has 4"):
        simulate("diffusion", ("ring", 8), q.grad_fn(), X0, 1, 0.1)
    with pytest.raises(flatlab.FlatlabError, match="unknown algorithm"):
        simulate("sgd", "ring", q.grad_fn(), X0, 1, 0.1)
