"""Curvature estimators against exact references: numpy.linalg.eigvalsh, scipy eigsh, and the dense
float64 Hessian of small models from torch.autograd.functional.hessian."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn

import flatlab.curvature as C
from flatlab.engine import NodeStack
from flatlab.errors import FlatlabError
from flatlab.seeds import seed_for

P = 40


def spectrum_matrix(lam, seed=0):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((len(lam), len(lam))))[0]
    H = Q @ np.diag(lam) @ Q.T
    return (H + H.T) / 2


@pytest.fixture(scope="module")
def H():
    lam = np.concatenate([[9.0, 6.5, 4.0], np.random.default_rng(3).uniform(-1.5, 2.0, P - 3)])
    return spectrum_matrix(lam)


# ---------------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("which,k", [("largest", 3), ("smallest", 2)])
def test_lanczos_equals_eigvalsh(H, which, k):
    r = C.lanczos(H, k=k, which=which, tol=1e-10, max_iter=P, return_vectors=True)
    exact = np.linalg.eigvalsh(H)
    want = exact[::-1][:k] if which == "largest" else exact[:k]
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues.numpy(), want, rtol=1e-9)
    V = r.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-10)
    resid = np.linalg.norm(H @ V.T - V.T * r.eigenvalues.numpy(), axis=0)
    np.testing.assert_allclose(resid, r.residuals.numpy(), atol=1e-8)


def test_lanczos_agrees_with_scipy_eigsh_and_uses_fewer_products_than_power_iteration(H):
    lo = spla.LinearOperator((P, P), matvec=lambda v: H @ v, dtype=np.float64)
    ref = np.sort(spla.eigsh(lo, k=2, which="LA", tol=1e-12)[0])[::-1]
    r = C.lanczos(H, k=2, tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues.numpy(), ref, rtol=1e-8)
    p = C.power_iteration(H, k=1, tol=1e-8, max_iter=1000)
    assert abs(float(p.eigenvalues[0]) - 9.0) < 1e-6
    assert C.lanczos(H, k=1, tol=1e-8).num_matvecs < p.num_matvecs


def test_power_iteration_finds_the_largest_magnitude_not_the_largest_value():
    H = spectrum_matrix(np.r_[-10.0, 5.0, np.linspace(-1, 1, 18)])
    assert float(C.power_iteration(H, tol=1e-10, max_iter=2000).eigenvalues[0]) == \
        pytest.approx(-10.0, rel=1e-6)
    assert float(C.lanczos(H, tol=1e-10).eigenvalues[0]) == pytest.approx(5.0, rel=1e-9)


def test_batched_equals_one_at_a_time(H):
    Hs = torch.stack([torch.as_tensor(H), torch.as_tensor(spectrum_matrix(np.linspace(-2, 3, P),
                                                                          seed=1))])
    batched = C.lanczos(Hs, k=2, tol=1e-10, max_iter=P)
    for i in range(2):
        alone = C.lanczos(Hs[i], k=2, tol=1e-10, max_iter=P)
        torch.testing.assert_close(batched.eigenvalues[i], alone.eigenvalues, rtol=1e-9, atol=0)
    assert batched.eigenvalues.shape == (2, 2) and batched.converged.all()


def test_invariant_subspace_breakdown_restarts_and_stays_exact():
    H = np.diag(np.r_[3.0, 3.0, 1.0, 1.0, 0.0, 0.0])  # few distinct eigenvalues: early breakdown
    r = C.lanczos(H, k=3, tol=1e-12, max_iter=6)
    np.testing.assert_allclose(r.eigenvalues.numpy(), [3.0, 3.0, 1.0], atol=1e-12)


# ---------------------------------------------------------------------- traces and densities
@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_trace_within_four_standard_errors_and_tightening(H, method):
    exact = float(np.trace(H))
    small = C.trace(H, 30, method=method, seed=1)
    big = C.trace(H, 600, method=method, seed=1)
    for r in (small, big):  # (with 600 > 3P products Hutch++ sketches the whole space: exact)
        assert abs(r.estimate - exact) < 4 * r.stderr + 1e-12 * abs(exact)
    assert big.stderr < small.stderr / 3
    assert big.num_matvecs == 600


def test_hutchpp_is_exact_on_low_rank_matrices():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((P, 4))
    A = U @ U.T  # rank 4 <= num_matvecs / 3
    r = C.trace(A, 15, method="hutch++")
    assert r.estimate == pytest.approx(np.trace(A), rel=1e-10)
    assert abs(r.stderr) < 1e-8


def test_slq_weights_density_and_its_trace_is_hutchinson_with_the_same_probes(H):
    d = C.spectral_density(H, num_runs=4, lanczos_steps=P, num_grid_points=4000, seed=2)
    np.testing.assert_allclose(d.weights.sum(-1).numpy(), 1.0, atol=1e-12)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-6)
    # with P steps the Ritz values carrying weight are eigenvalues of H
    ev = np.linalg.eigvalsh(H)
    carried = d.nodes[d.weights > 1e-8].numpy()
    assert np.abs(carried[:, None] - ev[None]).min(1).max() < 1e-8
    # P Σ τ θ = vᵀ H v for the (unnormalised) Rademacher start vector v of each run
    probes = [C.random_probes((1, P), seed=seed_for(2, "probes", r)).numpy()[0] for r in range(4)]
    assert d.trace == pytest.approx(np.mean([v @ H @ v for v in probes]), rel=1e-10)


# ---------------------------------------------------------------------- models
class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


@pytest.fixture(scope="module")
def model_problem():
    torch.manual_seed(0)
    stack = NodeStack(Tanh(), 3, device="cpu", dtype=torch.float64, init="different",
                      reinit=lambda s: (torch.manual_seed(s), Tanh())[1], seed=1)
    x = torch.randn(50, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    return stack, x, y


def exact_hessian(fn, x):
    return torch.autograd.functional.hessian(fn, x).numpy()


@pytest.mark.parametrize("method", C.HVP_METHODS)
def test_hvp_methods_equal_the_dense_hessian(model_problem, method):
    stack, x, y = model_problem
    fn = C.stack_loss(stack, x, y, batch_size=16)  # chunked: weighting by chunk size is exact
    x0 = stack.initial_params().mean(0)
    Hd = exact_hessian(fn, x0)
    v = torch.randn(stack.P, dtype=torch.float64)
    np.testing.assert_allclose(C.hvp(fn, x0, v, method=method).numpy(), Hd @ v.numpy(),
                               rtol=1e-10, atol=1e-12)


def test_model_top_eigenvalues_against_the_exact_hessian(model_problem):
    stack, x, y = model_problem
    x0 = stack.initial_params().mean(0)
    ev = np.linalg.eigvalsh(exact_hessian(C.stack_loss(stack, x, y), x0))
    r = C.lanczos(C.model_hessian(stack, x0, x, y), k=2, tol=1e-8)
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues.numpy(), ev[::-1][:2], rtol=1e-6)
    low = C.lanczos(C.model_hessian(stack, x0, x, y), k=1, which="smallest", tol=1e-8)
    assert float(low.eigenvalues[0]) == pytest.approx(ev[0], rel=1e-6)


def test_node_models_batched_equal_exact_per_node_hessians(model_problem):
    stack, x, y = model_problem
    X = stack.initial_params()
    op = C.model_hessian(stack, X, x, y)
    r = C.lanczos(op, k=2, tol=1e-8)
    assert r.eigenvalues.shape == (3, 2) and r.all_converged
    t = C.trace(op, 60, seed=0)
    for i in range(3):
        bufs = {k: v[i] for k, v in stack.buffers.items()}
        Hi = exact_hessian(C.stack_loss(stack, x, y, buffers=bufs), X[i])
        np.testing.assert_allclose(r.eigenvalues[i].numpy(), np.linalg.eigvalsh(Hi)[::-1][:2],
                                   rtol=1e-6)
        assert abs(float(t.estimate[i]) - np.trace(Hi)) < 4 * float(t.stderr[i]) + 1e-9


@pytest.mark.parametrize("strategy", C.NODE_STRATEGIES)
def test_node_top_eigenvalues_every_strategy_equals_exact_per_node_hessians(model_problem,
                                                                           strategy):
    stack, x, y = model_problem
    X = stack.initial_params()
    r = C.node_top_eigenvalues(stack, X, x, y, k=2, tol=1e-8, strategy=strategy)
    assert r.eigenvalues.shape == (3, 2) and r.all_converged
    for i in range(3):
        bufs = {k: v[i] for k, v in stack.buffers.items()}
        Hi = exact_hessian(C.stack_loss(stack, x, y, buffers=bufs), X[i])
        np.testing.assert_allclose(r.eigenvalues[i].numpy(), np.linalg.eigvalsh(Hi)[::-1][:2],
                                   rtol=1e-6)


@pytest.mark.parametrize("strategy", C.NODE_STRATEGIES)
def test_node_traces_give_each_node_the_estimate_of_its_own_seed_whatever_the_strategy(
        model_problem, strategy):
    stack, x, y = model_problem
    X = stack.initial_params()
    r = C.node_traces(stack, X, x, y, num_matvecs=30, seed=4, first_node=2, strategy=strategy)
    assert r.estimate.shape == (3,) and r.stderr.shape == (3,)
    for i in range(3):
        bufs = {k: v[i] for k, v in stack.buffers.items()}
        alone = C.trace(C.model_hessian(stack, X[i], x, y, buffers=bufs), 30,
                        seed=seed_for(4, "probes", 2 + i))
        assert float(r.estimate[i]) == pytest.approx(alone.estimate, rel=1e-10)
        assert float(r.stderr[i]) == pytest.approx(alone.stderr, rel=1e-8)
        Hi = exact_hessian(C.stack_loss(stack, x, y, buffers=bufs), X[i])
        assert abs(float(r.estimate[i]) - np.trace(Hi)) < 4 * float(r.stderr[i]) + 1e-9


@pytest.mark.parametrize("chunk", [1, 2])
def test_batched_in_chunks_equals_exact_per_node_hessians_and_each_nodes_own_estimate(
        model_problem, chunk):
    """Chunks of nodes (what a GPU's free memory allows) give every node its own result."""
    stack, x, y = model_problem
    X = stack.initial_params()
    r = C.node_top_eigenvalues(stack, X, x, y, k=2, tol=1e-8, strategy="batched", chunk=chunk)
    t = C.node_traces(stack, X, x, y, num_matvecs=30, seed=4, strategy="batched", chunk=chunk)
    assert r.eigenvalues.shape == (3, 2) and r.all_converged and t.estimate.shape == (3,)
    for i in range(3):
        bufs = {k: v[i] for k, v in stack.buffers.items()}
        Hi = exact_hessian(C.stack_loss(stack, x, y, buffers=bufs), X[i])
        np.testing.assert_allclose(r.eigenvalues[i].numpy(), np.linalg.eigvalsh(Hi)[::-1][:2],
                                   rtol=1e-6)
        alone = C.trace(C.model_hessian(stack, X[i], x, y, buffers=bufs), 30,
                        seed=seed_for(4, "probes", i))
        assert float(t.estimate[i]) == pytest.approx(alone.estimate, rel=1e-10)


def test_batched_chunk_fills_half_the_free_memory_and_a_rows_view_shares_the_stack(
        model_problem):
    stack, _, _ = model_problem
    row = (40 + C.model.WORK_VECTORS) * 1000 * 4  # bytes per node: 40 steps of P = 1000 float32
    cpu = torch.device("cpu")
    assert C.batched_chunk(1024, 1000, 40, torch.float32, cpu, free=10 * row) == 5
    assert C.batched_chunk(1024, 1000, 40, torch.float32, cpu, free=row) == 1  # at least one
    assert C.batched_chunk(8, 1000, 40, torch.float32, cpu, free=10**15) == 8
    view = stack.rows(1, 3)
    assert view.n == 2 and view.module is stack.module and stack.n == 3
    for name, b in stack.buffers.items():
        assert view.buffers[name].data_ptr() == b[1].data_ptr()  # a view, not a copy
    with pytest.raises(FlatlabError, match="not within the 3 nodes"):
        stack.rows(2, 5)


def test_a_batched_trace_with_one_seed_per_matrix_equals_each_matrix_alone(model_problem):
    stack, x, y = model_problem
    X = stack.initial_params()
    for method in C.TRACE_METHODS:
        both = C.trace(C.model_hessian(stack, X, x, y), 12, method=method, seed=[7, 8, 9])
        for i, s in enumerate((7, 8, 9)):
            bufs = {k: v[i] for k, v in stack.buffers.items()}
            one = C.trace(C.model_hessian(stack, X[i], x, y, buffers=bufs), 12, method=method,
                          seed=s)
            assert float(both.estimate[i]) == pytest.approx(one.estimate, rel=1e-10)
    with pytest.raises(C.CurvatureError, match="one seed per matrix"):
        C.trace(C.model_hessian(stack, X, x, y), 12, seed=[1, 2])
    with pytest.raises(C.CurvatureError, match="give one int"):
        C.trace(C.model_hessian(stack, X[0], x, y), 12, seed=[1])


@pytest.mark.parametrize("strategy", C.NODE_STRATEGIES)
def test_equal_nodes_share_node_zeros_computation(model_problem, strategy):
    """At the start every node is the same model: one computation, a spread of exactly 0."""
    stack, x, y = model_problem
    X = stack.initial_params()[:1].expand(3, -1).clone()
    assert C.nodes_equal(stack, X)
    assert not C.nodes_equal(stack, X + torch.eye(3, stack.P, dtype=X.dtype) * 1e-12)
    top = C.node_top_eigenvalues(stack, X, x, y, k=2, tol=1e-8, strategy=strategy)
    tr = C.node_traces(stack, X, x, y, num_matvecs=12, strategy=strategy)
    alone_top = C.node_top_eigenvalues(stack, X, x, y, k=2, tol=1e-8, strategy="sequential")
    for i in range(3):
        assert torch.equal(top.eigenvalues[i], top.eigenvalues[0])
        assert float(tr.estimate[i]) == float(tr.estimate[0])
    assert torch.equal(top.eigenvalues, alone_top.eigenvalues)
    bufs = {k: v[0] for k, v in stack.buffers.items()}
    one = C.trace(C.model_hessian(stack, X[0], x, y, buffers=bufs), 12,
                  seed=seed_for(0, "probes", 0))
    assert float(tr.estimate[0]) == one.estimate
    H0 = exact_hessian(C.stack_loss(stack, x, y, buffers=bufs), X[0])
    np.testing.assert_allclose(top.eigenvalues[0].numpy(), np.linalg.eigvalsh(H0)[::-1][:2],
                               rtol=1e-6)


def test_node_top_eigenvalues_refuses_what_it_cannot_use(model_problem):
    stack, x, y = model_problem
    with pytest.raises(C.CurvatureError, match="accepted: auto, batched, sequential"):
        C.node_top_eigenvalues(stack, stack.initial_params(), x, y, strategy="chunks")
    with pytest.raises(C.CurvatureError, match="node models"):
        C.node_top_eigenvalues(stack, stack.initial_params()[:2], x, y)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,pattern", [
    (lambda H: C.lanczos(H, k=0), "k must be between"),
    (lambda H: C.lanczos(H, which="top"), "which='top' is unknown"),
    (lambda H: C.trace(H, 2), "hutch\\+\\+ needs num_matvecs >= 3"),
    (lambda H: C.trace(H, 10, method="xtrace"), "trace method 'xtrace' is unknown"),
    (lambda H: C.as_operator(np.triu(H) + 1), "symmetric"),
    (lambda H: C.as_operator(H).matvec(torch.zeros(3)), "vectors of shape"),
    (lambda H: C.as_operator(lambda v: v), "needs size=P"),
    (lambda H: C.hvp(lambda x: x.sum(), torch.zeros(3), torch.zeros(3), method="fd"),
     "HVP method 'fd' is unknown"),
])
def test_bad_input_is_one_line(H, call, pattern):
    with pytest.raises(C.CurvatureError, match=pattern) as e:
        call(H)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- PyHessian
