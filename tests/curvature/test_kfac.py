"""K-FAC against independent references (algorithms.md §8, §16 item 13): dense Kronecker algebra
in float64, factors computed node by node with hooks on separate modules and explicit patch
loops, and the exact Fisher of a linear Gaussian model."""

import pytest
import torch

import flatlab
from flatlab.curvature.kfac import (
    eigenbasis,
    kfac_factors,
    kfac_layers,
    kfac_solve,
    kron_matvec,
)
from flatlab.engine import FusedMetricOracle, GradientOracle, NodeStack
from tests.reference.algorithms import node_kfac_factors

F64 = torch.float64


def spd(k, gen, cond=10.0):
    q, _ = torch.linalg.qr(torch.randn(k, k, dtype=F64, generator=gen))
    return q @ torch.diag(torch.linspace(1.0, cond, k, dtype=F64)) @ q.T


def test_kronecker_inverse_is_vec_of_two_sided_solve_row_major():
    gen = torch.Generator().manual_seed(0)
    A, G = spd(4, gen), spd(3, gen)
    V = torch.randn(3, 4, dtype=F64, generator=gen)
    dense = torch.linalg.solve(torch.kron(G, A), V.reshape(-1))   # row-major vec: G ⊗ A
    two_sided = torch.linalg.solve(G, V) @ torch.linalg.inv(A)
    torch.testing.assert_close(dense, two_sided.reshape(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(kron_matvec(A, G, V).reshape(-1), torch.kron(G, A) @ V.reshape(-1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale,lam", [(1.0, 0.1), (50.0, 3.0), (1.0, 1e-6)])
def test_eigenbasis_inverse_equals_the_dense_damped_inverse(scale, lam):
    gen = torch.Generator().manual_seed(1)
    A, G = spd(5, gen, 100.0), spd(4, gen, 100.0)
    V = torch.randn(2, 4, 5, dtype=F64, generator=gen)   # batched over a leading (node) dim
    dense = torch.linalg.solve(scale * torch.kron(G, A) + lam * torch.eye(20, dtype=F64),
                               V.reshape(2, 20, 1)).reshape(2, 4, 5)
    got = kfac_solve(V, A.expand(2, 5, 5), G.expand(2, 4, 4), lam, scale=scale)
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)
    got = kfac_solve(V, A, G, lam, scale=scale, basis=eigenbasis(A, G))
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-12)
    # per-node damping, as NGPD's alpha |N_i| gives
    lams = torch.tensor([lam, 2 * lam], dtype=F64)
    got = kfac_solve(V, A, G, lams, scale=scale)
    second = torch.linalg.solve(scale * torch.kron(G, A) + 2 * lam * torch.eye(20, dtype=F64),
                                V[1].reshape(-1))
    torch.testing.assert_close(got[1].reshape(-1), second, rtol=1e-10, atol=1e-12)


def test_factored_tikhonov_is_close_but_not_exact():
    gen = torch.Generator().manual_seed(2)
    A, G = spd(4, gen, 5.0), spd(3, gen, 5.0)
    V = torch.randn(3, 4, dtype=F64, generator=gen)
    exact = kfac_solve(V, A, G, 1.0)
    approx = kfac_solve(V, A, G, 1.0, tikhonov=True)
    rel = float((approx - exact).norm() / exact.norm())
    assert 1e-3 < rel < 0.6, rel


def _loop_factors(template, X, inputs, targets, loss):
    """Node by node, with :func:`tests.reference.algorithms.node_kfac_factors`."""
    per = [node_kfac_factors(template, X[i], inputs[i], targets[i], loss)
           for i in range(X.shape[0])]
    return {k: (torch.stack([p[k][0] for p in per]), torch.stack([p[k][1] for p in per]))
            for k in per[0]}


KFAC_MODELS = pytest.mark.parametrize("model,shape,opts", [
    ("mlp", (12,), {"hidden": (7,)}),
    ("cnn1d", (20,), {"channels": (4, 6), "strides": (1, 2), "norm": "none"})])


def _kfac_problem(model, shape, opts, seed, n=3, B=4):  # noqa: N803
    """A float64 stack of ``n`` perturbed copies and one batch per node."""
    template = flatlab.models.make(model, input_shape=shape, num_classes=5, seed=0,
                                   **opts).double()
    stack = NodeStack(template, n, device="cpu", dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    X = stack.initial_params() + 0.1 * torch.randn(n, stack.P, dtype=F64, generator=gen)
    inputs = torch.randn(n, B, *shape, dtype=F64, generator=gen)
    targets = torch.randint(0, 5, (n, B), generator=gen)
    return template, stack, X, inputs, targets


@KFAC_MODELS
def test_vectorized_factors_equal_node_by_node_hooks(model, shape, opts):
    template, stack, X, inputs, targets = _kfac_problem(model, shape, opts, seed=3)
    got = kfac_factors(stack, X, inputs, targets)
    ref = _loop_factors(template, X, inputs, targets, "cross_entropy")
    assert set(got) == set(ref) and len(got) == len(kfac_layers(template))
    for name, (A, G) in ref.items():
        torch.testing.assert_close(got[name][0], A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[name][1], G, rtol=1e-10, atol=1e-12)


@KFAC_MODELS
def test_one_pass_gradients_and_factors_equal_the_two_passes(model, shape, opts):
    """NGPD's fused refresh: the oracle's gradients and the node-by-node reference factors."""
    template, stack, X, inputs, targets = _kfac_problem(model, shape, opts, seed=6)
    oracle = GradientOracle(stack, weight_decay=0.01)
    blocks = oracle.metric_blocks(stack.P)
    assert isinstance(oracle, FusedMetricOracle)
    losses, G, factors = oracle.grads_and_factors(X, (inputs, targets), blocks)
    want_losses, want_G = oracle(X, (inputs, targets))
    torch.testing.assert_close(losses, want_losses, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(G, want_G, rtol=1e-10, atol=1e-12)
    ref = _loop_factors(template, X, inputs, targets, "cross_entropy")
    for ly, (A, Gf) in zip(blocks, factors, strict=True):
        torch.testing.assert_close(A, ref[ly.module][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(Gf, ref[ly.module][1], rtol=1e-10, atol=1e-12)
    assert oracle.calls == 2


def test_true_fisher_of_a_linear_gaussian_model_is_exactly_kfac():
    """One linear layer, half-MSE (unit Gaussian) and labels sampled from the model: the exact
    Fisher is I ⊗ A (row-major) and K-FAC's sampled G estimates I."""
    d, k, B = 4, 3, 20000
    template = flatlab.models.make("logistic", input_shape=(d,), num_classes=k, seed=0).double()
    stack = NodeStack(template, 1, device="cpu", dtype=F64, loss="mse")
    gen = torch.Generator().manual_seed(4)
    inputs = torch.randn(1, B, d, dtype=F64, generator=gen) + 0.5
    X = stack.initial_params()
    (A, G), = kfac_factors(stack, X, inputs, torch.zeros(1, B, k, dtype=F64), fisher="true",
                           generator=torch.Generator().manual_seed(5)).values()
    abar = torch.cat([inputs[0], torch.ones(B, 1, dtype=F64)], 1)
    torch.testing.assert_close(A[0], abar.T @ abar / B, rtol=1e-12, atol=1e-12)
    # exact Fisher E_y[∇ℓ ∇ℓᵀ] = E_b[J_bᵀ J_b] for the Gaussian likelihood, J_b = ∂f_b/∂[W|b]
    J = torch.einsum("ij,bk->bijk", torch.eye(k, dtype=F64), abar).reshape(B, k, -1)
    exact = torch.einsum("bop,boq->pq", J, J) / B
    torch.testing.assert_close(exact, torch.kron(torch.eye(k, dtype=F64), A[0]), rtol=1e-10,
                               atol=1e-12)
    assert float((G[0] - torch.eye(k, dtype=F64)).abs().max()) < 5 / B ** 0.5


def test_unknown_fisher_type_is_refused():
    stack = NodeStack(flatlab.models.make("logistic", input_shape=(3,), num_classes=2), 1,
                      device="cpu")
    with pytest.raises(flatlab.curvature.CurvatureError, match="accepted: empirical, true"):
        kfac_factors(stack, stack.initial_params(), torch.zeros(1, 2, 3),
                     torch.zeros(1, 2, dtype=torch.int64), fisher="gauss-newton")
