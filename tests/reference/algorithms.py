"""Slow, obvious per-node implementations of the algorithms: a Python loop over separate modules.

Each node is its own ``nn.Module``; gradients come from ``loss.backward()`` on that module alone;
gossip is a loop over the non-zero weights ``w_ij`` of row ``i``. Nothing is vectorized and
nothing is shared with :mod:`flatlab.engine`, :mod:`flatlab.comm` or :mod:`flatlab.algorithms`,
so agreement between the two is evidence that the vectorized engine does what the papers say.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from flatlab.seeds import seed_for


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def set_flat(module: nn.Module, vec: torch.Tensor) -> None:
    pos = 0
    with torch.no_grad():
        for p in module.parameters():
            k = p.numel()
            p.copy_(vec[pos:pos + k].view_as(p))
            pos += k


class LoopNodes:
    """n separate modules, each with its own parameters and buffers."""

    def __init__(self, template: nn.Module, n: int, loss: str = "cross_entropy",
                 weight_decay: float = 0.0) -> None:
        self.models = [copy.deepcopy(template) for _ in range(n)]
        for m in self.models:
            m.train()
        self.n = n
        self.loss = loss
        self.weight_decay = weight_decay

    def params(self) -> list[torch.Tensor]:
        return [flat(m) for m in self.models]

    def grad(self, i: int, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             decay: bool = True) -> tuple[float, torch.Tensor]:
        """Loss and gradient of node i's module at parameters x on its batch (updates its BN),
        plus ``weight_decay * x`` unless ``decay`` is False."""
        m = self.models[i]
        set_flat(m, x)
        m.zero_grad(set_to_none=True)
        out = m(inputs)
        if self.loss == "cross_entropy":
            loss = nn.functional.cross_entropy(out, targets)
        else:
            loss = 0.5 * (out - targets.reshape(out.shape)).pow(2).sum(-1).mean()
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        return float(loss.detach()), (g + self.weight_decay * x) if decay else g


def gossip(W: np.ndarray, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """x_i <- sum_j w_ij x_j, looping over the non-zero weights of each row."""
    out = []
    for i in range(len(xs)):
        acc = torch.zeros_like(xs[i])
        for j in np.flatnonzero(W[i]):
            acc = acc + float(W[i, j]) * xs[j]
        out.append(acc)
    return out


def run_loop(name: str, nodes: LoopNodes, W_at: Callable[[int], np.ndarray],
             batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], lr: float | Callable,
             steps: int, *, momentum: float = 0.0, nesterov: bool = False,
             **hp) -> torch.Tensor:
    """Trajectory ``[steps + 1, n, P]`` of one algorithm, node by node.

    ``batches(t)`` gives ``[n, b, ...]`` inputs and targets; node i uses row i. Pass every
    hyper-parameter (``algo.hparams()``): the loops have no defaults of their own.
    """
    if name in LOOPS:
        return LOOPS[name](nodes, W_at, batches, lr, steps, momentum=momentum,
                           nesterov=nesterov, **hp)
    n = nodes.n
    xs = nodes.params()
    if name == "centralized":
        xbar = sum(xs) / n
        xs = [xbar.clone() for _ in range(n)]
        m = torch.zeros_like(xbar)
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta = lr(t) if callable(lr) else lr
        inputs, targets = batches(t)
        W = W_at(t)
        if name in ("consensus", "ad-psgd"):  # AD-PSGD: W the round's product of pair averages
            gs = [nodes.grad(i, xs[i], inputs[i], targets[i])[1] for i in range(n)]
            mixed = gossip(W, xs)
            xs = [mixed[i] - eta * gs[i] for i in range(n)]
        elif name == "diffusion":
            gs = [nodes.grad(i, xs[i], inputs[i], targets[i])[1] for i in range(n)]
            xs = gossip(W, [xs[i] - eta * gs[i] for i in range(n)])
        elif name == "diffusion-cta":
            phi = gossip(W, xs)
            gs = [nodes.grad(i, phi[i], inputs[i], targets[i])[1] for i in range(n)]
            xs = [phi[i] - eta * gs[i] for i in range(n)]
        elif name == "centralized":
            gs = [nodes.grad(i, xs[i], inputs[i], targets[i])[1] for i in range(n)]
            g = sum(gs) / n
            if momentum:
                m = momentum * m + g
                d = g + momentum * m if nesterov else m
            else:
                d = g
            xs = [x - eta * d for x in xs]
        else:
            raise KeyError(f"no loop reference for {name}")
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def _grads(nodes: LoopNodes, xs: Sequence[torch.Tensor], batches: Callable, t: int
            ) -> list[torch.Tensor]:
    inputs, targets = batches(t)
    return [nodes.grad(i, xs[i], inputs[i], targets[i])[1] for i in range(nodes.n)]


def _eta(lr: float | Callable, t: int) -> float:
    return lr(t) if callable(lr) else lr


def loop_dsgdm(nodes, W_at, batches, lr, steps, *, momentum, nesterov):
    """DSGDm, node by node: m_i = β m_i + g_i; x_i <- Σ_j w_ij (x_j − η d_j)."""
    xs = nodes.params()
    ms = [torch.zeros_like(x) for x in xs]
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        half = []
        for i in range(nodes.n):
            ms[i] = momentum * ms[i] + gs[i]
            d = gs[i] + momentum * ms[i] if nesterov else ms[i]
            half.append(xs[i] - eta * d)
        xs = gossip(W_at(t), half)
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_qg_dsgdm(nodes, W_at, batches, lr, steps, *, momentum, nesterov, c):
    """QG-DSGDm, node by node, in the order of decentralized_qg_sgd.py."""
    xs = nodes.params()
    mh = [torch.zeros_like(x) for x in xs]
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        half = []
        for i in range(nodes.n):
            v = momentum * mh[i] + gs[i]
            d = gs[i] + momentum * v if nesterov else v
            half.append(xs[i] - eta * d)
        new = gossip(W_at(t), half)
        for i in range(nodes.n):
            delta = (xs[i] - new[i]) / eta
            mh[i] = (1 - c) * mh[i] + c * delta
        xs = new
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_decentlam(nodes, W_at, batches, lr, steps, *, momentum, nesterov):
    """DecentLaM, node by node: send x − ηg, corrected gradient, momentum step."""
    xs = nodes.params()
    ms = [torch.zeros_like(x) for x in xs]
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        received = gossip(W_at(t), [xs[i] - eta * gs[i] for i in range(nodes.n)])
        new = []
        for i in range(nodes.n):
            g_tilde = (xs[i] - received[i]) / eta
            ms[i] = momentum * ms[i] + g_tilde
            new.append(xs[i] - eta * ms[i])
        xs = new
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_gradient_tracking(nodes, W_at, batches, lr, steps, *, momentum, nesterov, form):
    """GT as the equations read: DIGing X⁺ = W X − ηY, Y⁺ = W Y + G⁺ − G (Y⁰ = G⁰), or ATC."""
    xs = nodes.params()
    traj = [torch.stack(xs)]
    if form == "diging":
        gs = _grads(nodes, xs, batches, 0)
        ys = list(gs)
        for t in range(steps):
            W = W_at(t)
            mixed = gossip(W, xs)
            xs = [mixed[i] - _eta(lr, t) * ys[i] for i in range(nodes.n)]
            traj.append(torch.stack(xs))
            if t + 1 < steps:
                new_gs = _grads(nodes, xs, batches, t + 1)
                wy = gossip(W, ys)
                ys = [wy[i] + new_gs[i] - gs[i] for i in range(nodes.n)]
                gs = new_gs
        return torch.stack(traj)
    ys, gs = None, None
    for t in range(steps):
        W, new_gs = W_at(t), _grads(nodes, xs, batches, t)
        if t == 0:
            ys = list(new_gs)
        else:
            ys = gossip(W, [ys[i] + new_gs[i] - gs[i] for i in range(nodes.n)])
        gs = new_gs
        xs = gossip(W, [xs[i] - _eta(lr, t) * ys[i] for i in range(nodes.n)])
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_momentum_tracking(nodes, W_at, batches, lr, steps, *, momentum, nesterov, y0):
    """Momentum Tracking at node i in the official order (momentum_tracking_optimizer.py)."""
    n, beta = nodes.n, momentum
    xs = nodes.params()
    us = [torch.zeros_like(x) for x in xs]
    cs = [torch.zeros_like(x) for x in xs]
    traj = [torch.stack(xs)]
    for t in range(steps):
        W, eta, gs = W_at(t), _eta(lr, t), _grads(nodes, xs, batches, t)
        if t == 0 and y0 == "average":
            gbar = sum(gs) / n
            us = [(gs[i] - gbar) / (1 - beta) for i in range(n)]
            cs = [u.clone() for u in us]
        us = [beta * us[i] + gs[i] for i in range(n)]
        x_tilde = gossip(W, xs)                               # exchange #1: pre-update x
        diff = gossip(W, [cs[i] - us[i] for i in range(n)])   # exchange #2: c − u
        xs = [x_tilde[i] - eta * (us[i] - cs[i]) for i in range(n)]
        cs = [us[i] + diff[i] for i in range(n)]
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def _loop_second_order(combine, nodes, W_at, batches, lr, steps):
    """X^{t+1} = W̄ (2X^t − X^{t−1} − η_t G^t + η_{t−1} G^{t−1}), X^1 = W̄ (X^0 − η_0 G^0)."""
    xs = nodes.params()
    traj = [torch.stack(xs)]
    x_prev, eg_prev = None, None
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        eg = [eta * g for g in gs]
        if t == 0:
            phi = [xs[i] - eg[i] for i in range(nodes.n)]
        else:
            phi = [2 * xs[i] - x_prev[i] - eg[i] + eg_prev[i] for i in range(nodes.n)]
        x_prev, eg_prev = xs, eg
        xs = combine(W_at(t), phi)
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_exact_diffusion(nodes, W_at, batches, lr, steps, *, momentum, nesterov):
    """Exact Diffusion in its eliminated form, combining with (I + W)/2."""
    lazy = lambda W, v: gossip((np.eye(len(v)) + W) / 2, v)  # noqa: E731
    return _loop_second_order(lazy, nodes, W_at, batches, lr, steps)


def loop_d2(nodes, W_at, batches, lr, steps, *, momentum, nesterov, allow_unstable):
    """D² in its eliminated form, combining with W."""
    return _loop_second_order(gossip, nodes, W_at, batches, lr, steps)


def node_kfac_factors(template: nn.Module, x: torch.Tensor, inputs: torch.Tensor,
                      targets: torch.Tensor, loss: str = "cross_entropy"
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K-FAC factors (A, G) of one node: its own module, forward hooks for the layer inputs,
    ``retain_grad`` for the per-example output gradients of the summed loss, convolution patches
    cut out by explicit slicing; A averaged over batch and positions, G summed over positions."""
    m = copy.deepcopy(template)
    m.train()
    set_flat(m, x)
    rec: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d)):
            def hook(mod, args, o, name=name, rec=rec):
                o.retain_grad()
                rec[name] = (args[0].detach(), o)
            handles.append(mod.register_forward_hook(hook))
    y = m(inputs)
    B = inputs.shape[0]
    if loss == "mse":
        total = 0.5 * (y - targets.reshape(y.shape)).pow(2).sum()
    else:
        total = nn.functional.cross_entropy(y, targets, reduction="sum")
    total.backward()
    for h in handles:
        h.remove()
    out = {}
    for name, mod in m.named_modules():
        if name not in rec:
            continue
        a, o = rec[name]
        g = o.grad
        if isinstance(mod, nn.Conv1d):
            k, s, p = mod.kernel_size[0], mod.stride[0], mod.padding[0]
            a = nn.functional.pad(a, (p, p))
            a = torch.stack([a[:, :, t * s:t * s + k].reshape(B, -1) for t in range(g.shape[-1])],
                            1)                        # [B, T, C k]
            g = g.transpose(1, 2)                     # [B, T, out]
        else:
            a, g = a.unsqueeze(1), g.unsqueeze(1)
        if mod.bias is not None:
            a = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype)], -1)
        T = a.shape[1]
        A = sum(a[b, t].outer(a[b, t]) for b in range(B) for t in range(T)) / (B * T)
        G = sum(g[b, t].outer(g[b, t]) for b in range(B) for t in range(T)) / B
        out[name] = (A, G)
    return out


