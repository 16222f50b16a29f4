"""Fully connected models: multinomial logistic regression and the MLP.

Both flatten every non-batch dimension of the input, so they take any input shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flatlab.models.layers import (
    ACTIVATIONS,
    ZooModel,
    check_groups,
    make_activation,
    make_norm,
    option_choice,
    option_int,
    option_ints,
    option_probability,
)

__all__ = ["Logistic", "MLP", "MLP_NORMS"]

MLP_NORMS = ("none", "group", "batch", "layer")
"""Normalisations accepted by the MLP's ``norm`` option."""


def _flatten(x: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Merge the trailing ``len(input_shape)`` dimensions of ``x`` (any leading batch dims)."""
    k = len(input_shape)
    return x if k == 1 else torch.flatten(x, start_dim=x.dim() - k)


class Logistic(ZooModel):
    """Multinomial logistic regression: ``flatten -> linear``.

    With a squared-error loss and ``num_classes`` outputs it is linear least squares. The single
    layer is the attribute ``linear``: the parameters are named exactly ``linear.weight``
    (``[num_classes, d]``) and ``linear.bias`` (``[num_classes]``), ``d = prod(input_shape)``.

    Args:
        input_shape: Shape of one example; any non-empty shape.
        num_classes: Number of outputs.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        self.linear = nn.Linear(math.prod(self.input_shape), self.num_classes)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., num_classes]`` of inputs ``[..., *input_shape]``."""
        return self.linear(_flatten(x, self.input_shape))


class MLP(ZooModel):
    """Multilayer perceptron: ``flatten -> [linear -> norm -> act -> dropout] * k -> linear``.

    The hidden layers are ``body`` (an ``nn.Sequential``), the output layer is ``head``. The norm
    and dropout layers are left out when ``norm="none"`` and ``dropout=0``.

    Args:
        input_shape: Shape of one example; any non-empty shape.
        num_classes: Number of outputs.
        hidden: Widths of the hidden layers (``()`` gives logistic regression).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        dropout: Drop probability after each hidden activation, in ``[0, 1)``. Under ``vmap`` a
            positive value needs ``randomness="different"`` (or ``"same"``).
        norm: ``"none"``, ``"group"`` (GroupNorm), ``"batch"`` (BatchNorm1d) or ``"layer"``
            (LayerNorm), after each hidden linear layer.
        groups: Groups of the GroupNorm; must divide every hidden width.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        groups: int = 8,
    ) -> None:
        super().__init__(input_shape, num_classes)
        widths = option_ints("mlp", "hidden", hidden, allow_empty=True)
        activation = option_choice("mlp", "activation", activation, tuple(ACTIVATIONS))
        dropout = option_probability("mlp", "dropout", dropout)
        norm = option_choice("mlp", "norm", norm, MLP_NORMS)
        groups = option_int("mlp", "groups", groups)
        if norm == "group":
            check_groups("mlp", groups, widths)
        layers: list[nn.Module] = []
        width = math.prod(self.input_shape)
        for h in widths:
            layers.append(nn.Linear(width, h))
            if norm != "none":
                layers.append(make_norm(norm, h, 0, groups))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, self.num_classes)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of inputs ``[B, *input_shape]``."""
        return self.head(self.body(_flatten(x, self.input_shape)))
