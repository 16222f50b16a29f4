"""The parameter layout: every node's parameters as one row of the node stack ``X`` ``[n, P]``.

A :class:`ParamLayout` maps each parameter name of a model to a slice of the flat vector and a
shape, in ``named_parameters()`` order. :meth:`ParamLayout.unflatten` returns *views* into a flat
vector, so a forward pass through ``torch.func.functional_call`` differentiates straight into the
row of ``X`` it came from, and per-layer structure (K-FAC blocks, per-layer compression) is a slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ParamLayout"]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a model's parameters inside one flat vector of length ``P``.

    Attributes:
        names: Parameter names, in the order of ``module.named_parameters()``.
        shapes: Shape of each parameter.
        offsets: Start of each parameter in the flat vector; ``offsets[k] + numel(shapes[k])`` is
            its end.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamLayout:
        """The layout of ``module``'s parameters (all of them, trainable or not)."""
        names, shapes, offsets, pos = [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(pos)
            pos += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets))

    @property
    def P(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of scalar parameters ``P``."""
        if not self.names:
            return 0
        return self.offsets[-1] + math.prod(self.shapes[-1])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, slice, torch.Size]]:
        """Yield ``(name, slice, shape)`` for each parameter."""
        for name, off, shape in zip(self.names, self.offsets, self.shapes, strict=True):
            yield name, slice(off, off + math.prod(shape)), shape

    def slice(self, name: str) -> slice:
        """The slice of the flat vector that holds parameter ``name``."""
        for n, s, _ in self:
            if n == name:
                return s
        raise KeyError(f"no parameter {name!r}; the layout has {', '.join(self.names)}")

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat vector ``[..., P]`` as a parameter dict ``{name: [..., *shape]}``."""
        lead = x.shape[:-1]
        return {name: x[..., s].view(*lead, *shape) for name, s, shape in self}

    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate a parameter dict ``{name: [..., *shape]}`` into ``[..., P]``."""
        parts = []
        for name, _, shape in self:
            p = params[name]
            lead = p.shape[: p.dim() - len(shape)]
            parts.append(p.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def flatten_module(self, module: nn.Module) -> torch.Tensor:
        """The parameters of ``module`` as one flat vector ``[P]`` (a copy)."""
        return self.flatten(dict(module.named_parameters())).detach().clone()
