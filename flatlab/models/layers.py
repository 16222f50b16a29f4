"""Building blocks shared by the model zoo: option checks, norm and activation layers, init.

Every ``option_*`` check takes ``(model, option, value, ...)`` and raises
:class:`~flatlab.errors.ModelError` with one line that names the model, the option, what was
given and what is accepted, so a bad configuration fails before any tensor is allocated. (The
data sets' :func:`flatlab.data.dataset.check_int` checks a plain value, ``(value, name, ...)``.)

Initialisation is explicit: :func:`init_parameters` redraws every parameter of a module from a
``torch.Generator`` (or the global torch RNG when none is given) in module registration order,
and raises if a parameter or buffer is left that it does not know how to initialise. That is what
makes ``flatlab.models.make(..., seed=s)`` reproducible bit for bit without touching the global
RNG.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from flatlab.errors import ModelError

__all__ = [
    "ZooModel",
    "ACTIVATIONS",
    "CONV_INITS",
    "option_choice",
    "option_int",
    "option_ints",
    "check_groups",
    "option_probability",
    "option_positive",
    "make_activation",
    "make_norm",
    "init_parameters",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
"""Activation names accepted by the ``activation`` options."""

CONV_INITS = ("default", "kaiming-fan-out")
"""Weight initialisations of :func:`init_parameters` for convolutions."""


def _show(value: Any) -> str:
    """Short one-line repr of a user value for an error message."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def option_choice(model: str, option: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``.

    Raises:
        ModelError: ``value`` is not a string among ``choices``.
    """
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ModelError(
        f"{model} option {option!r} must be one of {', '.join(choices)} (got {_show(value)})"
    )


def option_int(model: str, option: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``.

    Raises:
        ModelError: ``value`` is not an integer or is below ``minimum``.
    """
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= minimum:
            return int(number)
    raise ModelError(
        f"{model} option {option!r} must be an integer >= {minimum} (got {_show(value)})"
    )


