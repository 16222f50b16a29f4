"""SAM on every node (flatlab.engine.SAMOracle) against a per-node loop of separate modules.

Foret et al. 2021 (SAM) and Kwon et al. 2021 (ASAM), docs/reference/measures.md §8.2-8.3: every
node's gradient at ``x_i + ε_i`` from its own minibatch gradient, vectorised over nodes; the
reference takes each node's two backward passes with its own ``nn.Module`` in float64.
"""

import copy

import pytest
import torch

import flatlab
from flatlab.engine import GradientOracle, NodeStack, SAMOracle, sam_oracle
from tests.reference.algorithms import node_sam_grad

F64 = torch.float64


def _problem(n: int = 3, B: int = 6):
    template = flatlab.models.make("mlp", input_shape=(5,), num_classes=3, seed=0,
                                   hidden=(4,)).double()
    stack = NodeStack(template, n, device="cpu", dtype=F64, init="different",
                      reinit=lambda s: flatlab.models.make("mlp", input_shape=(5,),
                                                           num_classes=3, seed=s,
                                                           hidden=(4,)).double(), seed=2)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, B, 5, dtype=F64, generator=gen)
    targets = torch.randint(0, 3, (n, B), generator=gen)
    return template, stack, stack.initial_params(), (inputs, targets)


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)])
def test_sam_gradients_equal_a_per_node_loop(adaptive, rho):
    template, stack, X, (inputs, targets) = _problem()
    oracle = SAMOracle(GradientOracle(stack, weight_decay=0.01), rho, adaptive=adaptive)
    loss, G = oracle(X, (inputs, targets))
    module = copy.deepcopy(template)
    for i in range(X.shape[0]):
        want = node_sam_grad(module, X[i], inputs[i], targets[i], rho=rho, adaptive=adaptive,
                             weight_decay=0.01)
        torch.testing.assert_close(G[i], want, rtol=1e-10, atol=1e-12)
    base_loss, base_G = GradientOracle(stack, weight_decay=0.01)(X, (inputs, targets))
    torch.testing.assert_close(loss, base_loss, rtol=0, atol=0)  # the loss at x, not x + ε
    assert not torch.allclose(G, base_G)
    assert oracle.calls == 2


def test_rho_zero_is_the_base_oracle_exactly():
    _, stack, X, batch = _problem()
    base = GradientOracle(stack, weight_decay=0.01)
    assert sam_oracle(base, 0.0) is base
    loss, G = SAMOracle(base, 0.0)(X, batch)
    want_loss, want_G = GradientOracle(stack, weight_decay=0.01)(X, batch)
    assert torch.equal(G, want_G) and torch.equal(loss, want_loss)


def test_sam_on_a_quadratic_in_closed_form():
    """f_i(x) = ½ a_i ‖x‖²: the SAM gradient is a_i (x + ρ x/‖x‖), step by step through simulate."""
    a = torch.tensor([1.0, 2.0, 4.0], dtype=F64)[:, None]
    X0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]], dtype=F64)  # noqa: N806
    rho, lr = 0.1, 0.05
    xs = flatlab.simulate("diffusion", "complete", lambda X, t: a * X, X0, steps=3, lr=lr,
                          sam_rho=rho)
    X = X0.clone()  # noqa: N806
    W = torch.full((3, 3), 1 / 3, dtype=F64)  # noqa: N806
    for t in range(3):
        G = a * (X + rho * X / X.norm(dim=1, keepdim=True))  # noqa: N806
        X = W @ (X - lr * G)  # noqa: N806
        torch.testing.assert_close(xs[t + 1], X, rtol=1e-13, atol=1e-14)


def test_bad_radius_is_refused():
    _, stack, _, _ = _problem()
    with pytest.raises(ValueError, match="rho must be >= 0"):
        SAMOracle(GradientOracle(stack), -0.1)
