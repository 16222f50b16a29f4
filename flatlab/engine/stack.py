"""The node stack: n models as one matrix ``X`` ``[n, P]`` plus stacked per-node buffers.

All node models share one template ``nn.Module``; its own parameters are never trained. A forward
pass of node ``i`` is ``functional_call(module, (layout.unflatten(X[i]), buffers_i), inputs)``, and
all nodes run at once under ``torch.vmap``. Buffers (BatchNorm statistics) are stacked ``[n, ...]``
per node and are never gossiped; dropout draws a different mask per node
(``vmap(randomness="different")``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call

from flatlab.engine.allocator import reuse_freed_memory
from flatlab.engine.layout import ParamLayout
from flatlab.errors import FlatlabError
from flatlab.seeds import seed_for

__all__ = ["NodeStack", "resolve_device", "to_device", "resolve_dtype", "LOSSES",
           "check_fits_in_memory", "available_memory", "STACK_COPIES"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (made on the CPU, e.g. a step's fault mask) on ``device``, without waiting.

    A copy from pageable host memory to a GPU waits for everything queued before it; through
    pinned memory with ``non_blocking`` it is queued like a kernel (PyTorch's pinned-memory
    cache keeps the buffer until the copy has run). Elsewhere a plain ``.to(device)``.
    """
    if torch.device(device).type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:k"``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FlatlabError(f"device {device!r} is not a device; accepted: auto, cpu, cuda, "
                           "cuda:K") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlatlabError(f"device {device!r} requested but CUDA is not available here; "
                           "use device=auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise FlatlabError(f"device {device!r} does not exist: this machine has {count} GPU"
                           f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); "
                           "accepted: one of those, cuda, auto or cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``float32`` (default) or ``float64``, as a name or a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif dtype in _DTYPES:
        return _DTYPES[dtype]
    raise FlatlabError(f"dtype {dtype!r} is not supported; accepted: float32, float64")


#: Copies of the ``[n, P]`` node stack a run may hold at once (iterates, gradients, momentum,
#: tracking and dual variables, temporaries of the update and the mix).
STACK_COPIES = 8


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (``None`` when it cannot be told).

    On a GPU: the driver's free memory plus what PyTorch's caching allocator holds but does not
    use (reserved − allocated), which new tensors reuse first.
    """
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(n: int, P: int, dtype: torch.dtype, device: torch.device) -> None:  # noqa: N803
    """Refuse a node stack whose :data:`STACK_COPIES` copies would not fit in free memory.

    Raises:
        FlatlabError: Before anything of size ``n x P`` is allocated, naming the sizes and the
            limit.
    """
    free = available_memory(device)
    row = P * torch.finfo(dtype).bits // 8
    if free is not None and n * row * STACK_COPIES > free:
        gb = 1024**3
        raise FlatlabError(
            f"{n} nodes x {P} parameters take {n * row / gb:.3g} GB per copy of the node stack and "
            f"a run holds up to {STACK_COPIES} copies, more than the {free / gb:.3g} GB free on "
            f"{device}; the limit here is {free // (STACK_COPIES * row)} nodes of this model: use "
            "fewer nodes or a smaller model")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (classification)."""
    return F.cross_entropy(logits, target)


