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

Sources and the choices each number depends on: docs/reference/measures.md,
sections 8, 9, 13 and 15.
"""

from flatlab.errors import MeasureError
from flatlab.measures.base import LossFn, ModelLoss, model_loss
from flatlab.measures.landscape import (
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
from flatlab.measures.noise import GradientNoise, NoiseAlong, gradient_noise, noise_along
from flatlab.measures.sharpness import (
    AverageSharpness,
    KeskarSharpness,
    SamSharpness,
    WorstCaseSharpness,
    sharpness_average,
    sharpness_keskar,
    sharpness_sam,
    sharpness_worst,
)

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
    "NoiseAlong",
    "noise_along",
]
