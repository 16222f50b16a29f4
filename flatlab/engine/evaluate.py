"""Evaluation of the averaged model and of every node, in vectorized passes.

The averaged model is ``x̄ = (1/n) 1ᵀX`` with the node buffers averaged (float buffers; integer
counters are taken from node 0). All evaluation runs in eval mode (BatchNorm uses running
statistics, dropout is off) and in chunks of the evaluation set, so memory stays bounded: both
functions here are passes of the evaluation objective, :class:`~flatlab.engine.Objective`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flatlab.engine.objective import Objective
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


@torch.no_grad()
def evaluate(stack: NodeStack, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
             targets: torch.Tensor, *, average: bool = True, nodes: bool = True,
             batch_size: int = 2048, xbar: torch.Tensor | None = None,
             buffers_avg: dict[str, torch.Tensor] | None = None) -> Evaluation:
    """Loss and accuracy of ``x̄`` and of each row of ``X`` on ``(inputs, targets)``.

    Both are :meth:`Objective.evaluate <flatlab.engine.Objective.evaluate>` over the set, moved
    to the device chunk by chunk.

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
    loss_avg, acc_avg, loss_nodes, acc_nodes = float("nan"), None, None, None
    if average:
        xbar = X.mean(0) if xbar is None else xbar
        f = Objective(stack, inputs, targets, buffers=buffers_avg, batch_size=batch_size,
                      cache=False)
        loss, acc = f.evaluate(xbar)
        loss_avg, acc_avg = float(loss), (None if acc is None else float(acc))
    if nodes:
        f = Objective(stack, inputs, targets, nodes=True, cache=False,
                      batch_size=max(64, batch_size // X.shape[0]))
        loss_nodes, acc_nodes = f.evaluate(X)
    return Evaluation(loss_avg, acc_avg, loss_nodes, acc_nodes, int(inputs.shape[0]))


def full_gradient(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor, *, batch_size: int = 2048,
                  buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``∇f(x)`` ``[P]``: the gradient of the mean loss over the whole set, at one model ``x``.

    :meth:`Objective.value_and_grad <flatlab.engine.Objective.value_and_grad>` in eval mode,
    chunk by chunk (``Σ_chunks |chunk| ∇f_chunk / N``), with the averaged buffers unless
    ``buffers`` is given. Weight decay is not included.
    """
    f = Objective(stack, inputs, targets, buffers=buffers, batch_size=batch_size, cache=False)
    return f.value_and_grad(x, method="func")[1]
