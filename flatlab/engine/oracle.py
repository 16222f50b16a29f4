"""Gradient oracles: per-node losses ``[n]`` and gradients ``[n, P]`` in one call.

An oracle is any callable ``oracle(X, batch) -> (losses, G)``. Algorithms call it at whatever
point they need (CTA diffusion at the mixed point, tracking methods at the new iterate) and never
look inside. :class:`GradientOracle` differentiates a :class:`~flatlab.engine.NodeStack` on
per-node minibatches ``[n, b, ...]``; :class:`FunctionOracle` wraps a hand-written ``grad_fn(X, t)``
for objectives with no model (:func:`flatlab.simulate`).

Weight decay belongs to the oracle: ``G = grad + weight_decay * X``, the place the seed codes put
it (inside the gradient, before any momentum or tracking).

Beyond gradients an oracle may offer declared capabilities, which algorithms test with
``isinstance`` and never by looking inside: :class:`DecayOracle`, the weight decay it adds (for a
method that decays another point than the one its gradient is taken at: SGP's push-sum
numerators), :class:`MetricOracle`, a per-node curvature metric in
Kronecker-factored blocks (NGPD's; K-FAC for :class:`GradientOracle`, the user's ``metric_fn``
for :class:`FunctionOracle`), and :class:`LayeredOracle`, the parameter tensors' slices of the
flat vector (per-layer compression).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.func import grad_and_value

from flatlab.engine.kfac import KFACLayer, kfac_factors, kfac_grads_and_factors, kfac_layers
from flatlab.engine.stack import NodeStack, to_device
from flatlab.errors import AlgorithmError

__all__ = ["Oracle", "DecayOracle", "MetricOracle", "FusedMetricOracle", "MetricBlock",
           "LayeredOracle", "DenseMetricBlock", "GradientOracle", "FunctionOracle", "SAMOracle",
           "sam_oracle", "SkippingOracle", "DelayedGradients"]


@runtime_checkable
class Oracle(Protocol):
    """What an algorithm sees of the objective."""

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:  # noqa: N803
        """Per-node losses ``[n]`` (or ``None``) and gradients ``[n, P]`` at ``X`` on ``batch``."""
        ...


@runtime_checkable
class DecayOracle(Oracle, Protocol):
    """An oracle that states the weight decay it adds: ``G = ∇F(X) + weight_decay · X``.

    The decay is taken at the point the gradient is taken at (``X``). A method whose update
    decays another point ``Y`` (SGP with ``weight_decay_on="numerator"``: the push-sum numerators,
    as its authors' code does) moves the term, ``G + weight_decay · (Y − X)``, which is
    ``∇F(X) + weight_decay · Y`` exactly, up to rounding. :class:`GradientOracle`,
    :class:`FunctionOracle` and :class:`SAMOracle` are decay oracles.

    Attributes:
        weight_decay: The L2 coefficient added to every gradient (0 for none).
    """

    weight_decay: float


@runtime_checkable
class MetricBlock(Protocol):
    """One block ``G ⊗ A`` of a block-diagonal metric, over a slice of the ``P`` parameters.

    The block acts on the parameters as a ``[g_dim, a_dim]`` matrix ``V`` (a layer's
    ``[W | b]``), so that ``(G ⊗ A) vec V = vec(G V A)`` (row-major ``vec``).

    Attributes:
        weight: ``(slice, shape)`` of the block's main parameters in the flat vector.
        bias: ``(slice, shape)`` of its bias (the last column of ``V``), or ``None``.
        a_dim: Size of ``A`` (columns of ``V``).
        g_dim: Size of ``G`` (rows of ``V``).
    """

    weight: tuple[slice, torch.Size]
    bias: tuple[slice, torch.Size] | None
    a_dim: int
    g_dim: int

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., P] -> [..., g_dim, a_dim]``: the block's parameters as the matrix ``V``."""
        ...

    def scatter(self, m: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[..., g_dim, a_dim]`` back into the block's slices of ``out`` ``[..., P]``."""
        ...


@runtime_checkable
class MetricOracle(Oracle, Protocol):
    """An oracle that also gives each node's curvature metric ``F_i ≈ ⊕_ℓ G_ℓ ⊗ A_ℓ``.

    Natural-gradient methods (NGPD) solve in this metric; parameters no block covers get the
    damping alone.
    """

    def metric_blocks(self, P: int) -> list[MetricBlock] | None:  # noqa: N803
        """The blocks of the metric over the ``P`` parameters, or ``None`` when it has none."""
        ...

    def metric_factors(self, X: torch.Tensor, batch: Any, blocks: list[MetricBlock], *,  # noqa: N803
                       fisher: str = "empirical", generator: torch.Generator | None = None
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block of ``blocks``, node-stacked factors ``(A [n, a, a], G [n, g, g])`` at ``X``.

        Args:
            X: ``[n, P]`` node parameters.
            batch: What the oracle's ``__call__`` takes.
            blocks: What :meth:`metric_blocks` returned.
            fisher: ``"empirical"`` or ``"true"`` (a Fisher metric's labels).
            generator: Seeded generator of the true Fisher's sampled labels.
        """
        ...


@runtime_checkable
class FusedMetricOracle(MetricOracle, Protocol):
    """A metric oracle that can give the gradients and the empirical metric in one pass.

    NGPD refreshes its metric on the same minibatch, at the same point, as that step's
    gradient; with the empirical Fisher both come from one forward and backward.
    """

    def grads_and_factors(self, X: torch.Tensor, batch: Any, blocks: list[MetricBlock]  # noqa: N803
                          ) -> tuple[torch.Tensor | None, torch.Tensor,
                                     list[tuple[torch.Tensor, torch.Tensor]]]:
        """``(losses, G, factors)`` from one pass.

        The same as ``oracle(X, batch)`` followed by ``metric_factors(X, batch, blocks,
        fisher="empirical")``.
        """
        ...


@runtime_checkable
class LayeredOracle(Oracle, Protocol):
    """An oracle whose parameter vector is made of tensors (a model's), which it can name."""

    def parameter_slices(self) -> list[slice]:
        """The slice of the flat ``[P]`` vector holding each parameter tensor, in order."""
        ...


@dataclass(frozen=True)
class DenseMetricBlock:
    """The whole vector ``[d]`` as one block ``G ⊗ A``: ``A = [1]``, ``G`` a dense metric."""

    d: int
    bias = None

    @property
    def weight(self) -> tuple[slice, torch.Size]:
        """All ``d`` entries."""
        return slice(0, self.d), torch.Size([self.d])

    @property
    def a_dim(self) -> int:
        """1: the vector is one column."""
        return 1

    @property
    def g_dim(self) -> int:
        """``d``."""
        return self.d

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., d, 1]``."""
        return x[..., :self.d].unsqueeze(-1)

    def scatter(self, m: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[..., d, 1]`` into ``out`` ``[..., d]``."""
        out[..., :self.d] = m.squeeze(-1)


class GradientOracle:
    """Per-node stochastic gradients of a node stack on per-node minibatches.

    A :class:`MetricOracle` (the K-FAC Fisher of the model's Linear and Conv layers), a
    :class:`FusedMetricOracle` (gradients and empirical factors from one pass) and a
    :class:`LayeredOracle` (the model's parameter tensors).

    ``G[i] = grad_x loss(model(x_i; inputs[i]), targets[i]) + weight_decay * x_i``, for all ``i``
    in one vectorized call, in train mode (BatchNorm statistics of each node are updated from its
    own batch, dropout masks differ per node).

    Args:
        stack: The node stack.
        weight_decay: L2 coefficient added to every gradient.
        method: ``"vmap"`` (``vmap(grad)`` per node) or ``"autograd"`` (a vmapped forward and
            one backward of the summed node losses; node losses depend only on their own
            parameters, so the gradient of the sum is the stack of per-node gradients).
            ``"auto"`` (default) takes ``autograd`` for convolutional models and ``vmap``
            otherwise, the faster of the two in ``benchmarks/step_time.py``. Either way the
            gradient is taken per parameter tensor and concatenated once into ``[n, P]``.
        compile: Compile the vmapped gradient with ``torch.compile`` (``method="vmap"``). On
            the CPU it about halves the MLP's step after a compilation of tens of seconds;
            measured in ``benchmarks/step_time.py --compile``. Off by default.
    """

    def __init__(self, stack: NodeStack, *, weight_decay: float = 0.0,
                 method: str = "auto", compile: bool = False) -> None:  # noqa: A002
        if method not in ("auto", "vmap", "autograd"):
            raise ValueError(f"oracle method {method!r} is unknown; accepted: auto, vmap, "
                             "autograd")
        self.stack = stack
        self.weight_decay = float(weight_decay)
        if method == "auto":
            convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
            method = "autograd" if any(isinstance(m, convs) for m in stack.module.modules()) \
                else "vmap"
        self.method = method
        self.calls = 0
        self._vgrad = torch.vmap(grad_and_value(stack.params_loss), in_dims=(0, 0, 0, 0),
                                 randomness=stack.randomness)
        self._vloss = torch.vmap(stack.params_loss, in_dims=(0, 0, 0, 0),
                                 randomness=stack.randomness)
        self.compiled = bool(compile)
        self._grad_flat = self._vmap_grad_flat
        if self.compiled:
            if method != "vmap":
                raise ValueError("compile=True needs method='vmap'")
            self._grad_flat = torch.compile(self._vmap_grad_flat)

    def _vmap_grad_flat(self, X: torch.Tensor, buffers: dict[str, torch.Tensor],  # noqa: N803
                        inputs: torch.Tensor, targets: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        grads, losses = self._vgrad(self.stack.layout.unflatten(X), buffers, inputs, targets)
        return self.stack.layout.flatten(grads), losses

    def __call__(self, X: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]  # noqa: N803
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``[n]`` and gradients ``[n, P]`` at ``X`` on ``batch = (inputs, targets)``."""
        inputs, targets = batch
        self.calls += 1
        layout = self.stack.layout
        with self.stack.mode(train=True):
            if self.method == "vmap":
                G, losses = self._grad_flat(X.detach(), self.stack.buffers, inputs, targets)
            else:
                leaves = {k: v.detach().clone().requires_grad_(True)
                          for k, v in layout.unflatten(X.detach()).items()}
                with torch.enable_grad():
                    losses = self._vloss(leaves, self.stack.buffers, inputs, targets)
                    gs = torch.autograd.grad(losses.sum(), list(leaves.values()))
                G = layout.flatten(dict(zip(leaves, gs, strict=True)))  # a fresh tensor
        if self.weight_decay:
            G.add_(X, alpha=self.weight_decay)
        return losses.detach(), G.detach()

    def grads_and_factors(self, X: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor],  # noqa: N803
                          blocks: list[KFACLayer]
                          ) -> tuple[torch.Tensor, torch.Tensor,
                                     list[tuple[torch.Tensor, torch.Tensor]]]:
        """Losses, gradients and empirical K-FAC factors in one vectorized pass.

        :func:`~flatlab.engine.kfac.kfac_grads_and_factors`: the per-example output gradients
        that K-FAC's ``G`` needs come from the gradient's own backward, instead of the second
        forward and backward of :meth:`metric_factors`. Counts as one oracle call; weight decay
        is added as in :meth:`__call__`.
        """
        inputs, targets = batch
        self.calls += 1
        losses, grads, f = kfac_grads_and_factors(self.stack, X.detach(), inputs, targets,
                                                  layers=blocks)
        G = self.stack.layout.flatten(grads)  # noqa: N806
        if self.weight_decay:
            G.add_(X, alpha=self.weight_decay)
        return losses.detach(), G.detach(), [f[ly.module] for ly in blocks]

    def parameter_slices(self) -> list[slice]:
        """The slice of each parameter tensor in the flat vector (the layout's order)."""
        return [sl for _, sl, _ in self.stack.layout]

    def metric_blocks(self, P: int) -> list[KFACLayer]:  # noqa: N803
        """K-FAC's blocks: the model's Linear, Conv1d and Conv2d layers (:func:`kfac_layers`)."""
        return kfac_layers(self.stack.module)

    def metric_factors(self, X: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor],  # noqa: N803
                       blocks: list[KFACLayer], *, fisher: str = "empirical",
                       generator: torch.Generator | None = None
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K-FAC factors ``(A, G)`` of each layer in ``blocks`` on ``batch`` (:func:`kfac_factors`).

        One extra vectorized forward and backward pass; ``fisher="true"`` samples the labels
        from the model with ``generator``.
        """
        inputs, targets = batch
        f = kfac_factors(self.stack, X, inputs, targets, fisher=fisher, generator=generator,
                         layers=blocks)
        return [f[ly.module] for ly in blocks]


class FunctionOracle:
    """An oracle from a hand-written gradient map ``grad_fn(X, t) -> G`` (no model, no loss).

    The algorithms pass the step counter ``t`` as the batch, so ``grad_fn`` can draw noise that is
    deterministic per step. Losses are ``None``. ``metric_fn(X, t) -> [n, d, d]`` optionally
    gives per-node curvature for the natural-gradient methods: the oracle is a
    :class:`MetricOracle` whose one dense block is that matrix (``metric_blocks`` gives ``None``
    without ``metric_fn``).
    """

    def __init__(self, grad_fn: Callable[[torch.Tensor, int], torch.Tensor],
                 *, weight_decay: float = 0.0,
                 metric_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None) -> None:
        self.grad_fn = grad_fn
        self.weight_decay = float(weight_decay)
        self.metric_fn = metric_fn
        self.calls = 0

    def metric(self, X: torch.Tensor, batch: Any) -> torch.Tensor:  # noqa: N803
        """``[n, d, d]`` per-node curvature from ``metric_fn`` (exact Hessians, say), for NGPD."""
        if self.metric_fn is None:
            raise ValueError("this FunctionOracle has no metric_fn; pass metric_fn(X, t) -> "
                             "[n, d, d] (simulate(..., metric_fn=...))")
        M = self.metric_fn(X, batch)
        if not isinstance(M, torch.Tensor) or M.shape != (*X.shape, X.shape[-1]):
            want = (*X.shape, X.shape[-1])
            raise AlgorithmError(f"metric_fn must return [n, d, d] = {want}, got "
                                 f"{getattr(M, 'shape', type(M).__name__)}")
        return M

    def metric_blocks(self, P: int) -> list[MetricBlock] | None:  # noqa: N803
        """One dense block over all ``P = d`` coordinates, or ``None`` without ``metric_fn``."""
        return None if self.metric_fn is None else [DenseMetricBlock(P)]

    def metric_factors(self, X: torch.Tensor, batch: Any, blocks: list[MetricBlock], *,  # noqa: N803
                       fisher: str = "empirical", generator: torch.Generator | None = None
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(1, M)]`` with ``M = metric_fn(X, batch)`` (``fisher`` and ``generator`` unused)."""
        M = self.metric(X, batch)  # noqa: N806
        return [(M.new_ones(M.shape[0], 1, 1), M)]

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[None, torch.Tensor]:  # noqa: N803
        """``(None, grad_fn(X, batch) + weight_decay * X)``."""
        self.calls += 1
        G = self.grad_fn(X, batch)
        if not isinstance(G, torch.Tensor) or G.shape != X.shape:
            shape = getattr(G, "shape", type(G).__name__)
            raise ValueError(f"grad_fn must return a tensor shaped like X {tuple(X.shape)}, "
                             f"got {shape}")
        if self.weight_decay:
            G = torch.add(G, X, alpha=self.weight_decay)
        return None, G


class SAMOracle:
    """Sharpness-aware gradients on every node: ``G_i = ∇f_i(x_i + ε_i) + wd · x_i``.

    Foret, Kleiner, Mobahi, Neyshabur, ICLR 2021 (SAM), with Kwon et al., ICML 2021 (adaptive
    SAM, ASAM); docs/reference/measures.md §8.2-8.3 for the perturbation's forms::

        SAM:   ε_i = ρ g_i / ‖g_i‖                      g_i = ∇f_i(x_i) on the node's batch
        ASAM:  ε_i = ρ T_i² g_i / ‖T_i g_i‖,   T_i = diag(|x_i| + η)

    Every node perturbs with its own minibatch gradient (SAM's m-sharpness with m the node's
    batch, which is what data-parallel SAM computes per worker), all nodes at once: one extra
    call of the wrapped oracle on the perturbed stack, no loop over nodes. The weight decay of
    the wrapped oracle is kept out of the perturbation and taken at ``x_i``, as SAM's optimizer
    adds it outside the gradient. ``ρ = 0`` returns the wrapped oracle's gradients unchanged.
    The loss returned is the loss at ``x_i`` (what the runner records).

    Curvature capabilities of the wrapped oracle (``metric_blocks``, ``metric_factors``,
    ``parameter_slices``) pass through; its fused gradient-and-factors pass does not (it would
    return unperturbed gradients).

    Args:
        base: The oracle whose gradients are perturbed (with a ``weight_decay`` attribute).
        rho: Radius ``ρ >= 0``.
        adaptive: ASAM's scale-invariant perturbation.
        eta: ASAM's ``η`` (keeps zero weights perturbable).
    """

    _PASSED = ("metric_blocks", "metric_factors", "parameter_slices", "stack", "metric")

    def __init__(self, base: Oracle, rho: float, *, adaptive: bool = False,
                 eta: float = 0.01) -> None:
        if not rho >= 0:
            raise AlgorithmError(f"SAM's rho must be >= 0, got {rho}")
        if not eta >= 0:
            raise AlgorithmError(f"ASAM's eta must be >= 0, got {eta}")
        self.base, self.rho, self.adaptive, self.eta = base, float(rho), bool(adaptive), eta
        self.weight_decay = float(getattr(base, "weight_decay", 0.0))

    def __getattr__(self, name: str) -> Any:
        if name in SAMOracle._PASSED:
            return getattr(self.base, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def calls(self) -> int:
        """Calls of the wrapped oracle (two per SAM gradient)."""
        return self.base.calls

    def perturbation(self, X: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """``ε`` ``[n, P]`` from the loss gradients ``g`` at ``X`` (zero where ``g_i = 0``)."""
        if self.adaptive:
            T = X.abs() + self.eta  # noqa: N806
            scaled = T * g
            norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
            return self.rho * T * scaled / norm.clamp_min(torch.finfo(g.dtype).tiny)
        norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
        return self.rho * g / norm.clamp_min(torch.finfo(g.dtype).tiny)

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:  # noqa: N803
        """Losses at ``X`` and the SAM gradients ``[n, P]``."""
        loss, G = self.base(X, batch)  # noqa: N806
        if self.rho == 0:
            return loss, G
        g = G - self.weight_decay * X if self.weight_decay else G
        eps = self.perturbation(X, g)
        _, G_eps = self.base(X + eps, batch)  # noqa: N806 - ∇f(x + ε) + wd (x + ε)
        if self.weight_decay:
            G_eps = G_eps.sub_(eps, alpha=self.weight_decay)  # noqa: N806 - decay at x
        return loss, G_eps


def sam_oracle(base: Oracle, rho: float, *, adaptive: bool = False, eta: float = 0.01) -> Oracle:
    """``base`` itself when ``rho == 0``, else :class:`SAMOracle` around it."""
    return base if rho == 0 else SAMOracle(base, rho, adaptive=adaptive, eta=eta)


class SkippingOracle:
    """Stragglers: the nodes in ``skip`` contribute no gradient this step (their rows are 0).

    A straggler that has not finished its gradient when the round closes still gossips, but
    its update carries no gradient: ``G_i = 0`` (weight decay included), so DSGD's
    ``x_i⁺ = Σ_j w_ij x_j − η G_i`` only mixes, and a tracker moves by ``0 − g_i`` as the
    method's own bookkeeping says. Its loss is still reported. Every other attribute of the
    wrapped oracle is its own (``weight_decay``, ``stack``, ...); a method that asks the
    oracle for more than gradients (NGPD's curvature factors) is refused by the config.

    Args:
        inner: The oracle of the run.
        skip: ``[k]`` booleans, one per node this process holds.
    """

    def __init__(self, inner: Oracle, skip: torch.Tensor) -> None:
        self.inner = inner
        self.skip = skip

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:  # noqa: N803
        """The inner oracle's losses and gradients, the skipping nodes' rows set to zero."""
        loss, G = self.inner(X, batch)  # noqa: N806
        keep = ~to_device(self.skip, G.device).reshape(-1, *([1] * (G.dim() - 1)))
        return loss, G * keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DelayedGradients:
    """Stale gradients: node ``i``'s step-``t`` gradient at its point of ``d_{i,t}`` steps before.

    The delays are :class:`flatlab.topology.faults.StaleGradients`'s.
    ``G_t = ∇F(X̂_t)``, ``x̂_{i,t} = p_{i, t − d_{i,t}}``, where ``p_{i,s}`` is the point the method
    handed the oracle at step ``s`` (its iterate for consensus and diffusion ATC, the combined
    point for CTA) and ``p_{i,s} = p_{i,0}`` before the start. It keeps the last ``tau`` points,
    ``past`` (``[k, tau, P]``, node first, the newest at index 0: part of a checkpoint, so a
    resumed run continues bit for bit). The reported loss is the stale point's. Every method
    asks the oracle once per step; a second call in the same step is refused.

    Args:
        delays: ``delays(t)``: ``[k]`` integers in ``0 … tau`` for this process's nodes.
        tau: The largest delay.
    """

    def __init__(self, delays: Callable[[int], Any], tau: int) -> None:
        self.delays = delays
        self.tau = int(tau)
        self.past: torch.Tensor | None = None
        self._asked: int | None = None

    def at(self, oracle: Oracle, t: int) -> Oracle:
        """``oracle`` as step ``t`` sees it: gradients at the stale points."""
        return _Delayed(self, oracle, int(t))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (``past``, node first, or nothing before the first step)."""
        return {} if self.past is None else {"past": self.past.detach().cpu().clone()}

    def load_state_dict(self, d: dict[str, Any], device: Any = None) -> None:
        """Restore :meth:`state_dict`'s ``past`` (this process's rows)."""
        past = d.get("past")
        self.past = None if past is None else past.to(device)


class _Delayed:
    """One step's view of an oracle under :class:`DelayedGradients`."""

    def __init__(self, owner: DelayedGradients, inner: Oracle, t: int) -> None:
        self.owner, self.inner, self.t = owner, inner, t

    def __call__(self, X: torch.Tensor, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor]:  # noqa: N803
        """The inner oracle at ``x̂_{i,t}``; remembers ``X`` as this step's points."""
        h = self.owner
        if h._asked == self.t:
            raise AlgorithmError(f"stale gradients: the oracle was asked twice at step {self.t}; "
                               "accepted: methods that ask once per step")
        h._asked = self.t
        now = X.detach().unsqueeze(1)
        if h.past is None or h.past.shape[0] != X.shape[0]:
            h.past = now.expand(-1, h.tau, *X.shape[1:]).clone()
        points = torch.cat([now, h.past.to(X.device)], dim=1)  # [k, tau + 1, ...]
        d = to_device(torch.as_tensor(h.delays(self.t), dtype=torch.long, device="cpu"),
                      X.device)
        stale = points[torch.arange(X.shape[0], device=X.device), d]
        h.past = points[:, :h.tau].clone()
        return self.inner(stale, batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
