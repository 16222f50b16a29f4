"""Vectorizing n separate models with torch.func gives what a loop over the modules gives."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, stack_module_state, vjp, vmap

from flatlab import models
from tests.models.cases import (
    BATCHNORM_CASES,
    DEFAULT_CASES,
    NUM_CLASSES,
    VARIANT_CASES,
    batch,
    build,
    case_id,
)

N_NODES = 3
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", DEFAULT_CASES + VARIANT_CASES, ids=case_id)
def test_vmapped_grads_equal_loop(case, dtype):
    name, options, shape = case
    nets = [build(name, options, shape, seed=s, dtype=dtype) for s in range(N_NODES)]
    base, params, buffers = stacked(nets)
    x, y = batch(N_NODES, 2, shape, dtype)

    losses = vmap(loss_fn(base))(params, buffers, x, y)
    grads = vmap(grad(loss_fn(base)))(params, buffers, x, y)
    assert set(grads) == {k for k, _ in nets[0].named_parameters()}

    for i, net in enumerate(nets):
        net.zero_grad()
        out = net(x[i])
        assert out.shape == (2, NUM_CLASSES) and out.dtype == dtype
        loss = F.cross_entropy(out, y[i])
        loss.backward()
        assert max_diff(losses[i], loss) < TOL[dtype]
        for pname, p in net.named_parameters():
            assert grads[pname].shape == (N_NODES, *p.shape)
            assert max_diff(grads[pname][i], p.grad) < TOL[dtype], pname


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=case_id)
def test_vmapped_vjp_equals_loop(case):
    name, options, shape = case
    nets = [build(name, options, shape, seed=s) for s in range(N_NODES)]
    base, params, buffers = stacked(nets)
    x, _ = batch(N_NODES, 2, shape)
    cotangent = torch.randn(N_NODES, 2, NUM_CLASSES, generator=torch.Generator().manual_seed(1))

    def pullback(p, b, xi, v):
        _, fn = vjp(lambda q: functional_call(base, (q, b), (xi,)), p)
        return fn(v)[0]

    vjps = vmap(pullback)(params, buffers, x, cotangent)
    for i, net in enumerate(nets):
        names, tensors = zip(*net.named_parameters(), strict=True)
        ref = torch.autograd.grad(net(x[i]), tensors, cotangent[i])
        for pname, g in zip(names, ref, strict=True):
            assert max_diff(vjps[pname][i], g) < 1e-5, pname


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


@pytest.mark.parametrize("case", BATCHNORM_CASES, ids=case_id)
def test_batchnorm_stacked_buffers_update_per_node(case):
    name, options, shape = case
    nets = [build(name, options, shape, seed=s) for s in range(N_NODES)]
    assert all(models.has_batchnorm(net) for net in nets)
    base, params, buffers = stacked(nets)
    assert buffers, "BatchNorm models have buffers to stack"
    before = {k: v.clone() for k, v in buffers.items()}
    x, y = batch(N_NODES, 4, shape)
    x = x + torch.arange(N_NODES).view(N_NODES, *[1] * (x.dim() - 1))  # node-specific statistics

    grads = vmap(grad(loss_fn(base)))(params, buffers, x, y)

    # functional_call returns only the output: the running statistics are updated in place in
    # the stacked buffer tensors, one row per node, as each separate module updates its own.
    for i, net in enumerate(nets):
        net.zero_grad()
        F.cross_entropy(net(x[i]), y[i]).backward()
        for bname, buf in net.named_buffers():
            fresh = 1 if bname.endswith("running_var") else 0
            assert torch.equal(before[bname][i], torch.full_like(buf, fresh))
            if bname.endswith("num_batches_tracked"):
                assert buffers[bname][i].item() == buf.item() == 1
            else:
                assert max_diff(buffers[bname][i], buf) < 1e-5, bname
        for pname, p in net.named_parameters():
            assert max_diff(grads[pname][i], p.grad) < 1e-5, pname
    for bname in buffers:
        if bname.endswith("running_mean"):
            assert not torch.equal(buffers[bname], before[bname])
            assert not torch.allclose(buffers[bname][0], buffers[bname][1])

    # Eval mode reads the stacked statistics per node and matches the modules.
    base.eval()
    out = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    for i, net in enumerate(nets):
        net.eval()
        assert max_diff(out[i], net(x[i])) < 1e-5


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
