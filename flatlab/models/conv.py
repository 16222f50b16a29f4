"""Small convolutional networks: a 1-D CNN for mnist1d and LeNet-5 for images.

Both compute the size of their flattened features with a dry run of the convolutional part at
construction (in eval mode and without gradients, so BatchNorm statistics are untouched), so
they take any input shape that leaves a non-empty feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flatlab.errors import ModelError
from flatlab.models.layers import (
    ACTIVATIONS,
    ZooModel,
    check_groups,
    make_activation,
    make_norm,
    option_choice,
    option_int,
    option_ints,
)

__all__ = ["CNN1d", "LeNet", "CONV_NORMS"]

CONV_NORMS = ("none", "group", "batch")
"""Normalisations accepted by the convolutional models' ``norm`` option."""


@torch.no_grad()
def _flat_size(features: nn.Module, shape: tuple[int, ...]) -> int:
    """Number of features ``features`` outputs for one example of ``shape`` (eval-mode dry run)."""
    was_training = features.training
    features.eval()
    try:
        device = next((p.device for p in features.parameters()), "cpu")  # where it was built
        out = features(torch.zeros(1, *shape, device=device))
    finally:
        features.train(was_training)
    return int(out[0].numel())


class CNN1d(ZooModel):
    """1-D CNN for mnist1d: ``[conv1d -> norm -> activation] * k -> flatten -> linear``.

    Default: three ``Conv1d`` layers of 32 channels, kernel 5, padding 2, strides 1, 2, 2 (so a
    length-40 signal becomes 40 -> 40 -> 20 -> 10), GroupNorm(4, 32) and ReLU after each, then a
    linear head on the 320 flattened features: 13,898 parameters for 10 classes. The layers are
    ``features`` (an ``nn.Sequential``) and ``head``.

    Args:
        input_shape: ``(L,)`` for a single-channel signal or ``(C, L)``.
        num_classes: Number of outputs.
        channels: Output channels of each convolution (their number sets the depth).
        kernel_size: Odd kernel size (padding ``kernel_size // 2`` keeps the length at stride 1).
        strides: Stride of each convolution; as many entries as ``channels``.
        norm: ``"group"`` (GroupNorm, default), ``"batch"`` (BatchNorm1d) or ``"none"``.
        groups: Groups of the GroupNorm; must divide every entry of ``channels``.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.

    Inputs are ``[B, C, L]``; ``[B, L]`` is read as one channel (``[B, 1, L]``).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        strides: Sequence[int] = (1, 2, 2),
        norm: str = "group",
        groups: int = 4,
        activation: str = "relu",
    ) -> None:
        super().__init__(input_shape, num_classes)
        if len(self.input_shape) not in (1, 2) or self.input_shape[-1] < 4:
            raise ModelError(
                f"cnn1d takes input shapes (L,) or (C, L) with L >= 4 (got {self.input_shape})"
            )
        widths = option_ints("cnn1d", "channels", channels)
        kernel = option_int("cnn1d", "kernel_size", kernel_size)
        if kernel % 2 == 0:
            raise ModelError(f"cnn1d option 'kernel_size' must be odd (got {kernel})")
        steps = option_ints("cnn1d", "strides", strides)
        if len(steps) != len(widths):
            raise ModelError(
                f"cnn1d option 'strides' needs one entry per convolution, {len(widths)} for "
                f"channels={widths} (got {tuple(steps)})"
            )
        norm = option_choice("cnn1d", "norm", norm, CONV_NORMS)
        groups = option_int("cnn1d", "groups", groups)
        activation = option_choice("cnn1d", "activation", activation, tuple(ACTIVATIONS))
        if norm == "group":
            check_groups("cnn1d", groups, widths)
        in_channels = 1 if len(self.input_shape) == 1 else self.input_shape[0]
        layers: list[nn.Module] = []
        for width, stride in zip(widths, steps, strict=True):
            layers.append(nn.Conv1d(in_channels, width, kernel, stride=stride,
                                    padding=kernel // 2))
            if norm != "none":
                layers.append(make_norm(norm, width, 1, groups))
            layers.append(make_activation(activation))
            in_channels = width
        self.features = nn.Sequential(*layers)
        shape = (1, self.input_shape[0]) if len(self.input_shape) == 1 else self.input_shape
        self.head = nn.Linear(_flat_size(self.features, shape), self.num_classes)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of inputs ``[B, C, L]`` or ``[B, L]``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(torch.flatten(self.features(x), start_dim=1))


class LeNet(ZooModel):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

    ``conv5x5(6) -> norm -> act -> maxpool2 -> conv5x5(16) -> norm -> act -> maxpool2 -> flatten
    -> fc(120) -> act -> fc(84) -> act -> fc(num_classes)``. The first convolution is padded by 2
    when the image is smaller than 32 x 32 (so 28 x 28 MNIST images get the classic 5 x 5 x 16
    features) and not padded otherwise; the flattened size comes from a dry run. Parameters with
    10 classes: 61,706 on ``(1, 28, 28)`` and 62,006 on ``(3, 32, 32)``, the classic counts. The
    layers are ``features`` and ``classifier`` (both ``nn.Sequential``).

    Args:
        input_shape: ``(C, H, W)`` with ``H, W >= 16``.
        num_classes: Number of outputs.
        activation: ``"relu"`` (default), ``"tanh"`` (the original) or ``"gelu"``.
        norm: ``"none"`` (default, the original), ``"group"`` or ``"batch"`` after each
            convolution.
        groups: Groups of the GroupNorm; must divide 6 and 16 (1 or 2).
        padding: Padding of the first convolution; ``None`` for 2 below 32 x 32, else 0.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        activation: str = "relu",
        norm: str = "none",
        groups: int = 2,
        padding: int | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes)
        if len(self.input_shape) != 3 or min(self.input_shape[1:]) < 16:
            raise ModelError(
                f"lenet takes image input shapes (C, H, W) with H, W >= 16 (got {self.input_shape})"
            )
        activation = option_choice("lenet", "activation", activation, tuple(ACTIVATIONS))
        norm = option_choice("lenet", "norm", norm, CONV_NORMS)
        groups = option_int("lenet", "groups", groups)
        if norm == "group":
            check_groups("lenet", groups, (6, 16))
        if padding is None:
            padding = 2 if min(self.input_shape[1:]) < 32 else 0
        padding = option_int("lenet", "padding", padding, minimum=0)
        channels = self.input_shape[0]
        layers: list[nn.Module] = []
        for width, pad in ((6, padding), (16, 0)):
            layers.append(nn.Conv2d(channels, width, 5, padding=pad))
            if norm != "none":
                layers.append(make_norm(norm, width, 2, groups))
            layers += [make_activation(activation), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(_flat_size(self.features, self.input_shape), 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, self.num_classes),
        )
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.classifier(torch.flatten(self.features(x), start_dim=1))