def half_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b 0.5 ||pred_b - target_b||^2`` (regression).

    For a linear model its Hessian is the input second-moment matrix.
    """
    return 0.5 * (pred - target.reshape(pred.shape)).pow(2).sum(-1).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "mse": half_mse,
}


class NodeStack:
    """n copies of one model architecture, held as a flat parameter matrix and stacked buffers.

    Args:
        module: The template model. Its parameters give the initial point of every node (when
            ``init="same"``) and the layout; it is moved to ``device``/``dtype``.
        n: Number of nodes.
        device: ``"auto"`` takes CUDA when present.
        dtype: ``float32`` (default) or ``float64``.
        loss: ``"cross_entropy"`` or ``"mse"`` (``0.5 ||f(a) - y||^2``, mean over the batch).
        init: ``"same"`` (every node starts at the template's parameters, as the literature does)
            or ``"different"`` (node ``i`` re-initialised from its own stream,
            ``reinit(seed_for(seed, "init", first_node + i))`` of :mod:`flatlab.seeds`; needs
            ``reinit``).
        reinit: ``reinit(seed) -> nn.Module`` building a fresh model, for ``init="different"``.
        seed: The run seed of ``init="different"``.
        first_node: Global id of the first node held (a process's rows of a distributed
            network), so that a node starts from the same model however nodes are split.

    Attributes:
        layout: The :class:`ParamLayout`; ``P = layout.P``.
        buffers: ``{name: [n, ...]}``, each node's own buffers.

    On the CPU, building a stack sets the process's allocator to keep freed memory
    (:func:`flatlab.engine.allocator.reuse_freed_memory`; ``FLATLAB_MALLOC=system`` opts out).
    """

    def __init__(
        self,
        module: nn.Module,
        n: int,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = torch.float32,
        loss: str = "cross_entropy",
        init: str = "same",
        reinit: Callable[[int], nn.Module] | None = None,
        seed: int = 0,
        first_node: int = 0,
    ) -> None:
        if int(n) < 1:
            raise FlatlabError(f"number of nodes must be >= 1, got {n}")
        if loss not in LOSSES:
            raise FlatlabError(f"loss {loss!r} is unknown; accepted: {', '.join(LOSSES)}")
        if init not in ("same", "different"):
            raise FlatlabError(f"init {init!r} is unknown; accepted: same, different")
        self.n = int(n)
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            reuse_freed_memory()  # [n, P] temporaries without page faults (engine/allocator.py)
        self.dtype = resolve_dtype(dtype)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.module = module.to(device=self.device, dtype=self.dtype)
        self.layout = ParamLayout.from_module(self.module)
        check_fits_in_memory(self.n, self.layout.P, self.dtype, self.device)
        x0 = self.layout.flatten_module(self.module)
        if init == "same":
            self._x0 = x0.expand(self.n, -1).clone()
        else:
            if reinit is None:
                raise FlatlabError("init=different needs reinit(seed) -> module")
            rows = [self.layout.flatten_module(
                reinit(seed_for(seed, "init", first_node + i)).to(self.device, self.dtype))
                for i in range(self.n)]
            self._x0 = torch.stack(rows)
        self.buffers: dict[str, torch.Tensor] = {
            name: b.detach().to(self.device).expand(self.n, *b.shape).clone()
            for name, b in self.module.named_buffers()
        }
        self.randomness = "different"

    # ------------------------------------------------------------------ basics
    def rows(self, start: int, stop: int) -> NodeStack:
        """A view of nodes ``start … stop − 1``.

        The same model, those nodes' buffers (views, not copies) and ``n = stop − start``: what
        a batched per-node measurement runs on, chunk by chunk.
        """
        if not 0 <= start < stop <= self.n:
            raise FlatlabError(f"rows {start}:{stop} are not within the {self.n} nodes")
        view = copy.copy(self)
        view.n = stop - start
        view.buffers = {name: b[start:stop] for name, b in self.buffers.items()}
        view._x0 = self._x0[start:stop]
        return view

    @property
    def P(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of parameters per node."""
        return self.layout.P

    def start_from(self, x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None
                   ) -> None:
        """Start every node at the one model ``x`` ``[P]`` (and its ``buffers``), e.g. a minimum.

        Raises:
            FlatlabError: ``x`` or a buffer does not fit this model.
        """
        if x.dim() != 1 or x.shape[0] != self.P:
            raise FlatlabError(f"a start point needs {self.P} parameters (this model); got "
                               f"shape {tuple(x.shape)}")
        self._x0 = x.to(self.device, self.dtype).expand(self.n, -1).clone()
        for k, v in (buffers or {}).items():
            if k not in self.buffers or self.buffers[k].shape[1:] != v.shape:
                raise FlatlabError(f"buffer {k!r} of the start point does not fit this model")
            self.buffers[k].copy_(v.to(self.device).expand_as(self.buffers[k]))

    def initial_params(self) -> torch.Tensor:
        """``X0`` ``[n, P]``: the initial parameters of every node (a fresh copy)."""
        return self._x0.clone()

    def buffers_state(self) -> dict[str, torch.Tensor]:
        """A copy of the stacked buffers (for checkpoints)."""
        return {k: v.clone() for k, v in self.buffers.items()}

    def load_buffers(self, buffers: dict[str, Any]) -> None:
        """Restore stacked buffers saved by :meth:`buffers_state`."""
        for k in self.buffers:
            self.buffers[k].copy_(buffers[k])

    def average_buffers(self, buffers: dict[str, torch.Tensor] | None = None
                        ) -> dict[str, torch.Tensor]:
        """Buffers of the averaged model: float buffers averaged over nodes, others of node 0.

        Args:
            buffers: Stacked buffers ``{name: [n, ...]}`` to average instead of the stack's own
                (a distributed run passes every node's, gathered).
        """
        src = self.buffers if buffers is None else buffers
        return {k: (v.mean(0) if v.is_floating_point() else v[0].clone())
                for k, v in src.items()}

    @contextmanager
    def mode(self, train: bool):
        """Temporarily put the template module in train or eval mode."""
        was = self.module.training
        self.module.train(train)
        try:
            yield
        finally:
            self.module.train(was)

    # ------------------------------------------------------------------ forward
    def apply(self, x: torch.Tensor, buffers: dict[str, torch.Tensor],
              inputs: torch.Tensor) -> torch.Tensor:
        """Output of one model with flat parameters ``x`` ``[P]`` on ``inputs`` ``[B, ...]``."""
        return functional_call(self.module, (self.layout.unflatten(x), buffers), (inputs,))

    def node_loss(self, x: torch.Tensor, buffers: dict[str, torch.Tensor],
                  inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of one model with flat parameters ``x`` ``[P]`` on one batch."""
        return self.loss_fn(self.apply(x, buffers, inputs), targets)

    def params_loss(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of one model given its parameters as a dict.

        This is the function the oracle differentiates: gradients come per parameter tensor and
        are concatenated once into ``[P]``.
        """
        out = functional_call(self.module, (params, buffers), (inputs,))
        return self.loss_fn(out, targets)

    def forward(self, X: torch.Tensor, inputs: torch.Tensor, *,  # noqa: N803
                shared_inputs: bool = False) -> torch.Tensor:
        """Outputs of all nodes: ``[n, B, out]`` from ``inputs`` ``[n, B, ...]``.

        With ``shared_inputs=True`` every node sees the same ``inputs`` ``[B, ...]``. Runs in the
        template's current mode; in train mode BatchNorm statistics of every node are updated.
        """
        in_dims = (0, 0, None if shared_inputs else 0)
        return torch.vmap(self.apply, in_dims=in_dims, randomness=self.randomness)(
            X, self.buffers, inputs)
