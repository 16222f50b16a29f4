"""Measurements on a scalar loss of a flat parameter vector: sharpness and landscape.

Every measure is a free function of ``loss_fn`` (a map from a flat parameter vector ``x`` ``[P]``
to a scalar loss, on a fixed evaluation set) and ``x``; results are frozen dataclasses with named
fields. :func:`model_loss` builds such a ``loss_fn`` for one model of a
:class:`~flatlab.engine.NodeStack` (eval mode, averaged buffers, chunked over the evaluation set).

>>> import torch
>>> from flatlab.measures import sharpness_worst
>>> H = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
>>> f = lambda x: 0.5 * x @ H @ x
>>> r = sharpness_worst(f, torch.zeros(2, dtype=torch.float64), rho=0.1, steps=30)
>>> round(r.value, 6)                # (rho^2 / 2) * lambda_max
0.015

The named measures a run schedules (``measure.metrics`` of a run config; ``flatlab measures``)
are in :mod:`flatlab.measures.named`.

Sources and the choices each number depends on: reference/measures.md,
sections 8, 9, 13 and 15.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from flatlab.errors import MeasureError

if TYPE_CHECKING:
    from flatlab.engine.stack import NodeStack

__all__ = [
    "MeasureError",
    "LossFn",
    "ModelLoss",
    "model_loss",
    "WorstCaseSharpness",
    "SamSharpness",
    "AverageSharpness",
    "KeskarSharpness",
    "sharpness_worst",
    "sharpness_sam",
    "sharpness_average",
    "sharpness_keskar",
    "Slice1D",
    "Slice2D",
    "Interpolation",
    "Interpolations",
    "filter_normalized_direction",
    "slice_1d",
    "slice_2d",
    "interpolate",
    "node_to_node",
    "node_to_average",
    "GradientNoise",
    "gradient_noise",
]

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""A map from a flat parameter vector ``x`` ``[P]`` to a scalar loss (deterministic)."""


class ModelLoss:
    """``x ↦ f(x)``: the mean loss of one model of a node stack over a fixed evaluation set.

    ``f(x) = Σ_chunks (|chunk| / N) ℓ_chunk(x)``, each chunk's loss a mean over its samples, so
    the result is the exact mean over all ``N`` samples whatever the chunk sizes (the
    PyHessian/curvlinops weighting, reference section 3). Evaluated in eval mode (BatchNorm uses
    running statistics, dropout off) with fixed buffers: the node-averaged buffers unless given
    (reference section 4). Calling it builds one autograd graph over every chunk;
    :meth:`value_and_grad` differentiates chunk by chunk instead and keeps memory bounded, and
    the sharpness measures use it when present.

    Attributes:
        stack: The node stack that defines the model.
        buffers: The buffers every evaluation uses.
        size: Number of samples ``N``.
        batch_size: Samples per chunk.
    """

    def __init__(self, stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
                 buffers: dict[str, torch.Tensor] | None = None, batch_size: int = 2048) -> None:
        if int(batch_size) < 1:
            raise MeasureError(f"batch_size must be >= 1, got {batch_size}")
        if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
            raise MeasureError(f"inputs and targets need the same, non-zero number of samples; "
                               f"got {inputs.shape[0]} and {targets.shape[0]}")
        self.stack = stack
        self.buffers = stack.average_buffers() if buffers is None else dict(buffers)
        self.size = int(inputs.shape[0])
        self.batch_size = int(batch_size)
        dev, dt = stack.device, stack.dtype
        self._chunks = [
            (inputs[s:s + self.batch_size].to(dev, dt), targets[s:s + self.batch_size].to(dev))
            for s in range(0, self.size, self.batch_size)
        ]

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (self.stack.P,):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MeasureError(f"x must be one model's flat parameters of shape "
                               f"({self.stack.P},), got {shape}")
        if x.dtype != self.stack.dtype:
            raise MeasureError(f"x has dtype {x.dtype} but the stack computes in "
                               f"{self.stack.dtype}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The mean loss at ``x`` ``[P]``, a 0-d tensor differentiable in ``x``."""
        self._check(x)
        total = x.new_zeros(())
        with self.stack.mode(train=False):
            for a, y in self._chunks:
                total = total + self.stack.node_loss(x, self.buffers, a, y) * (a.shape[0]
                                                                               / self.size)
        return total

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), ∇f(x))`` accumulated chunk by chunk (bounded memory); both detached."""
        self._check(x)
        g = torch.zeros_like(x)
        val = x.new_zeros(())
        with self.stack.mode(train=False), torch.enable_grad():
            for a, y in self._chunks:
                xr = x.detach().requires_grad_(True)
                li = self.stack.node_loss(xr, self.buffers, a, y)
                (gi,) = torch.autograd.grad(li, xr)
                w = a.shape[0] / self.size
                g += gi * w
                val += li.detach() * w
        return val, g


def model_loss(stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
               buffers: dict[str, torch.Tensor] | None = None,
               batch_size: int = 2048) -> ModelLoss:
    """A ``loss_fn`` for one model of ``stack``: the mean loss over ``(inputs, targets)``.

    Args:
        stack: The node stack that defines the model and the loss.
        inputs: ``[N, ...]`` evaluation inputs; moved once to the stack's device and dtype.
        targets: ``[N]`` labels or ``[N, k]`` regression targets.
        buffers: Buffers to evaluate with (a node's own, ``{name: tensor}`` unstacked); by default
            ``stack.average_buffers()``, the buffers of the averaged model.
        batch_size: Samples per chunk.

    Returns:
        A :class:`ModelLoss`, callable as ``loss_fn(x) -> scalar`` for ``x`` ``[P]``.
    """
    return ModelLoss(stack, inputs, targets, buffers=buffers, batch_size=batch_size)


# The measures import LossFn from this module, so they come after it.
from flatlab.measures.landscape import (  # noqa: E402
    Interpolation,
    Interpolations,
    Slice1D,
    Slice2D,
    filter_normalized_direction,
    interpolate,
    node_to_average,
    node_to_node,
    slice_1d,
    slice_2d,
)
from flatlab.measures.noise import GradientNoise, gradient_noise  # noqa: E402
from flatlab.measures.sharpness import (  # noqa: E402
    AverageSharpness,
    KeskarSharpness,
    SamSharpness,
    WorstCaseSharpness,
    sharpness_average,
    sharpness_keskar,
    sharpness_sam,
    sharpness_worst,
)