def loop_ngpd(nodes, W_at, batches, lr, steps, *, momentum, nesterov, alpha, theta, period,
              tie, dual_init, damping, fisher, factor_every, inverse_every, ema, tikhonov,
              seed):
    """NGPD node by node: ECL with the primal step solved densely in the metric
    mu (F + damping I) + a |N_i| I, F block-diagonal with dense kron(G, A) per layer (empirical
    Fisher, exact inverse), the parameters no layer covers with the damping alone."""
    assert fisher == "empirical" and not tikhonov
    n = nodes.n
    W = W_at(0)
    nbrs = {i: [j for j in range(n) if j != i and W[i, j] != 0] for i in range(n)}
    A_sign = {(i, j): (1.0 if i < j else -1.0) for i in range(n) for j in nbrs[i]}
    xs = nodes.params()
    z = {(i, j): a * xs[i] if dual_init == "x0" else torch.zeros_like(xs[0])
         for (i, j), a in A_sign.items()}
    template = nodes.models[0]
    offsets, pos = {}, 0
    for name, prm in template.named_parameters():
        offsets[name] = (pos, prm.numel())
        pos += prm.numel()
    P = pos
    factors: list[dict] = [None] * n
    frozen: list[dict] = [None] * n
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta = _eta(lr, t)
        inputs, targets = batches(t)
        gs = [nodes.grad(i, xs[i], inputs[i], targets[i])[1] for i in range(n)]
        mu = 1.0 / eta
        new = []
        for i in range(n):
            if t % factor_every == 0:
                f = node_kfac_factors(template, xs[i], inputs[i], targets[i])
                factors[i] = f if t == 0 else {k: tuple(ema * o + (1 - ema) * v for o, v in
                                                        zip(factors[i][k], f[k], strict=True))
                                               for k in f}
            if t % inverse_every == 0:
                frozen[i] = {k: (a.clone(), g.clone()) for k, (a, g) in factors[i].items()}
            d = len(nbrs[i])
            a_pen = alpha if tie is None else tie / (eta * (period * d + period - tie * d))
            resid = gs[i] + a_pen * sum(xs[i] - A_sign[i, j] * z[i, j] for j in nbrs[i])
            metric = torch.eye(P, dtype=xs[i].dtype) * (mu * damping + a_pen * d)
            for name, (Af, Gf) in frozen[i].items():
                w_off, w_num = offsets[name + ".weight"]
                idx = []  # [W | b] row-major: row o is (W[o, :], b[o])
                has_b = name + ".bias" in offsets
                cols = w_num // Gf.shape[0]
                for o in range(Gf.shape[0]):
                    idx += list(range(w_off + o * cols, w_off + (o + 1) * cols))
                    if has_b:
                        idx.append(offsets[name + ".bias"][0] + o)
                idx_t = torch.tensor(idx)
                block = mu * torch.kron(Gf, Af)
                metric[idx_t.unsqueeze(1), idx_t.unsqueeze(0)] += block
            new.append(xs[i] - torch.linalg.solve(metric, resid))
        xs = new
        if (t + 1) % period == 0:
            msgs = {(i, j): z[i, j] - 2 * A_sign[i, j] * xs[i] for (i, j) in A_sign}
            for (i, j), y in msgs.items():
                z[j, i] = (1 - theta) * z[j, i] + theta * y
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_ecl(nodes, W_at, batches, lr, steps, *, momentum, nesterov, alpha, theta, period,
             tie, dual_init):
    """ECL node by node: a dict of duals z[(i, j)] per directed edge, messages sent one by one."""
    n = nodes.n
    W = W_at(0)
    nbrs = {i: [j for j in range(n) if j != i and W[i, j] != 0] for i in range(n)}
    A = {(i, j): (1.0 if i < j else -1.0) for i in range(n) for j in nbrs[i]}
    xs = nodes.params()
    # duals at 0, or at the consensus duals of the start, A_{i|j} x_i^0
    z = {(i, j): a * xs[i] if dual_init == "x0" else torch.zeros_like(xs[0])
         for (i, j), a in A.items()}
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        mu = 1.0 / eta
        new = []
        for i in range(n):
            d = len(nbrs[i])
            a = alpha if tie is None else tie / (eta * (period * d + period - tie * d))
            # argmin <g, x> + mu/2 |x - x_i|^2 + sum_j a/2 |A_ij x - z_ij|^2, solved directly
            rhs = mu * xs[i] - gs[i] + a * sum(A[i, j] * z[i, j] for j in nbrs[i])
            new.append(rhs / (mu + a * d))
        xs = new
        if (t + 1) % period == 0:
            msgs = {(i, j): z[i, j] - 2 * A[i, j] * xs[i] for (i, j) in A}
            for (i, j), y in msgs.items():   # node j receives y_{i|j} into z_{j|i}
                z[j, i] = (1 - theta) * z[j, i] + theta * y
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def _loop_compress(v: torch.Tensor, i: int, u: torch.Tensor | None, compressor: str,
                   fraction: float, levels: int, scaled: bool, biased: bool) -> torch.Tensor:
    """Node i's compressed block, written out coordinate-wise from the definitions (§9.1).

    ``u`` is the block's ``[n, d]`` uniform draws (row i is node i's), drawn in the engine's
    order from the same seeded generator, so the random operators can be compared exactly.
    """
    d = v.numel()
    if compressor == "identity":
        return v.clone()
    if compressor == "top-k":
        k = max(1, min(d, round(fraction * d)))
        out = torch.zeros_like(v)
        for j in sorted(range(d), key=lambda j: -abs(float(v[j])))[:k]:
            out[j] = v[j]
        return out
    if compressor == "random-k":
        k = max(1, min(d, round(fraction * d)))
        out = torch.zeros_like(v)
        for j in sorted(range(d), key=lambda j: -float(u[i, j]))[:k]:
            out[j] = v[j] * (d / k if scaled else 1.0)
        return out
    if compressor == "sign":
        return float(v.abs().sum()) / d * torch.sign(v)
    if compressor == "qsgd":
        norm = float(torch.linalg.vector_norm(v))
        out = torch.zeros_like(v)
        if norm > 0:
            for j in range(d):
                r = levels * abs(float(v[j])) / norm
                lev = math.floor(r) + (1.0 if float(u[i, j]) < r - math.floor(r) else 0.0)
                out[j] = norm * math.copysign(1.0, float(v[j])) * lev / levels if v[j] else 0.0
        tau = min(d / levels**2, math.sqrt(d) / levels)
        return out / (1 + tau) if biased else out
    raise KeyError(compressor)


