"""ResNet-20 for CIFAR-sized images (He et al. 2016, section 4.2), GroupNorm by default.

Three stages of three basic blocks with 16, 32 and 64 channels (times ``width``); the second and
third stages halve the resolution in their first block. The stem is a 3 x 3 convolution, the head
is global average pooling and one linear layer.

Where a block changes the number of channels or the resolution, its shortcut is by default a
strided 1 x 1 convolution followed by a norm layer ("option B" of He et al.), as in the ResNet-20
of the quasi-global momentum paper (Lin et al. 2021, whose GroupNorm variant uses 2 groups);
``shortcut="pad"`` selects the parameter-free "option A" of the original CIFAR experiments
(subsample by 2, zero-pad the new channels). Convolutions have no bias and are initialised
``N(0, 2 / fan_out)``; norm layers start at weight 1, bias 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flatlab.errors import ModelError
from flatlab.models.conv import CONV_NORMS
from flatlab.models.layers import (
    ZooModel,
    check_groups,
    make_norm,
    option_choice,
    option_int,
    option_positive,
)

__all__ = ["ResNet20", "BasicBlock", "PadShortcut", "SHORTCUTS"]

SHORTCUTS = ("projection", "pad")
"""Shortcut types accepted by ResNet-20's ``shortcut`` option (B and A of He et al.)."""


class PadShortcut(nn.Module):
    """Parameter-free shortcut ("option A"): subsample by ``stride``, zero-pad the channels.

    Args:
        extra_channels: Channels to add, split as evenly as possible before and after.
        stride: Spatial subsampling factor.
    """

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsampled, channel-padded ``x`` (``[B, C, H, W]``)."""
        x = x[..., :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with norms and ReLU, plus the shortcut: ``relu(F(x) + S(x))``.

    Args:
        in_channels: Input channels.
        channels: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
        norm: ``"group"``, ``"batch"`` or ``"none"``.
        groups: Groups of the GroupNorm.
        shortcut: ``"projection"`` or ``"pad"``, used when the shape changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str, groups: int,
                 shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, channels, 2, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, channels, 2, groups)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == channels:
            self.shortcut = nn.Identity()
        elif shortcut == "projection":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                make_norm(norm, channels, 2, groups),
            )
        else:
            if channels < in_channels:
                raise ValueError("a pad shortcut cannot reduce the number of channels")
            self.shortcut = PadShortcut(channels - in_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``[B, channels, H / stride, W / stride]``."""
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(ZooModel):
    """ResNet-20 (3 x 3 basic blocks, 16/32/64 channels), GroupNorm(2) by default.

    Parameters with 10 classes on ``(3, 32, 32)``: 272,474 with the default projection
    shortcuts (GroupNorm or BatchNorm alike), 269,722 with ``shortcut="pad"``. Attributes:
    ``conv``, ``norm`` (stem), ``layer1``..``layer3`` (``nn.Sequential`` of :class:`BasicBlock`),
    ``fc``.

    Args:
        input_shape: ``(C, H, W)``; any channel count and size (global average pooling).
        num_classes: Number of outputs.
        norm: ``"group"`` (default), ``"batch"`` or ``"none"``.
        groups: Groups of the GroupNorm; must divide every stage width.
        width: Multiplier of the stage widths 16, 32, 64 (rounded, at least 1).
        shortcut: ``"projection"`` (option B, default) or ``"pad"`` (option A).
    """

    conv_init = "kaiming-fan-out"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        norm: str = "group",
        groups: int = 2,
        width: float = 1.0,
        shortcut: str = "projection",
    ) -> None:
        super().__init__(input_shape, num_classes)
        if len(self.input_shape) != 3:
            raise ModelError(
                f"resnet20 takes image input shapes (C, H, W) (got {self.input_shape})"
            )
        norm = option_choice("resnet20", "norm", norm, CONV_NORMS)
        groups = option_int("resnet20", "groups", groups)
        width = option_positive("resnet20", "width", width)
        shortcut = option_choice("resnet20", "shortcut", shortcut, SHORTCUTS)
        widths = tuple(max(1, round(base * width)) for base in (16, 32, 64))
        if norm == "group":
            check_groups("resnet20", groups, widths)
        self.conv = nn.Conv2d(self.input_shape[0], widths[0], 3, padding=1, bias=False)
        self.norm = make_norm(norm, widths[0], 2, groups)
        stages = []
        in_channels = widths[0]
        for index, channels in enumerate(widths):
            blocks = []
            for b in range(3):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride, norm, groups, shortcut))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[2], self.num_classes)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        out = F.relu(self.norm(self.conv(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(-2, -1)))
