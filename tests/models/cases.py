"""Shared test cases for the model zoo."""

from __future__ import annotations

import copy
import math

import torch
from torch.overrides import TorchFunctionMode

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


#: Float32 gradients of a network with ReLUs or max pooling are well-posed at an input only if
#: every ReLU input keeps this many float32 rounding units (``eps * scale``, scale the magnitude
#: of that layer's input) from 0 and every pooling window's maximum as many from its runner-up:
#: the float32 forward error at a kink's input, against float64, is at most 18 such units in these
#: models (measured), and a rounding error that crosses a kink flips which way the gradient flows
#: (an O(1) change of some gradient entries, which no tolerance separates from a bug).
KINK_MARGIN = 100.0


class _Kinks(TorchFunctionMode):
    """Records the distance to the nearest kink of every ReLU and max pooling it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.margin = math.inf

    def _note(self, gap: torch.Tensor, x: torch.Tensor) -> None:
        scale = float(x.detach().abs().max())
        if gap.numel() and scale > 0:
            eps = torch.finfo(torch.float32).eps
            self.margin = min(self.margin, float(gap.detach().min()) / (eps * scale))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("relu", "relu_"):
            self._note(args[0].abs(), args[0])
        elif name == "max_pool2d":
            x = args[0]
            k = kwargs.get("kernel_size", args[1] if len(args) > 1 else None)
            s = kwargs.get("stride", args[2] if len(args) > 2 else None) or k
            k, s = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s
            windows = x.unfold(-2, k[0], s[0]).unfold(-2, k[1], s[1]).flatten(-2)
            top = windows.topk(2, dim=-1).values
            live = top[..., 0] != 0  # a window of ReLU zeros passes no gradient either way
            self._note((top[..., 0] - top[..., 1])[live], x)
        return func(*args, **kwargs)


def kink_margin(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The forward pass's distance to its nearest kink at input ``x``.

    In float32 rounding units (``eps * scale``), to compare with :data:`KINK_MARGIN`.

    Computed in float64 (on a copy of the model, in its current train/eval mode), so it is the
    same on every machine; ``inf`` for smooth models.
    """
    net = copy.deepcopy(model).double()
    with torch.no_grad(), _Kinks() as kinks:
        net(x.double())
    return kinks.margin