def _loop_compressed(nodes, W_at, batches, lr, steps, *, momentum, nesterov, gamma, compressor,
                     fraction, levels, scaled, biased, per_layer, seed, beta=None, eps=None):
    """CHOCO-SGD (``beta is None``) or AdaGossip, node by node, as §9.2-9.3 read.

    Every node keeps explicit copies ``hat[i][j]`` of its neighbours' public models (and its own,
    ``hat[i][i]``), all starting at 0, and updates them from the messages ``q_j`` it receives.
    """
    n = nodes.n
    W = W_at(0)
    sizes = [p.numel() for p in nodes.models[0].parameters()] if per_layer else None
    xs = nodes.params()
    P = xs[0].numel()
    sizes = sizes or [P]
    nbrs = {i: [j for j in range(n) if W[i, j] != 0] for i in range(n)}  # includes i
    hat = {i: {j: torch.zeros_like(xs[0]) for j in nbrs[i]} for i in range(n)}
    ms = [torch.zeros_like(x) for x in xs]
    us = [torch.zeros_like(x) for x in xs]
    random = compressor in ("random-k", "qsgd")
    traj = [torch.stack(xs)]
    for t in range(steps):
        eta, gs = _eta(lr, t), _grads(nodes, xs, batches, t)
        W = W_at(t)
        half = []
        for i in range(n):
            if momentum:
                ms[i] = momentum * ms[i] + gs[i]
                d = gs[i] + momentum * ms[i] if nesterov else ms[i]
            else:
                d = gs[i]
            half.append(xs[i] - eta * d)
        gen = torch.Generator().manual_seed(seed_for(seed, "compressor", t))
        qs = [torch.zeros_like(x) for x in xs]
        pos = 0
        for size in sizes:
            u = torch.rand(n, size, generator=gen, dtype=xs[0].dtype) if random else None
            for i in range(n):
                diff = half[i][pos:pos + size] - hat[i][i][pos:pos + size]
                qs[i][pos:pos + size] = _loop_compress(diff, i, u, compressor, fraction, levels,
                                                       scaled, biased)
            pos += size
        for i in range(n):  # every node adds what it received to its copies
            for j in nbrs[i]:
                hat[i][j] = hat[i][j] + qs[j]
        new = []
        for i in range(n):
            e = sum(float(W[i, j]) * (hat[i][j] - hat[i][i]) for j in nbrs[i])
            if beta is None:
                new.append(half[i] + gamma * e)
            else:
                us[i] = beta * us[i] + (1 - beta) * e * e
                g_i = torch.clamp(gamma / ((us[i] / (1 - beta ** (t + 1))).sqrt() + eps), max=1.0)
                new.append(half[i] + g_i * e)
        xs = new
        traj.append(torch.stack(xs))
    return torch.stack(traj)


