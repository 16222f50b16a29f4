"""Gradient oracles: per-node losses ``[n]`` and gradients ``[n, P]`` in one call.

An oracle is any callable ``oracle(X, batch) -> (losses, G)``. Algorithms call it at whatever
point they need (CTA diffusion at the mixed point, tracking methods at the new iterate) and never
look inside. :class:`GradientOracle` differentiates a :class:`~flatlab.engine.NodeStack` on
per-node minibatches ``[n, b, ...]``; :class:`FunctionOracle` wraps a hand-written ``grad_fn(X, t)``
for objectives with no model (:func:`flatlab.simulate`).

Weight decay belongs to the oracle: ``G = grad + weight_decay * X``, the place the seed codes put
it (inside the gradient, before any momentum or tracking).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch.func import grad_and_value

from flatlab.engine.stack import NodeStack

__all__ = ["Oracle", "GradientOracle", "FunctionOracle"]


class Oracle(Protocol):
    """What an algorithm sees of the objective."""

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:  # noqa: N803
        """Per-node losses ``[n]`` (or ``None``) and gradients ``[n, P]`` at ``X`` on ``batch``."""
        ...


class GradientOracle:
    """Per-node stochastic gradients of a node stack on per-node minibatches.

    ``G[i] = grad_x loss(model(x_i; inputs[i]), targets[i]) + weight_decay * x_i``, for all ``i``
    in one vectorized call, in train mode (BatchNorm statistics of each node are updated from its
    own batch, dropout masks differ per node).

    Args:
        stack: The node stack.
        weight_decay: L2 coefficient added to every gradient.
        method: ``"vmap"`` (``vmap(grad)`` per node, the default) or ``"autograd"`` (a vmapped
            forward and one backward of the summed node losses; node losses depend only on their
            own rows, so the gradient of the sum is the stack of per-node gradients).
    """

    def __init__(self, stack: NodeStack, *, weight_decay: float = 0.0,
                 method: str = "vmap") -> None:
        if method not in ("vmap", "autograd"):
            raise ValueError(f"oracle method {method!r} is unknown; accepted: vmap, autograd")
        self.stack = stack
        self.weight_decay = float(weight_decay)
        self.method = method
        self.calls = 0
        self._vgrad = torch.vmap(grad_and_value(stack.node_loss), in_dims=(0, 0, 0, 0),
                                 randomness=stack.randomness)

    def __call__(self, X: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]  # noqa: N803
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``[n]`` and gradients ``[n, P]`` at ``X`` on ``batch = (inputs, targets)``."""
        inputs, targets = batch
        self.calls += 1
        with self.stack.mode(train=True):
            if self.method == "vmap":
                G, losses = self._vgrad(X.detach(), self.stack.buffers, inputs, targets)
            else:
                G, losses = self._autograd(X, inputs, targets)
        if self.weight_decay:
            G = G + self.weight_decay * X
        return losses.detach(), G.detach()

    def _autograd(self, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = X.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.stack.forward(x, inputs)
            losses = torch.vmap(self.stack.loss_fn)(out, targets)
            (G,) = torch.autograd.grad(losses.sum(), x)
        return G, losses


class FunctionOracle:
    """An oracle from a hand-written gradient map ``grad_fn(X, t) -> G`` (no model, no loss).

    The algorithms pass the step counter ``t`` as the batch, so ``grad_fn`` can draw noise that is
    deterministic per step. Losses are ``None``.
    """

    def __init__(self, grad_fn: Callable[[torch.Tensor, int], torch.Tensor],
                 *, weight_decay: float = 0.0) -> None:
        self.grad_fn = grad_fn
        self.weight_decay = float(weight_decay)
        self.calls = 0

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[None, torch.Tensor]:  # noqa: N803
        """``(None, grad_fn(X, batch) + weight_decay * X)``."""
        self.calls += 1
        G = self.grad_fn(X, batch)
        if not isinstance(G, torch.Tensor) or G.shape != X.shape:
            shape = getattr(G, "shape", type(G).__name__)
            raise ValueError(f"grad_fn must return a tensor shaped like X {tuple(X.shape)}, "
                             f"got {shape}")
        if self.weight_decay:
            G = G + self.weight_decay * X
        return None, G