def test_agrees_with_pyhessian_and_leaves_the_model_alone(model_problem):
    pytest.importorskip("pyhessian")
    from flatlab.curvature.pyhessian import (
        pyhessian_density,
        pyhessian_eigenvalues,
        pyhessian_trace,
    )

    stack, x, y = model_problem
    x0 = stack.initial_params().mean(0)
    before = [p.detach().clone() for p in stack.module.parameters()]
    mode, rng, dtype = stack.module.training, torch.get_rng_state(), torch.get_default_dtype()
    eig = getattr(torch, "eig", None)
    ours = C.lanczos(C.model_hessian(stack, x0, x, y), k=2, tol=1e-10)
    theirs = pyhessian_eigenvalues(stack, x0, x, y, k=2, tol=1e-9, max_iter=2000)
    exact = np.linalg.eigvalsh(exact_hessian(C.stack_loss(stack, x, y), x0))
    # top two by magnitude are the top two by value here (checked on the exact spectrum)
    assert np.abs(exact).argsort()[::-1][:2].tolist() == [len(exact) - 1, len(exact) - 2]
    # power iteration's relative-change rule stops short of the true value (ratio λ2/λ1 = 0.86)
    np.testing.assert_allclose(theirs.eigenvalues.numpy(), ours.eigenvalues.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.eigenvalues.numpy(), exact[::-1][:2], rtol=1e-9)
    assert (theirs.residuals < 1e-3 * theirs.eigenvalues.abs()).all()
    tr = pyhessian_trace(stack, x0, x, y, max_iter=300, tol=1e-12)
    assert abs(tr.estimate - np.trace(exact_hessian(C.stack_loss(stack, x, y), x0))) \
        < 4 * tr.stderr
    d = pyhessian_density(stack, x0, x, y, iter=stack.P, n_v=1)  # needs the torch.eig shim
    # (its Lanczos reorthogonalises in one Gram-Schmidt pass: about 1e-5 relative here)
    assert float(d.nodes.max()) == pytest.approx(exact[-1], rel=1e-4)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-6)
    # the stack's module, the global RNG, the default dtype and torch itself are as they were
    assert all(torch.equal(a, b) for a, b in zip(before, stack.module.parameters(), strict=True))
    assert stack.module.training == mode and torch.equal(torch.get_rng_state(), rng)
    assert torch.get_default_dtype() == dtype and getattr(torch, "eig", None) is eig