def option_ints(
    model: str, option: str, value: Any, minimum: int = 1, length: int | None = None,
    allow_empty: bool = False,
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of integers ``>= minimum`` (a single integer becomes a 1-tuple).

    Args:
        model: Model name, for the message.
        option: Option name, for the message.
        value: An integer or a sequence of integers.
        minimum: Smallest accepted entry.
        length: Required number of entries, or ``None`` for any.
        allow_empty: Whether an empty sequence is accepted.

    Raises:
        ModelError: ``value`` is not an integer or a sequence of integers of the right length.
    """
    if length is None:
        what = "an integer or a sequence of integers"
    else:
        what = f"a sequence of {length} integers"
    message = f"{model} option {option!r} must be {what} >= {minimum} (got {_show(value)})"
    if isinstance(value, (str, bytes, bool)):
        raise ModelError(message)
    items = [value] if not isinstance(value, Sequence) else list(value)
    if (not items and not allow_empty) or (length is not None and len(items) != length):
        raise ModelError(message)
    try:
        return tuple(option_int(model, option, v, minimum) for v in items)
    except ModelError:
        raise ModelError(message) from None


def check_groups(model: str, groups: int, channels: Sequence[int]) -> None:
    """Check that ``groups`` divides every channel count that a GroupNorm will normalise.

    Raises:
        ModelError: some channel count is not a multiple of ``groups``.
    """
    bad = [c for c in channels if c % groups]
    if bad:
        raise ModelError(
            f"{model} option 'groups' = {groups} must divide every normalised width "
            f"{tuple(channels)} (fails for {bad[0]})"
        )


def option_probability(model: str, option: str, value: Any) -> float:
    """Return ``value`` as a float in ``[0, 1)``.

    Raises:
        ModelError: ``value`` is not a real number in ``[0, 1)``.
    """
    if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1:
        return float(value)
    raise ModelError(f"{model} option {option!r} must be a number in [0, 1) (got {_show(value)})")


def option_positive(model: str, option: str, value: Any) -> float:
    """Return ``value`` as a positive finite float.

    Raises:
        ModelError: ``value`` is not a positive finite real number.
    """
    if (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
            and math.isfinite(value)):
        return float(value)
    raise ModelError(f"{model} option {option!r} must be a positive number (got {_show(value)})")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module (``relu``, ``tanh`` or ``gelu``; never in-place)."""
    return ACTIVATIONS[name]()


def make_norm(kind: str, channels: int, dims: int, groups: int) -> nn.Module:
    """A normalisation layer for ``channels`` features.

    Args:
        kind: ``"none"`` (identity), ``"group"``, ``"batch"`` or ``"layer"`` (``dims == 0`` only).
        channels: Number of channels (or features for ``dims == 0``).
        dims: Spatial dimensions of the input: 0 (``[B, F]``), 1 (``[B, C, L]``) or 2
            (``[B, C, H, W]``).
        groups: Number of groups of a GroupNorm.

    Returns:
        ``nn.Identity``, ``nn.GroupNorm(groups, channels)``, ``nn.BatchNorm1d/2d(channels)`` or
        ``nn.LayerNorm(channels)``. All are affine; BatchNorm tracks running statistics.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "layer" and dims == 0:
        return nn.LayerNorm(channels)
    raise ValueError(f"no {kind!r} norm for {dims}-d inputs")  # guarded by the callers' checks


@torch.no_grad()
def init_parameters(
    module: nn.Module, generator: torch.Generator | None = None, conv_init: str = "default"
) -> None:
    """Redraw every parameter and reset every buffer of ``module`` in place.

    Draws happen in ``module.modules()`` order, weight before bias, all from ``generator`` (the
    global torch RNG when it is ``None``). Distributions:

    - ``nn.Linear`` and, with ``conv_init="default"``, convolutions: PyTorch's defaults, i.e.
      weight and bias uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (weight via
      ``kaiming_uniform_(a=sqrt(5))``);
    - convolutions with ``conv_init="kaiming-fan-out"``: weight ``N(0, 2 / fan_out)`` (He et al.
      2015, as in the CIFAR ResNets), bias zero;
    - GroupNorm, LayerNorm, BatchNorm: weight one, bias zero; BatchNorm running statistics reset
      (mean 0, variance 1, ``num_batches_tracked`` 0).

    Layers on the ``meta`` device are skipped (no data, no draws).

    Args:
        module: The module to initialise (on any device; the generator must live on the same one).
        generator: Source of randomness, or ``None`` for the global RNG.
        conv_init: ``"default"`` or ``"kaiming-fan-out"``.

    Raises:
        TypeError: ``module`` holds a parameter or a buffer of a layer type this function does not
            know, which would otherwise be left uninitialised.
    """
    if conv_init not in CONV_INITS:
        raise ValueError(f"conv_init must be one of {', '.join(CONV_INITS)}")
    done: set[int] = set()
    for sub in module.modules():
        if any(t.is_meta for t in sub.parameters(recurse=False)):
            pass  # nothing to draw on the meta device
        elif isinstance(sub, (nn.Linear, _ConvNd)):
            weight = sub.weight
            fan_in = weight[0].numel()
            if isinstance(sub, _ConvNd) and conv_init == "kaiming-fan-out":
                nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            else:
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                if sub.bias is not None:
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
        elif isinstance(sub, (nn.GroupNorm, nn.LayerNorm, _BatchNorm)):
            sub.reset_parameters()  # ones / zeros; BatchNorm also resets its running statistics
        else:
            continue
        done.update(id(t) for t in sub.parameters(recurse=False))
        done.update(id(t) for t in sub.buffers(recurse=False))
    for kind, named in (("parameter", module.named_parameters()),
                        ("buffer", module.named_buffers())):
        for name, tensor in named:
            if id(tensor) not in done:
                raise TypeError(f"init_parameters does not know how to initialise {kind} {name}")


class ZooModel(nn.Module):
    """Base class of the zoo's models: records the input shape and number of classes.

    Subclasses build their layers in ``__init__`` and end it with ``self.reset_parameters()``;
    :func:`flatlab.models.make` calls :meth:`reset_parameters` again with its seeded generator.

    Attributes:
        input_shape: Shape of one example (without the batch dimension).
        num_classes: Number of outputs.
        conv_init: How :meth:`reset_parameters` initialises convolutions (see
            :func:`init_parameters`).
    """

    conv_init: str = "default"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw all parameters from ``generator`` (global RNG if ``None``).

        See :func:`init_parameters` for the distributions.
        """
        init_parameters(self, generator, self.conv_init)

    def extra_repr(self) -> str:
        """Input shape and number of classes, shown by ``print(model)``."""
        return f"input_shape={self.input_shape}, num_classes={self.num_classes}"
