"""A small model zoo written to run under ``torch.func`` (``functional_call``, ``vmap``, ``grad``).

>>> from flatlab import models
>>> models.available()
['logistic', 'mlp', 'cnn1d', 'lenet', 'resnet20']
>>> net = models.make("cnn1d", input_shape=(40,), num_classes=10, seed=0)
>>> models.num_parameters(net), models.has_batchnorm(net), models.has_dropout(net)
(13898, False, False)
>>> lin = models.make("logistic", input_shape=(8,), num_classes=3)
>>> ", ".join(name for name, _ in lin.named_parameters())
'linear.weight, linear.bias'

Models (``catalog()`` gives each one's options, defaults, accepted input shapes and parameter
count): ``logistic`` (also linear least squares), ``mlp``, ``cnn1d`` (mnist1d), ``lenet``
(LeNet-5) and ``resnet20`` (CIFAR ResNet-20). Where a model has normalisation layers by default
they are GroupNorm, as in the decentralized-learning literature; ``norm="batch"`` gives
BatchNorm, whose running statistics must then be stacked per node under ``vmap``
(:func:`has_batchnorm`). Dropout needs ``vmap(..., randomness="different")`` (:func:`has_dropout`).

The forwards have no in-place operations on parameters or buffers (except BatchNorm's own
running-statistics update), no ``.item()``, no data-dependent shapes and no Python branching on
tensor values. ``make(..., seed=s)`` initialises every parameter explicitly from a local
``torch.Generator`` seeded with ``s`` and leaves the global torch RNG state as it was.
"""

from __future__ import annotations

from flatlab.models.conv import CNN1d, LeNet
from flatlab.models.dense import MLP, Logistic
from flatlab.models.layers import ZooModel, init_parameters
from flatlab.models.registry import ModelInfo, available, catalog, make
from flatlab.models.resnet import ResNet20
from flatlab.models.utils import has_batchnorm, has_dropout, num_parameters

__all__ = [
    "make",
    "available",
    "catalog",
    "ModelInfo",
    "num_parameters",
    "has_batchnorm",
    "has_dropout",
    "init_parameters",
    "ZooModel",
    "Logistic",
    "MLP",
    "CNN1d",
    "LeNet",
    "ResNet20",
]
