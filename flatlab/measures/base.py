"""What every measure shares: the ``loss_fn`` it takes, the model objective, input checks.

A measure is a free function of ``loss_fn`` (:data:`LossFn`: a flat parameter vector ``x`` ``[P]``
↦ a scalar loss on a fixed evaluation set) and a point ``x``. :func:`model_loss` gives the
``loss_fn`` of one model of a node stack (the engine's :class:`~flatlab.engine.Objective`). The
checks and evaluations here are the ones every measure applies to its inputs, so that they refuse
bad input with the same :class:`~flatlab.errors.MeasureError` lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flatlab.engine.objective import Objective
from flatlab.engine.stack import NodeStack
from flatlab.errors import MeasureError

__all__ = ["LossFn", "ModelLoss", "model_loss", "check_x", "check_count", "loss_value",
           "loss_value_and_grad"]

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""A map from a flat parameter vector ``x`` ``[P]`` to a scalar loss (deterministic)."""

ModelLoss = Objective
"""The loss of one model of a node stack: :class:`flatlab.engine.Objective` (the older name)."""


def model_loss(stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
               buffers: dict[str, torch.Tensor] | None = None,
               batch_size: int = 2048) -> Objective:
    """A ``loss_fn`` for one model of ``stack``: the mean loss over ``(inputs, targets)``.

    Args:
        stack: The node stack that defines the model and the loss.
        inputs: ``[N, ...]`` evaluation inputs; moved once to the stack's device and dtype.
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        buffers: Buffers to evaluate with (a node's own, ``{name: tensor}`` unstacked); by default
            ``stack.average_buffers()``, the buffers of the averaged model.
        batch_size: Samples per chunk.

    Returns:
        An :class:`~flatlab.engine.Objective` of one model, callable as ``loss_fn(x) -> scalar``
        for ``x`` ``[P]``, with a chunked ``value_and_grad`` (what the sharpness measures use).
    """
    return Objective(stack, inputs, targets, buffers=buffers, batch_size=batch_size)


# ---------------------------------------------------------------------------------- checks
def check_x(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` detached, if it is a non-empty floating tensor ``[P]`` or ``[n, P]``.

    Raises:
        MeasureError: Naming ``name``, the shapes accepted and what was given.
    """
    if not isinstance(x, torch.Tensor):
        raise MeasureError(f"{name} must be a tensor [P] or [n, P], got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() not in (1, 2) or x.shape[-1] == 0 or x.numel() == 0:
        raise MeasureError(f"{name} must be a non-empty floating tensor [P] or [n, P], got "
                           f"dtype {x.dtype} and shape {tuple(x.shape)}")
    return x.detach()


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer ``>= minimum`` (not a bool).

    Raises:
        MeasureError: Naming ``name`` and the minimum.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MeasureError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- evaluation
def _scalar(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MeasureError(f"loss_fn must return a scalar tensor, got {got}")
    return out.reshape(())


def loss_value(loss_fn: LossFn, x: torch.Tensor) -> float:
    """``f(x)`` as a Python float, without a graph.

    Raises:
        MeasureError: ``loss_fn`` does not return a scalar tensor.
    """
    with torch.no_grad():
        return float(_scalar(loss_fn(x)))


def loss_value_and_grad(loss_fn: LossFn, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(f(x), ∇f(x))``; uses ``loss_fn.value_and_grad`` when it has one (chunked).

    Raises:
        MeasureError: ``loss_fn`` does not return a scalar tensor, or one with no gradient.
    """
    vg = getattr(loss_fn, "value_and_grad", None)
    if callable(vg):
        v, g = vg(x.detach())
        return float(v), g.detach()
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _scalar(loss_fn(xr))
        if not out.requires_grad:
            raise MeasureError("loss_fn(x) is not differentiable in x (its output has no "
                               "gradient); the ascent-based measures need one")
        (g,) = torch.autograd.grad(out, xr)
    return float(out.detach()), g.detach()
