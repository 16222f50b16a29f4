"""Slow, obvious per-node implementations of the algorithms: a Python loop over separate modules.

Each node is its own ``nn.Module``; gradients come from ``loss.backward()`` on that module alone;
gossip is a loop over the non-zero weights ``w_ij`` of row ``i``. Nothing is vectorized and
nothing is shared with :mod:`flatlab.engine`, :mod:`flatlab.comm` or :mod:`flatlab.algorithms`,
so agreement between the two is evidence that the vectorized engine does what the papers say.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


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

    def grad(self, i: int, x: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
             ) -> tuple[float, torch.Tensor]:
        """Loss and gradient of node i's module at parameters x on its batch (updates its BN)."""
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
        return float(loss.detach()), g + self.weight_decay * x


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
             steps: int, *, momentum: float = 0.0, nesterov: bool = False) -> torch.Tensor:
    """Trajectory ``[steps + 1, n, P]`` of one algorithm, node by node.

    ``batches(t)`` gives ``[n, b, ...]`` inputs and targets; node i uses row i.
    """
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
        if name == "consensus":
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


def buffers(nodes: LoopNodes) -> dict[str, torch.Tensor]:
    """Each node's buffers, stacked ``[n, ...]`` (to compare with the node stack's)."""
    names = [k for k, _ in nodes.models[0].named_buffers()]
    return {k: torch.stack([dict(m.named_buffers())[k] for m in nodes.models]) for k in names}
