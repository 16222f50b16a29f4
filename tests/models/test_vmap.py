"""Vectorizing n separate models with torch.func gives what a loop over the modules gives.

Float32 results are compared within ``C * cond * eps * scale`` (:mod:`tests.precision`); float64
ones within 1e-10 (some 1e5 float64 rounding units, far from any real error). Float32 gradients
of a network with ReLUs or max pooling are compared only where no kink lies within float32
rounding of the input (:data:`~tests.models.cases.KINK_MARGIN`), else in float64 only.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, stack_module_state, vjp, vmap

from flatlab import models
from tests import precision
from tests.models.cases import (
    BATCHNORM_CASES,
    DEFAULT_CASES,
    KINK_MARGIN,
    NUM_CLASSES,
    VARIANT_CASES,
    batch,
    build,
    case_id,
    kink_margin,
)

pytestmark = pytest.mark.kernels  # float32 results of other kernels: make test-kernels

N_NODES = 3
F64_TOL = 1e-10
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def stacked(nets):
    """Stacked (params, buffers) and a meta-device copy of the first module to call them on."""
    params, buffers = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")
    return base, params, buffers


def loss_fn(base):
    def loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    return loss


def max_diff(a, b):
    return (a.detach() - b.detach()).abs().max().item()


def assert_equal_values(got, want, *, scale=None, cond=1.0, what=""):
    """Equal up to rounding: float32 by :func:`tests.precision.assert_close`, float64 by 1e-10."""
    if want.dtype == torch.float64:
        assert max_diff(got, want) < F64_TOL, what
    else:
        precision.assert_close(got, want, scale=scale, cond=cond, what=what)


def loop_gradients(net, x, y):
    """The loss of one module on its own batch and its gradients (the loop's reference)."""
    names, tensors = zip(*net.named_parameters(), strict=True)
    loss = F.cross_entropy(net(x), y)
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, tensors), strict=True))


def assert_node_gradients(grads, i, ref, net, x, y, dtype):
    """Node ``i``'s vmapped gradients equal the loop's ``ref``, to rounding of their scale."""
    # one scale for the whole gradient: a bias in front of a norm layer has a zero gradient
    # in exact arithmetic, and rounding-sized entries relative to the others
    scale = precision.magnitude(ref)
    cond = gradient_conditioning(net, x, y, scale) if dtype == torch.float32 else 1.0
    for pname, g in ref.items():
        assert_equal_values(grads[pname][i], g, scale=scale, cond=cond, what=pname)


def well_posed(nets, x) -> bool:
    """Whether float32 gradients are well-posed at these inputs: no ReLU input and no pooling
    tie within :data:`KINK_MARGIN` float32 rounding units of its kink (decided in float64, so the
    same on every machine). Float64 rounding is 5e8 times finer: always well-posed here."""
    return all(kink_margin(net, x[i]) >= KINK_MARGIN for i, net in enumerate(nets))


def gradient_conditioning(net, x, y, scale):
    """The condition factor of the loss gradient here (:func:`tests.precision.conditioning`).

    1 to 7 for these models, apart from two: some 700 on one node of the tanh MLP whose second
    GroupNorm normalises pairs of features (8 features, 4 groups), one pair 0.017 apart at a
    magnitude of 0.6 (its gradient divides by the pair's spread, and rounding the pair moves the
    spread by eps * 0.6 / 0.017, 36 times more than it moves either value): genuinely
    ill-conditioned; and 100 on the BatchNorm MLP's node whose inputs are shifted by 2.
    """
    net = copy.deepcopy(net).double()
    buffers = dict(net.named_buffers())

    def gradients(params, xi):
        p = {k: v.requires_grad_() for k, v in params.items()}
        b = {k: v.clone() for k, v in buffers.items()}  # BatchNorm updates them in place
        loss = F.cross_entropy(functional_call(net, (p, b), (xi,)), y)
        return dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True))

    return precision.conditioning(gradients, dict(net.named_parameters()), x, scale=scale)