def loop_choco(nodes, W_at, batches, lr, steps, **hp):
    """CHOCO-SGD node by node (explicit neighbour copies, not the running sum)."""
    return _loop_compressed(nodes, W_at, batches, lr, steps, **hp)


def loop_adagossip(nodes, W_at, batches, lr, steps, **hp):
    """AdaGossip node by node: CHOCO plus the per-coordinate step from the gossip error."""
    return _loop_compressed(nodes, W_at, batches, lr, steps, **hp)


def push(P: np.ndarray, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Push-sum gossip as a node would do it: node i sends P[j, i] x_i to each j it reaches.

    Looping over senders and their columns (not over receivers' rows, as :func:`gossip` does).
    """
    out = [torch.zeros_like(x) for x in xs]
    for i in range(len(xs)):
        for j in np.flatnonzero(P[:, i]):
            out[j] = out[j] + float(P[j, i]) * xs[i]
    return out


def loop_sgp(nodes, W_at, batches, lr, steps, *, momentum, nesterov, weight_decay_on):
    """SGP (Assran et al. 2019, Alg. 1) node by node, its local step as the authors' code takes it.

    Each node keeps its numerator x_i as the one parameter of its own ``torch.optim.SGD``
    (facebookresearch/stochastic_gradient_push: ``GossipDataParallel`` de-biases the model for the
    forward and backward pass and multiplies it back into the numerator before
    ``optimizer.step()``), and its scalar weight w_i (a Python float). The gradient is taken at
    z_i = x_i / w_i; SGD adds its momentum (dampening 0, Nesterov as asked) and, with
    ``weight_decay_on="numerator"``, its weight decay on the numerator it steps (``wd * x_i``);
    with ``"z"`` the decay ``wd * z_i`` is put in the gradient instead, and SGD's is 0. Then x
    and w are pushed with the same P. The trajectory is that of z.
    """
    wd = nodes.weight_decay
    xs = [torch.nn.Parameter(x.clone()) for x in nodes.params()]
    opts = [torch.optim.SGD([x], lr=1.0, momentum=momentum, nesterov=nesterov,
                            weight_decay=wd if weight_decay_on == "numerator" else 0.0)
            for x in xs]
    ws = [1.0] * nodes.n
    traj = [torch.stack([x.detach().clone() for x in xs])]
    for t in range(steps):
        P = W_at(t)
        inputs, targets = batches(t)
        for i in range(nodes.n):
            z = xs[i].detach() / ws[i]
            g = nodes.grad(i, z, inputs[i], targets[i], decay=False)[1]
            xs[i].grad = g + wd * z if weight_decay_on == "z" else g
            opts[i].param_groups[0]["lr"] = _eta(lr, t)
            opts[i].step()
        half = push(P, [x.detach() for x in xs])
        ws = [float(v) for v in push(P, [torch.tensor(w, dtype=torch.float64) for w in ws])]
        with torch.no_grad():
            for i in range(nodes.n):
                xs[i].copy_(half[i])
        traj.append(torch.stack([half[i] / ws[i] for i in range(nodes.n)]))
    return torch.stack(traj)


LOOPS = {
    "sgp": loop_sgp,
    "choco": loop_choco,
    "adagossip": loop_adagossip,
    "ecl": loop_ecl,
    "ngpd": loop_ngpd,
    "dsgdm": loop_dsgdm,
    "qg-dsgdm": loop_qg_dsgdm,
    "decentlam": loop_decentlam,
    "gradient-tracking": loop_gradient_tracking,
    "momentum-tracking": loop_momentum_tracking,
    "exact-diffusion": loop_exact_diffusion,
    "d2": loop_d2,
}


def buffers(nodes: LoopNodes) -> dict[str, torch.Tensor]:
    """Each node's buffers, stacked ``[n, ...]`` (to compare with the node stack's)."""
    names = [k for k, _ in nodes.models[0].named_buffers()]
    return {k: torch.stack([dict(m.named_buffers())[k] for m in nodes.models]) for k in names}


def node_sam_grad(module: nn.Module, x: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor, *, rho: float, adaptive: bool = False,
                  eta: float = 0.01, weight_decay: float = 0.0) -> torch.Tensor:
    """One node's SAM (or ASAM) gradient with its own module, step by step (Foret et al. 2021).

    ``g = ∇f(x)``; ``ε = ρ g/‖g‖`` (ASAM: ``ε = ρ T² g/‖T g‖``, ``T = |x| + η``); the gradient
    is ``∇f(x + ε) + wd · x``. Two separate backward passes of a plain ``nn.Module``.
    """
    def loss_grad(at: torch.Tensor) -> torch.Tensor:
        set_flat(module, at)
        module.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(inputs), targets).backward()
        return torch.cat([p.grad.reshape(-1) for p in module.parameters()])

    g = loss_grad(x)
    if adaptive:
        t = x.abs() + eta
        eps = rho * t * t * g / torch.linalg.vector_norm(t * g)
    else:
        eps = rho * g / torch.linalg.vector_norm(g)
    return loss_grad(x + eps) + weight_decay * x
