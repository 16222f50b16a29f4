"""K-FAC: Kronecker-factored Fisher blocks of Linear, Conv1d and Conv2d layers, on the node stack.

Sources: Martens & Grosse 2015 (K-FAC), Grosse & Martens 2016 (KFC for convolutions);
docs/reference/algorithms.md §8, §16 item 13.

For a layer ``s = W ā`` with ``ā = [a; 1]`` (the bias as an extra input column) and per-example
output gradient ``g = ∂ℓ_b/∂s``, the Fisher block of ``vec W`` (row-major, PyTorch's
``.view(-1)`` of ``[W | b]``) is approximated by ``G ⊗ A`` with::

    A = E_b [ mean_t ā_{b,t} ā_{b,t}ᵀ ]        G = E_b [ Σ_t g_{b,t} g_{b,t}ᵀ ]

over the ``T`` spatial positions ``t`` of a convolution (im2col patches; ``T = 1`` for Linear).
That is KFC's scaling under spatial homogeneity and uncorrelated derivatives (the convention
that divides ``A`` by ``T``, as ASDL does); the factors are those of the mean loss over the batch.

Factors are computed *functionally* for all nodes in one vectorized pass: forward hooks on the
template module record each layer's input and add a zero probe to its output, the summed loss is
differentiated with respect to the probes (``g`` for every example), and everything runs under
``torch.vmap`` over the node stack. The Fisher is ``"empirical"`` (the data labels) or
``"true"`` (labels sampled from the model: categorical for cross-entropy, ``y = f + N(0, I)`` for
the half-MSE loss).

The factors live in the engine, beside the gradient oracle that offers them as its curvature
metric (:class:`~flatlab.engine.oracle.GradientOracle`'s ``metric_factors``); their damped
inverse and eigenbasis are curvature (:mod:`flatlab.curvature.kfac`, which re-exports these).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call, grad

from flatlab.errors import CurvatureError

__all__ = ["KFACLayer", "kfac_layers", "kfac_factors", "kfac_grads_and_factors", "FISHER_TYPES"]

FISHER_TYPES = ("empirical", "true")


@dataclass(frozen=True)
class KFACLayer:
    """A layer K-FAC covers: its module name, kind and the slices of its parameters.

    Attributes:
        module: Name of the module inside the model.
        kind: ``"linear"``, ``"conv1d"`` or ``"conv2d"``.
        weight: ``(slice, shape)`` of the weight in the flat parameter vector.
        bias: ``(slice, shape)`` of the bias, or ``None``.
        a_dim: Size of ``ā`` (input features times kernel, plus 1 with a bias).
        g_dim: Number of output features (channels).
    """

    module: str
    kind: str
    weight: tuple[slice, torch.Size]
    bias: tuple[slice, torch.Size] | None
    a_dim: int
    g_dim: int

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., P] -> [..., g_dim, a_dim]``: the layer's ``[W | b]`` (weights flattened)."""
        w = x[..., self.weight[0]].reshape(*x.shape[:-1], self.g_dim, -1)
        if self.bias is None:
            return w
        return torch.cat([w, x[..., self.bias[0]].unsqueeze(-1)], dim=-1)

    def scatter(self, m: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``[..., g_dim, a_dim]`` back into the flat ``out`` ``[..., P]`` (in place)."""
        cols = m.shape[-1] - (self.bias is not None)
        out[..., self.weight[0]] = m[..., :cols].reshape(*m.shape[:-2], -1)
        if self.bias is not None:
            out[..., self.bias[0]] = m[..., cols]


def kfac_layers(module: nn.Module) -> list[KFACLayer]:
    """The Linear, Conv1d and Conv2d layers of ``module`` (ungrouped), in parameter order.

    Other parameters (normalization scales, embeddings) are not covered; a K-FAC metric treats
    them with the damping alone.
    """
    offsets, pos = {}, 0
    for name, p in module.named_parameters():
        offsets[name] = (slice(pos, pos + p.numel()), p.shape)
        pos += p.numel()
    out = []
    for name, m in module.named_modules():
        kind = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}.get(type(m))
        if kind is None:
            continue
        if kind != "linear" and m.groups != 1:
            continue
        prefix = f"{name}." if name else ""
        w = offsets[prefix + "weight"]
        b = offsets.get(prefix + "bias") if m.bias is not None else None
        g_dim = w[1][0]
        a_dim = math.prod(w[1][1:]) + (b is not None)
        out.append(KFACLayer(name, kind, w, b, a_dim, g_dim))
    return out


_STATE: dict[str, Any] = {}


def _patches(layer: KFACLayer, mod: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Layer input -> ``[B, T, features]`` rows ``a_{b,t}`` (im2col for convolutions)."""
    if layer.kind == "linear":
        return a.reshape(a.shape[0], -1, a.shape[-1])
    if layer.kind == "conv1d":
        a = a.unsqueeze(-2)  # [B, C, 1, L]
        kernel, stride = (1, mod.kernel_size[0]), (1, mod.stride[0])
        dilation = (1, mod.dilation[0])
        pad = mod.padding if isinstance(mod.padding, str) else (0, mod.padding[0])
    else:
        kernel, stride, dilation = mod.kernel_size, mod.stride, mod.dilation
        pad = mod.padding
    if isinstance(pad, str) or mod.padding_mode != "zeros":
        raise CurvatureError(f"kfac: layer {layer.module} uses padding {mod.padding!r} "
                             f"({mod.padding_mode}); accepted: integer zero padding")
    cols = F.unfold(a, kernel, dilation=dilation, padding=pad, stride=stride)  # [B, C k, T]
    return cols.transpose(1, 2)


@contextmanager
def _hooked(module: nn.Module, layers: list[KFACLayer]) -> Iterator[None]:
    """Forward hooks recording layer inputs and adding probes, active while ``_STATE`` is set."""
    mods = dict(module.named_modules())
    handles = []
    for layer in layers:
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, layer: KFACLayer = layer):
            if not _STATE:
                return None
            _STATE["inputs"][layer.module] = _patches(layer, mod, args[0])
            probe = _STATE["probes"].get(layer.module)
            return out if probe is None else out + probe
        handles.append(mods[layer.module].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _sample_targets(out: torch.Tensor, loss: str, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution (the true Fisher)."""
    if loss == "cross_entropy":
        probs = torch.softmax(out.detach().reshape(-1, out.shape[-1]).double(), -1)
        return torch.multinomial(probs.cpu(), 1, generator=gen).reshape(out.shape[:-1]).to(
            out.device)
    noise = torch.randn(out.shape, generator=gen, dtype=torch.float64, device="cpu").to(out)
    return out.detach() + noise


def kfac_factors(stack: Any, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                 targets: torch.Tensor, *, fisher: str = "empirical",
                 generator: torch.Generator | None = None,
                 layers: list[KFACLayer] | None = None
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K-FAC factors ``(A [n, a, a], G [n, g, g])`` of every covered layer, for every node.

    Args:
        stack: A :class:`~flatlab.engine.NodeStack` (its module, buffers and loss are used, in
            train mode as for gradients; the buffers are not updated).
        X: ``[n, P]`` node parameters.
        inputs: ``[n, B, ...]`` each node's batch.
        targets: ``[n, B]`` labels or ``[n, B, k]`` targets (ignored by the true Fisher, which
            samples its own).
        fisher: ``"empirical"`` or ``"true"``.
        generator: Seeded generator of the true Fisher's labels.
        layers: The covered layers (default :func:`kfac_layers` of the stack's module).

    Returns:
        ``{module name: (A, G)}``.
    """
    if fisher not in FISHER_TYPES:
        raise CurvatureError(f"fisher {fisher!r} is unknown; accepted: {', '.join(FISHER_TYPES)}")
    layers = kfac_layers(stack.module) if layers is None else layers
    if not layers:
        return {}
    module, layout, loss_fn = stack.module, stack.layout, stack.loss_fn
    buffers = {k: v.clone() for k, v in stack.buffers.items()}
    if fisher == "true":
        with torch.no_grad():
            out = stack.forward(X, inputs)
        targets = _sample_targets(out, stack.loss_name,
                                  generator or torch.Generator().manual_seed(0))
    B = inputs.shape[1]
    out_shapes = _output_shapes(stack, X, inputs, layers, buffers)

    def node(probes: dict[str, torch.Tensor], x: torch.Tensor, buf: dict[str, torch.Tensor],
             xb: torch.Tensor, yb: torch.Tensor):
        out, captured = _probed_forward(module, layout.unflatten(x), buf, xb, probes)
        return loss_fn(out, yb) * B, captured  # summed: probe gradients are per example

    probes = {ly.module: X.new_zeros(X.shape[0], B, *out_shapes[ly.module]) for ly in layers}
    with _hooked(module, layers), stack.mode(train=True):
        gs, acts = torch.vmap(grad(node, has_aux=True), randomness="different")(
            probes, X, buffers, inputs, targets)
    return _factors(layers, acts, gs, B)


def _probed_forward(module: nn.Module, params: dict[str, torch.Tensor],
                    buffers: dict[str, torch.Tensor], inputs: torch.Tensor,
                    probes: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One node's output with the probes added, and each covered layer's input patches.

    The hooks of :func:`_hooked` act while ``_STATE`` is set, that is during this call only.
    """
    _STATE.update(inputs={}, probes=probes)
    try:
        out = functional_call(module, (params, buffers), (inputs,))
        return out, dict(_STATE["inputs"])
    finally:
        _STATE.clear()


def _output_shapes(stack: Any, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                   layers: list[KFACLayer], buffers: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Size]:
    """Each covered layer's output shape for one example (a forward of node 0, no gradients)."""
    module, layout = stack.module, stack.layout
    sizes: dict[str, torch.Size] = {}
    mods = dict(module.named_modules())
    hs = [mods[ly.module].register_forward_hook(
        lambda m, a, o, name=ly.module: sizes.__setitem__(name, o.shape[1:]))
        for ly in layers]
    try:
        with torch.no_grad():
            functional_call(module, (layout.unflatten(X[0]), {k: v[0].clone() for k, v in
                                                              buffers.items()}),
                            (inputs[0],))
    finally:
        for h in hs:
            h.remove()
    return sizes


def _factors(layers: list[KFACLayer], acts: dict[str, torch.Tensor],
             gs: dict[str, torch.Tensor], B: int  # noqa: N803
             ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``A`` and ``G`` of every layer from its inputs ``ā`` and per-example output gradients."""
    result = {}
    for ly in layers:
        a = acts[ly.module]                                     # [n, B, T, features]
        if ly.bias is not None:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        g = gs[ly.module]                                       # [n, B, out, *spatial]
        g = g.reshape(g.shape[0], B, ly.g_dim, -1).transpose(2, 3)   # [n, B, T, out]
        T = a.shape[2]
        A = torch.einsum("nbti,nbtj->nij", a, a) / (B * T)
        G = torch.einsum("nbti,nbtj->nij", g, g) / B
        result[ly.module] = (A, G)
    return result


def kfac_grads_and_factors(stack: Any, X: torch.Tensor, inputs: torch.Tensor,  # noqa: N803
                           targets: torch.Tensor, *, layers: list[KFACLayer] | None = None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                      dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Losses, gradients and empirical K-FAC factors of every node in one vectorized pass.

    What :class:`~flatlab.engine.GradientOracle` and :func:`kfac_factors` (``fisher=
    "empirical"``) compute in two passes, from one: the probes that give the per-example output
    gradients ``g`` ride on the gradient's own forward and backward (the empirical Fisher uses
    the data labels, so the pass that differentiates the loss also gives ``g``). The probes add
    zeros, so the gradients are the plain gradients of each node's mean loss; with the mean
    loss the probe gradients are ``g / B``, rescaled here. Runs in train mode and, like the
    oracle, updates each node's BatchNorm statistics once.

    Returns:
        ``(losses [n], {parameter name: [n, *shape]} gradients, {module name: (A, G)})``.
    """
    layers = kfac_layers(stack.module) if layers is None else layers
    module, layout, loss_fn = stack.module, stack.layout, stack.loss_fn
    B = inputs.shape[1]
    out_shapes = _output_shapes(stack, X, inputs, layers, stack.buffers)

    def node(params: dict[str, torch.Tensor], probes: dict[str, torch.Tensor],
             buf: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor):
        out, captured = _probed_forward(module, params, buf, xb, probes)
        loss = loss_fn(out, yb)
        return loss, (loss.detach(), captured)

    probes = {ly.module: X.new_zeros(X.shape[0], B, *out_shapes[ly.module]) for ly in layers}
    with _hooked(module, layers), stack.mode(train=True):
        (gp, gprobe), (losses, acts) = torch.vmap(
            grad(node, argnums=(0, 1), has_aux=True), randomness=stack.randomness)(
            layout.unflatten(X), probes, stack.buffers, inputs, targets)
    per_example = {k: v * B for k, v in gprobe.items()}  # ∂ℓ_b/∂s from the mean loss's g / B
    return losses, gp, _factors(layers, acts, per_example, B)