@DTYPES
@pytest.mark.parametrize("case", DEFAULT_CASES + VARIANT_CASES, ids=case_id)
def test_vmapped_grads_equal_loop(case, dtype):
    name, options, shape = case
    nets = [build(name, options, shape, seed=s, dtype=dtype) for s in range(N_NODES)]
    base, params, buffers = stacked(nets)
    x, y = batch(N_NODES, 2, shape, dtype)

    losses = vmap(loss_fn(base))(params, buffers, x, y)
    grads = vmap(grad(loss_fn(base)))(params, buffers, x, y)
    assert set(grads) == {k for k, _ in nets[0].named_parameters()}
    compare = dtype == torch.float64 or well_posed(nets, x)

    for i, net in enumerate(nets):
        out = net(x[i])
        assert out.shape == (2, NUM_CLASSES) and out.dtype == dtype
        loss, ref = loop_gradients(net, x[i], y[i])
        assert_equal_values(losses[i], loss, what="loss")  # continuous even at a kink
        for pname, g in ref.items():
            assert grads[pname].shape == (N_NODES, *g.shape)
        if compare:  # else float32 rounding may cross a kink: the float64 case compares them
            assert_node_gradients(grads, i, ref, net, x[i], y[i], dtype)


@DTYPES
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=case_id)
def test_vmapped_vjp_equals_loop(case, dtype):
    name, options, shape = case
    nets = [build(name, options, shape, seed=s, dtype=dtype) for s in range(N_NODES)]
    base, params, buffers = stacked(nets)
    x, _ = batch(N_NODES, 2, shape, dtype)
    cotangent = torch.randn(N_NODES, 2, NUM_CLASSES, generator=torch.Generator().manual_seed(1),
                            dtype=dtype)
    if dtype == torch.float32 and not well_posed(nets, x):
        pytest.skip("a kink within float32 rounding of this input: compared in float64")

    def pullback(p, b, xi, v):
        _, fn = vjp(lambda q: functional_call(base, (q, b), (xi,)), p)
        return fn(v)[0]

    vjps = vmap(pullback)(params, buffers, x, cotangent)
    for i, net in enumerate(nets):
        names, tensors = zip(*net.named_parameters(), strict=True)
        ref = dict(zip(names, torch.autograd.grad(net(x[i]), tensors, cotangent[i]), strict=True))
        scale = precision.magnitude(ref)
        for pname, g in ref.items():
            assert_equal_values(vjps[pname][i], g, scale=scale, what=pname)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=case_id)
def test_vmapped_hvp_forward_over_reverse_equals_double_backward(case):
    """Curvature code uses jvp(grad(.)): every default model supports forward-mode AD."""
    name, options, shape = case
    nets = [build(name, options, shape, seed=s, dtype=torch.float64) for s in range(2)]
    base, params, buffers = stacked(nets)
    x, y = batch(2, 2, shape, torch.float64)
    gen = torch.Generator().manual_seed(2)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def hvp(p, b, xi, yi, v):
        return jvp(lambda q: grad(loss_fn(base))(q, b, xi, yi), (p,), (v,))[1]

    hvps = vmap(hvp)(params, buffers, x, y, tangent)
    for i, net in enumerate(nets):
        names, tensors = zip(*net.named_parameters(), strict=True)
        g = torch.autograd.grad(F.cross_entropy(net(x[i]), y[i]), tensors, create_graph=True)
        dot = sum((gi * tangent[n][i]).sum() for n, gi in zip(names, g, strict=True))
        ref = torch.autograd.grad(dot, tensors, allow_unused=True)
        for pname, h in zip(names, ref, strict=True):
            h = torch.zeros_like(hvps[pname][i]) if h is None else h
            assert max_diff(hvps[pname][i], h) < 1e-10, pname


