"""Losses of a node stack as functions of flat parameters: what the curvature operators take.

Curvature is measured on a fixed evaluation set (reference/measures.md §5.3: fix it, use the same
one for every node, for ``x̄`` and across checkpoints), in eval mode (BatchNorm uses running
statistics, dropout is off; §4), as the mean loss over the set: chunks are weighted by their size
(the PyHessian/curvlinops convention, §3), so the result does not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flatlab.curvature.operators import CurvatureError, HessianOperator
from flatlab.engine.stack import NodeStack

__all__ = ["stack_loss", "model_hessian"]


def stack_loss(stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
               nodes: bool = False, buffers: dict[str, torch.Tensor] | None = None,
               batch_size: int = 2048) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mean loss on ``(inputs, targets)`` as a differentiable function of flat parameters.

    Args:
        stack: The node stack (defines the model, the loss and the buffers).
        inputs: ``[N, ...]`` evaluation inputs.
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        nodes: ``False``: a function of one model ``x [P] -> scalar`` (with the averaged buffers
            unless ``buffers`` is given): :func:`flatlab.measures.model_loss`. ``True``: a
            function of all node models ``X [n, P] -> [n]`` (each node with its own buffers),
            whose Hessian is block diagonal.
        buffers: Buffers of the one model (``nodes=False``).
        batch_size: Samples per chunk.

    The function runs the model in eval mode (the stack's mode is restored after each call).
    """
    if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise CurvatureError(f"evaluation inputs ({inputs.shape[0]}) and targets "
                             f"({targets.shape[0]}) must be the same, non-zero number of samples")
    if not nodes:  # one model: the same loss the sharpness measures use, defined once
        from flatlab.measures import model_loss

        return model_loss(stack, inputs, targets, buffers=buffers, batch_size=batch_size)
    N = inputs.shape[0]  # noqa: N806
    dev, dt = stack.device, stack.dtype
    chunks = [(inputs[s:s + batch_size].to(dev, dt), targets[s:s + batch_size].to(dev))
              for s in range(0, N, batch_size)]
    per_node = torch.vmap(stack.loss_fn, in_dims=(0, None))

    def every(X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        with stack.mode(train=False):
            return sum(per_node(stack.forward(X, a, shared_inputs=True), y) * (a.shape[0] / N)
                       for a, y in chunks)

    return every


def model_hessian(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                  targets: torch.Tensor, *, method: str = "double_backward",
                  buffers: dict[str, torch.Tensor] | None = None,
                  batch_size: int = 2048) -> HessianOperator:
    """The Hessian of the evaluation loss at ``x`` ``[P]`` (one model) or ``X`` ``[n, P]``.

    For ``X`` ``[n, P]`` (the node models, one per row) the operator multiplies ``[n, P]`` stacks,
    one Hessian per node, in one batched pass.
    """
    nodes = x.dim() == 2
    if nodes and x.shape[0] != stack.n:
        raise CurvatureError(f"the stack holds {stack.n} nodes but X has {x.shape[0]} rows")
    fn = stack_loss(stack, inputs, targets, nodes=nodes, buffers=buffers, batch_size=batch_size)
    return HessianOperator(fn, x, method=method)
