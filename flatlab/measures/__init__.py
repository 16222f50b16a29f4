"""Measurements on a scalar loss of a flat parameter vector: sharpness and landscape.

Every measure is a free function of ``loss_fn`` (a map from a flat parameter vector ``x`` ``[P]``
to a scalar loss, on a fixed evaluation set) and ``x``; results are frozen dataclasses with named
fields. :func:`model_loss` builds such a ``loss_fn`` for one model of a
:class:`~flatlab.engine.NodeStack`: the engine's evaluation objective
(:class:`~flatlab.engine.Objective`: eval mode, averaged buffers, chunked over the evaluation set).

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

import torch

from flatlab.engine.objective import Objective
from flatlab.engine.stack import NodeStack
from flatlab.errors import MeasureError

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