@DTYPES
@pytest.mark.parametrize("case", BATCHNORM_CASES, ids=case_id)
def test_batchnorm_stacked_buffers_update_per_node(case, dtype):
    """The running statistics update per node; gradients and eval outputs match the modules.

    The resnet20 input puts a ReLU input (block layer3.2, after norm1) 8e-8 from 0, below the
    float32 rounding of its forward pass (6e-6 there): a float32 evaluation may take either side,
    and the gradients of every layer before it then differ by up to 1e-2 (on AMD EPYC vmap and the
    loop took different sides). Not ill-conditioning (with the same sides they agree within 2 eps
    x scale) but a discontinuity of the gradient; its gradients are compared in float64.
    """
    name, options, shape = case
    nets = [build(name, options, shape, seed=s, dtype=dtype) for s in range(N_NODES)]
    assert all(models.has_batchnorm(net) for net in nets)
    base, params, buffers = stacked(nets)
    assert buffers, "BatchNorm models have buffers to stack"
    before = {k: v.clone() for k, v in buffers.items()}
    x, y = batch(N_NODES, 4, shape, dtype)
    x = x + torch.arange(N_NODES).view(N_NODES, *[1] * (x.dim() - 1))  # node-specific statistics
    compare = dtype == torch.float64 or well_posed(nets, x)

    grads = vmap(grad(loss_fn(base)))(params, buffers, x, y)

    # functional_call returns only the output: the running statistics are updated in place in
    # the stacked buffer tensors, one row per node, as each separate module updates its own.
    for i, net in enumerate(nets):
        _, ref = loop_gradients(net, x[i], y[i])
        for bname, buf in net.named_buffers():
            fresh = 1 if bname.endswith("running_var") else 0
            assert torch.equal(before[bname][i], torch.full_like(buf, fresh))
            if bname.endswith("num_batches_tracked"):
                assert buffers[bname][i].item() == buf.item() == 1
            else:
                assert_equal_values(buffers[bname][i], buf, what=bname)
        if compare:  # else float32 rounding may cross a kink: the float64 case compares them
            assert_node_gradients(grads, i, ref, net, x[i], y[i], dtype)
    for bname in buffers:
        if bname.endswith("running_mean"):
            assert not torch.equal(buffers[bname], before[bname])
            assert not torch.allclose(buffers[bname][0], buffers[bname][1])

    # Eval mode reads the stacked statistics per node and matches the modules.
    base.eval()
    out = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    for i, net in enumerate(nets):
        net.eval()
        assert_equal_values(out[i], net(x[i]), what="eval output")


def test_batchnorm_train_mode_with_shared_buffers_raises():
    """The pitfall: unbatched buffers cannot take the in-place running-statistics update."""
    name, options, shape = BATCHNORM_CASES[1]
    nets = [build(name, options, shape, seed=s) for s in range(2)]
    base, params, _ = stacked(nets)
    shared = dict(nets[0].named_buffers())
    x, y = batch(2, 4, shape)
    with pytest.raises(RuntimeError):
        vmap(loss_fn(base), in_dims=(0, None, 0, 0))(params, shared, x, y)


def test_dropout_needs_randomness_mode():
    net = models.make("mlp", input_shape=(40,), num_classes=NUM_CLASSES, seed=0, dropout=0.5)
    assert models.has_dropout(net)
    base, params, buffers = stacked([net] * N_NODES)  # identical parameters on every node
    x = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(3)).expand(N_NODES, 8, 40)

    def forward(p, b, xi):
        return functional_call(base, (p, b), (xi,))

    with pytest.raises(RuntimeError, match="randomness"):
        vmap(forward)(params, buffers, x)

    different = vmap(forward, randomness="different")(params, buffers, x)
    assert not torch.equal(different[0], different[1])
    assert not torch.equal(different[1], different[2])

    same = vmap(forward, randomness="same")(params, buffers, x)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    net.eval()
    assert not torch.equal(same[0], net(x[0]))  # dropout was active

    y = torch.zeros(N_NODES, 8, dtype=torch.long)
    g = vmap(grad(loss_fn(base)), randomness="different")(params, buffers, x, y)
    assert not torch.equal(g["head.weight"][0], g["head.weight"][1])
