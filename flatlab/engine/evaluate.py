"""Evaluation of the averaged model and of every node, in vectorized passes.

The averaged model is ``x̄ = (1/n) 1ᵀX`` with the node buffers averaged (float buffers; integer
counters are taken from node 0). All evaluation runs in eval mode (BatchNorm uses running
statistics, dropout is off) and in chunks of the evaluation set, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad

from flatlab.engine.stack import NodeStack

__all__ = ["Evaluation", "evaluate", "full_gradient"]


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy of the averaged model and of every node on one data set.

    Attributes:
        loss_avg: Mean loss of the averaged model ``x̄`` (``nan`` when not computed).
        accuracy_avg: Its accuracy (``None`` for regression or when not computed).
        loss_nodes: ``[n]`` mean loss of each node's model (``None`` when not computed).
        accuracy_nodes: ``[n]`` accuracy of each node's model.
        size: Number of samples evaluated.
    """

    loss_avg: float
    accuracy_avg: float | None
    loss_nodes: torch.Tensor | None
    accuracy_nodes: torch.Tensor | None
    size: int


def _chunks(n_samples: int, size: int):
    for s in range(0, n_samples, size):
        yield slice(s, min(s + size, n_samples))


@torch.no_grad()
def evaluate(stack: NodeStack, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
             targets: torch.Tensor, *, average: bool = True, nodes: bool = True,
             batch_size: int = 2048, xbar: torch.Tensor | None = None,
             buffers_avg: dict[str, torch.Tensor] | None = None) -> Evaluation:
    """Loss and accuracy of ``x̄`` and of each row of ``X`` on ``(inputs, targets)``.

    Args:
        stack: The node stack that defines the model and holds the buffers.
        X: ``[n, P]`` node parameters.
        inputs: ``[N, ...]`` evaluation inputs (on any device; moved chunk by chunk).
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        average: Evaluate the averaged model.
        nodes: Evaluate every node's model (one vmapped pass per chunk).
        batch_size: Samples per chunk for the averaged model; node passes use
            ``max(64, batch_size // n)`` samples per chunk.
        xbar: The averaged model to evaluate instead of ``X.mean(0)`` (a distributed rank holds
            only some rows of ``X``; it passes the all-reduced average).
        buffers_avg: Its buffers, instead of ``stack.average_buffers()``.
    """
    N = inputs.shape[0]
    classify = stack.loss_name == "cross_entropy"
    dev, dt = stack.device, stack.dtype
    loss_avg, acc_avg, loss_nodes, acc_nodes = float("nan"), None, None, None
    with stack.mode(train=False):
        if average:
            xbar = X.mean(0) if xbar is None else xbar
            bbar = stack.average_buffers() if buffers_avg is None else buffers_avg
            tot_loss, tot_correct = 0.0, 0
            for s in _chunks(N, batch_size):
                a = inputs[s].to(dev, dt)
                y = targets[s].to(dev)
                out = stack.apply(xbar, bbar, a)
                tot_loss += float(stack.loss_fn(out, y)) * a.shape[0]
                if classify:
                    tot_correct += int((out.argmax(-1) == y).sum())
            loss_avg = tot_loss / N
            acc_avg = tot_correct / N if classify else None
        if nodes:
            n = X.shape[0]
            lsum = torch.zeros(n, device=dev, dtype=torch.float64)
            csum = torch.zeros(n, device=dev, dtype=torch.float64)
            per_node = torch.vmap(stack.loss_fn, in_dims=(0, None))
            for s in _chunks(N, max(64, batch_size // n)):
                a = inputs[s].to(dev, dt)
                y = targets[s].to(dev)
                out = stack.forward(X, a, shared_inputs=True)
                lsum += per_node(out, y).double() * a.shape[0]
                if classify:
                    csum += (out.argmax(-1) == y).sum(-1).double()
            loss_nodes = (lsum / N).cpu()
            acc_nodes = (csum / N).cpu() if classify else None
    return Evaluation(loss_avg, acc_avg, loss_nodes, acc_nodes, N)


def full_gradient(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor, *, batch_size: int = 2048,
                  buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``∇f(x)`` ``[P]``: the gradient of the mean loss over the whole set, at one model ``x``.

    Computed in eval mode, chunk by chunk (``Σ_chunks |chunk| ∇f_chunk / N``), with the averaged
    buffers unless ``buffers`` is given. Weight decay is not included.
    """
    N = inputs.shape[0]
    bufs = stack.average_buffers() if buffers is None else buffers
    g = torch.zeros_like(x)
    dgrad = grad(stack.node_loss)
    with stack.mode(train=False):
        for s in _chunks(N, batch_size):
            a = inputs[s].to(stack.device, stack.dtype)
            y = targets[s].to(stack.device)
            g += dgrad(x.detach(), bufs, a, y) * (a.shape[0] / N)
    return g
