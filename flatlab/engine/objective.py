"""The evaluation objective: the mean loss of flat parameters over a fixed evaluation set.

One owner for "the loss of a node stack's models on a fixed set": evaluation
(:func:`~flatlab.engine.evaluate`, :func:`~flatlab.engine.full_gradient`), the measures
(:func:`flatlab.measures.model_loss`) and curvature (:func:`flatlab.curvature.stack_loss`,
:func:`~flatlab.curvature.model_hessian`) all use :class:`Objective`.

For one model ``x`` ``[P]`` (``nodes=False``) the objective is

    f(x) = Σ_chunks (|chunk| / N) ℓ_chunk(x),

each chunk's loss a mean over its samples, so the result is the exact mean over all ``N`` samples
whatever the chunk sizes (the PyHessian/curvlinops weighting, docs/reference/measures.md §3). For
the node models ``X`` ``[n, P]`` (``nodes=True``) it is the ``[n]`` vector of the node losses
``f_i(x_i)``, each node with its own buffers, in one vmapped pass per chunk; node ``i``'s loss
depends on row ``i`` only, so its Hessian is block diagonal. Everything runs in eval mode
(BatchNorm uses fixed statistics, dropout is off; §4); the stack's mode is restored after each
pass.

Two reductions, each the one its users had:

- :meth:`Objective.value` (calling the objective) and :meth:`Objective.value_and_grad` weight
  each chunk's loss by ``|chunk| / N`` and sum in the stack's dtype; the value is differentiable
  (curvature, sharpness).
- :meth:`Objective.evaluate` (no gradient) sums ``|chunk| · ℓ_chunk`` in float64, divides by
  ``N`` once, and counts correct predictions for classification: the numbers a run reports.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from flatlab.engine.stack import NodeStack
from flatlab.errors import ObjectiveError

__all__ = ["Objective", "GRAD_METHODS"]

#: How :meth:`Objective.value_and_grad` differentiates a chunk.
GRAD_METHODS = ("autograd", "func")


class Objective:
    """The mean loss of one model ``x`` ``[P]``, or of every node ``X`` ``[n, P]``, over a set.

    Args:
        stack: The node stack that defines the model and the loss (and holds the node buffers).
        inputs: ``[N, ...]`` evaluation inputs (on any device; moved to the stack's device and
            dtype).
        targets: ``[N]`` labels or ``[N, k]`` regression targets (moved to the stack's device).
        nodes: ``False``: a function of one model ``x`` ``[P]`` (the averaged buffers unless
            ``buffers`` is given). ``True``: a function of the stack's node models ``X``
            ``[n, P]``, each with its own (live) buffers.
        buffers: The one model's buffers (``{name: tensor}``, unstacked; ``nodes=False`` only);
            by default ``stack.average_buffers()`` at construction.
        batch_size: Samples per chunk.
        cache: Move the chunks to the device once, at construction (repeated passes: curvature,
            sharpness); ``False`` moves each chunk at every pass (one pass over a large set).
            The numbers are the same either way.

    Attributes:
        stack: The node stack.
        nodes: Whether the objective takes the node models ``[n, P]``.
        buffers: The buffers of the one model (``None`` when ``nodes``).
        size: Number of samples ``N``.
        batch_size: Samples per chunk.

    Raises:
        ObjectiveError: ``batch_size < 1``, no samples, different numbers of inputs and targets,
            or ``buffers`` with ``nodes=True``.
    """

    def __init__(self, stack: NodeStack, inputs: torch.Tensor, targets: torch.Tensor, *,
                 nodes: bool = False, buffers: dict[str, torch.Tensor] | None = None,
                 batch_size: int = 2048, cache: bool = True) -> None:
        if int(batch_size) < 1:
            raise ObjectiveError(f"batch_size must be >= 1, got {batch_size}")
        if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
            raise ObjectiveError(f"inputs and targets need the same, non-zero number of samples; "
                                 f"got {inputs.shape[0]} and {targets.shape[0]}")
        if nodes and buffers is not None:
            raise ObjectiveError("buffers are for one model; the node models (nodes=True) each "
                                 "use their own buffers of the stack")
        self.stack = stack
        self.nodes = bool(nodes)
        self.buffers = None if nodes else (stack.average_buffers() if buffers is None
                                           else dict(buffers))
        self.size = int(inputs.shape[0])
        self.batch_size = int(batch_size)
        self._data = (inputs, targets)
        self._cached = list(self._moved()) if cache else None
        self._per_node = torch.vmap(stack.loss_fn, in_dims=(0, None))

    # ------------------------------------------------------------------ chunks and checks
    def _moved(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = self._data
        dev, dt = self.stack.device, self.stack.dtype
        for s in range(0, self.size, self.batch_size):
            yield (inputs[s:s + self.batch_size].to(dev, dt),
                   targets[s:s + self.batch_size].to(dev))

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation set as ``(inputs, targets)`` chunks on the stack's device and dtype."""
        return iter(self._cached) if self._cached is not None else self._moved()

    def check(self, x: torch.Tensor) -> None:
        """Refuse a point that is not ``[P]`` (``[n, P]`` for the node models) in the stack's dtype.

        Raises:
            ObjectiveError: Naming the shape or dtype expected.
        """
        want = (self.stack.n, self.stack.P) if self.nodes else (self.stack.P,)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != want:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            what = "the node models' flat parameters" if self.nodes \
                else "one model's flat parameters"
            name = "X" if self.nodes else "x"
            raise ObjectiveError(f"{name} must be {what} of shape {want}, got {shape}")
        if x.dtype != self.stack.dtype:
            raise ObjectiveError(f"{'X' if self.nodes else 'x'} has dtype {x.dtype} but the "
                                 f"stack computes in {self.stack.dtype}")

    def _outputs(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Model outputs on one chunk: ``[B, out]``, or ``[n, B, out]`` for the node models."""
        if self.nodes:
            return self.stack.forward(x, a, shared_inputs=True)
        return self.stack.apply(x, self.buffers, a)

    def _chunk_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss of one chunk: a scalar, or ``[n]`` for the node models."""
        return self._per_node(out, y) if self.nodes else self.stack.loss_fn(out, y)

    # ------------------------------------------------------------------ the objective
    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``: a 0-d tensor (``[n]`` for the node models), differentiable in ``x``.

        One autograd graph spans every chunk; :meth:`value_and_grad` keeps memory bounded.
        """
        self.check(x)
        total = x.new_zeros(())
        with self.stack.mode(train=False):
            for a, y in self.chunks():
                total = total + self._chunk_loss(self._outputs(x, a), y) * (a.shape[0]
                                                                            / self.size)
        return total

    __call__ = value

    def value_and_grad(self, x: torch.Tensor, *, method: str = "autograd"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), ∇f(x))`` accumulated chunk by chunk (bounded memory); both detached.

        For the node models the gradient ``[n, P]`` holds each node's gradient of its own loss.

        Args:
            x: The point ``[P]`` (``[n, P]`` for the node models).
            method: How each chunk is differentiated: ``"autograd"`` (``torch.autograd.grad``;
                what the sharpness measures have always used) or ``"func"``
                (``torch.func.grad_and_value``; what :func:`~flatlab.engine.full_gradient` has
                always used). They can differ in the last bits on convolutional models (the
                convolution's backward runs differently under ``torch.func``).
        """
        if method not in GRAD_METHODS:
            raise ObjectiveError(f"gradient method {method!r} is unknown; accepted: "
                                 f"{', '.join(GRAD_METHODS)}")
        self.check(x)
        g = torch.zeros_like(x)
        val = x.new_zeros(()) if not self.nodes else x.new_zeros(x.shape[0])
        with self.stack.mode(train=False), torch.enable_grad():
            for a, y in self.chunks():
                li, gi = self._chunk_value_and_grad(x.detach(), a, y, method)
                w = a.shape[0] / self.size
                g += gi * w
                val += li.detach() * w
        return val, g

    def _chunk_value_and_grad(self, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor,
                              method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk's loss (scalar or ``[n]``) and its gradient in ``x`` (of their sum)."""
        if method == "func":
            def total(xr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                li = self._chunk_loss(self._outputs(xr, a), y)
                return li.sum() if self.nodes else li, li

            gi, (_, li) = torch.func.grad_and_value(total, has_aux=True)(x)
            return li, gi
        xr = x.requires_grad_(True)
        li = self._chunk_loss(self._outputs(xr, a), y)
        (gi,) = torch.autograd.grad(li, xr, grad_outputs=torch.ones_like(li))
        return li, gi

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and accuracy at ``x``, accumulated in float64 (the reported numbers).

        Returns:
            ``(loss, accuracy)``: float64 CPU tensors, 0-d for one model and ``[n]`` for the node
            models; ``accuracy`` is ``None`` unless the loss is cross-entropy.
        """
        self.check(x)
        classify = self.stack.loss_name == "cross_entropy"
        shape = (x.shape[0],) if self.nodes else ()
        lsum = torch.zeros(shape, device=self.stack.device, dtype=torch.float64)
        csum = torch.zeros(shape, device=self.stack.device, dtype=torch.float64)
        with self.stack.mode(train=False):
            for a, y in self.chunks():
                out = self._outputs(x, a)
                lsum += self._chunk_loss(out, y).double() * a.shape[0]
                if classify:
                    csum += (out.argmax(-1) == y).sum(-1).double()
        return (lsum / self.size).cpu(), ((csum / self.size).cpu() if classify else None)
