"""Questions the engine asks of a model before vectorizing it over nodes."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["num_parameters", "has_batchnorm", "has_dropout"]


def num_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (the width ``P`` of its node stack)."""
    return sum(p.numel() for p in model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer.

    Such a model has buffers (running statistics) that a train-mode forward updates in place, so
    under ``torch.vmap`` the buffers must be stacked per node (``torch.func.stack_module_state``)
    and passed to ``functional_call`` with the parameters.
    """
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds a dropout layer with a positive drop probability.

    Such a model needs ``torch.vmap(..., randomness="different")`` (a mask per node) or
    ``"same"`` in train mode; the default ``randomness="error"`` raises.
    """
    return any(isinstance(m, _DropoutNd) and m.p > 0 for m in model.modules())
