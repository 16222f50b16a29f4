"""Losses of a node stack as functions of flat parameters: what the curvature operators take.

Curvature is measured on a fixed evaluation set (docs/reference/measures.md §5.3: fix it, use the
same one for every node, for ``x̄`` and across checkpoints), in eval mode (BatchNorm uses running
statistics, dropout is off; §4), as the mean loss over the set: chunks are weighted by their size
(the PyHessian/curvlinops convention, §3), so the result does not depend on the chunking. That
loss is the engine's evaluation objective, :class:`flatlab.engine.Objective`, the same one the
evaluation and the sharpness measures use.
"""

from __future__ import annotations

import torch

from flatlab.curvature.operators import HessianOperator
from flatlab.engine.objective import Objective
from flatlab.engine.stack import NodeStack
from flatlab.errors import CurvatureError

__all__ = ["stack_loss", "model_hessian"]


def stack_loss(stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
               nodes: bool = False, buffers: dict[str, torch.Tensor] | None = None,
               batch_size: int = 2048) -> Objective:
    """The mean loss on ``(inputs, targets)`` as a differentiable function of flat parameters.

    Args:
        stack: The node stack (defines the model, the loss and the buffers).
        inputs: ``[N, ...]`` evaluation inputs.
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        nodes: ``False``: a function of one model ``x [P] -> scalar`` (with the averaged buffers
            unless ``buffers`` is given). ``True``: a function of all node models
            ``X [n, P] -> [n]`` (each node with its own buffers), whose Hessian is block diagonal.
        buffers: Buffers of the one model (``nodes=False``).
        batch_size: Samples per chunk.

    Returns:
        The :class:`~flatlab.engine.Objective`; it runs the model in eval mode (the stack's mode
        is restored after each call).

    Raises:
        ObjectiveError: (a :class:`CurvatureError`) for data it cannot use.
    """
    return Objective(stack, inputs, targets, nodes=nodes, buffers=buffers, batch_size=batch_size)


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
