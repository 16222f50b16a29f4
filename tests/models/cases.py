"""Shared test cases for the model zoo."""

from __future__ import annotations

import torch

from flatlab import models

# (name, options, input_shape): every registered model on its catalog example shape, plus variants.
DEFAULT_CASES = [(name, {}, info.example_input_shape) for name, info in models.catalog().items()]
VARIANT_CASES = [
    ("logistic", {}, (3, 4, 4)),
    ("mlp", {"activation": "gelu", "norm": "layer", "hidden": (16, 8)}, (40,)),
    ("mlp", {"activation": "tanh", "norm": "group", "groups": 4, "hidden": (16, 8)}, (4, 5)),
    ("cnn1d", {"channels": (8, 8), "strides": (2, 2), "groups": 2}, (2, 40)),
    ("lenet", {"norm": "group", "activation": "tanh"}, (3, 32, 32)),
    ("resnet20", {"shortcut": "pad", "width": 0.5}, (1, 16, 16)),
]
BATCHNORM_CASES = [
    ("mlp", {"norm": "batch", "hidden": (16, 8)}, (40,)),
    ("cnn1d", {"norm": "batch"}, (40,)),
    ("lenet", {"norm": "batch"}, (1, 28, 28)),
    ("resnet20", {"norm": "batch", "width": 0.5}, (3, 16, 16)),
]
NUM_CLASSES = 10


def case_id(case) -> str:
    name, options, shape = case
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{name}[{opts}]{shape}".replace(" ", "")


def build(name, options, shape, seed, dtype=torch.float32):
    model = models.make(name, input_shape=shape, num_classes=NUM_CLASSES, seed=seed, **options)
    return model.to(dtype)


def batch(n, b, shape, dtype=torch.float32, seed=0):
    """Per-node inputs [n, b, *shape] and labels [n, b] from a local generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, b, *shape, generator=gen, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (n, b), generator=gen)
    return x, y
