"""The model registry: :func:`make`, :func:`available`, :func:`catalog`."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flatlab.errors import ModelError
from flatlab.models.conv import CNN1d, LeNet
from flatlab.models.dense import MLP, Logistic
from flatlab.models.layers import ZooModel
from flatlab.models.resnet import ResNet20

__all__ = ["ModelInfo", "make", "available", "catalog"]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, which options it takes and which inputs it accepts.

    Attributes:
        name: Registry name, as given to :func:`make`.
        description: One line: the default architecture and its parameter count.
        input_shapes: Which ``input_shape`` values the model accepts.
        example_input_shape: A typical input shape (the one ``num_parameters`` refers to).
        num_parameters: Parameters of the default options on ``example_input_shape`` with 10
            classes.
        build: The model class; ``build(input_shape, num_classes, **options)``.
    """

    name: str
    description: str
    input_shapes: str
    example_input_shape: tuple[int, ...]
    num_parameters: int
    build: type[ZooModel]

    @property
    def defaults(self) -> dict[str, Any]:
        """The options of :func:`make` for this model with their default values."""
        sig = inspect.signature(self.build)
        return {
            k: p.default
            for k, p in sig.parameters.items()
            if k not in ("input_shape", "num_classes")
        }

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the options (keyword arguments of :func:`make` besides the common ones)."""
        return tuple(self.defaults)


def _info(name: str, build: type[ZooModel], input_shapes: str, example: tuple[int, ...],
          count: int, architecture: str) -> ModelInfo:
    description = f"{architecture}; {count:,} parameters on {example} with 10 classes"
    return ModelInfo(name, description, input_shapes, example, count, build)


_MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        _info("logistic", Logistic, "any shape (flattened)", (40,), 410,
              "multinomial logistic regression / linear least squares: flatten -> linear "
              "(parameters linear.weight, linear.bias)"),
        _info("mlp", MLP, "any shape (flattened)", (40,), 78_858,
              "MLP: flatten -> 2 x [linear(256) -> relu] -> linear, no norm, no dropout"),
        _info("cnn1d", CNN1d, "(L,) or (C, L) with L >= 4, e.g. mnist1d's (40,)", (40,), 13_898,
              "1-D CNN for mnist1d: 3 x [conv1d(32, k5, strides 1/2/2) -> GroupNorm(4) -> relu] "
              "-> flatten -> linear"),
        _info("lenet", LeNet, "(C, H, W) with H, W >= 16, e.g. (1, 28, 28), (3, 32, 32)",
              (1, 28, 28), 61_706,
              "LeNet-5: 2 x [conv5x5(6/16) -> relu -> maxpool2] -> fc 120 -> 84 -> classes, "
              "no norm (62,006 parameters on (3, 32, 32))"),
        _info("resnet20", ResNet20, "(C, H, W), e.g. CIFAR's (3, 32, 32)", (3, 32, 32),
              272_474,
              "CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels, GroupNorm(2), "
              "1x1-conv projection shortcuts (option B), global average pooling -> linear"),
    ]
}


def available() -> list[str]:
    """Names accepted by :func:`make`, in registry order."""
    return list(_MODELS)


def catalog() -> dict[str, ModelInfo]:
    """Every registered model by name: description, default options, accepted input shapes."""
    return dict(_MODELS)


def _lookup(name: Any) -> ModelInfo:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if not isinstance(name, str) or key not in _MODELS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    return _MODELS[key]


def _check_input_shape(model: str, input_shape: Any) -> tuple[int, ...]:
    message = (
        f"{model} input_shape must be a non-empty tuple of positive integers "
        f"(the shape of one example without the batch dimension; got {input_shape!r})"
    )
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ModelError(message)
    dims = []
    for d in input_shape:
        try:
            size = operator.index(d)
        except TypeError:
            raise ModelError(message) from None
        if isinstance(d, bool) or size < 1:
            raise ModelError(message)
        dims.append(int(size))
    if not dims:
        raise ModelError(message)
    return tuple(dims)


def _check_num_classes(model: str, num_classes: Any) -> int:
    if not isinstance(num_classes, bool):
        try:
            value = operator.index(num_classes)
        except TypeError:
            value = 0
        if value >= 1:
            return int(value)
    raise ModelError(f"{model} num_classes must be an integer >= 1 (got {num_classes!r})")


def _generator(seed: Any) -> torch.Generator | None:
    if seed is None:
        return None
    if not isinstance(seed, bool):
        try:
            value = operator.index(seed)
        except TypeError:
            value = -1
        if 0 <= value < 2**64:
            return torch.Generator(device="cpu").manual_seed(int(value))
    raise ModelError(f"seed must be None or an integer in [0, 2**64) (got {seed!r})")


def make(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int | None = None,
    **options: Any,
) -> torch.nn.Module:
    """Build a registered model on the CPU, in the default dtype, in train mode.

    The module is constructed on the CPU inside ``torch.random.fork_rng(devices=[])``, so the
    draws of PyTorch's per-layer default initialisation are thrown away with the forked state,
    and then every parameter is redrawn explicitly by the model's ``reset_parameters(generator)``
    (see :func:`flatlab.models.layers.init_parameters` for the distributions). With ``seed`` the
    generator is a local ``torch.Generator`` seeded with it: the same seed gives bitwise identical
    parameters, and the global torch RNG state is the same after the call as before (it is only
    advanced inside the fork, so do not draw from it concurrently in another thread). Without
    ``seed`` the explicit draws come from the global torch RNG, in the same order, so
    ``torch.manual_seed(s); make(...)`` equals ``make(..., seed=s)``.

    Args:
        name: A name from :func:`available` (case, ``-`` and ``_`` are ignored).
        input_shape: Shape of one example, without the batch dimension, e.g. ``(40,)`` or
            ``(3, 32, 32)``.
        num_classes: Number of outputs (classes, or regression targets for ``logistic``).
        seed: Seed of the initialisation, or ``None`` for the global torch RNG.
        **options: Model options; ``catalog()[name].defaults`` lists them with their defaults.

    Returns:
        The model (a :class:`~flatlab.models.layers.ZooModel` with ``input_shape`` and
        ``num_classes`` attributes). Its forward maps ``[B, *input_shape]`` to
        ``[B, num_classes]`` and is safe under ``torch.func.functional_call``, ``torch.vmap`` and
        ``torch.func.grad``/``vjp``.

    Raises:
        ModelError: unknown model, unknown option, a bad option value, an input shape the model
            cannot take, a bad ``num_classes`` or ``seed``.
    """
    info = _lookup(name)
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        accepted = ", ".join(info.defaults) or "none"
        raise ModelError(f"{info.name} takes no option {unknown[0]!r} (accepted: {accepted})")
    shape = _check_input_shape(info.name, input_shape)
    classes = _check_num_classes(info.name, num_classes)
    generator = _generator(seed)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        model = info.build(shape, classes, **options)
    model.reset_parameters(generator)
    return model
