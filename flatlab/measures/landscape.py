"""Loss landscape: filter-normalized directions, 1-D and 2-D slices, linear interpolation.

All functions take ``loss_fn`` (``x`` ``[P]`` ↦ scalar loss on a fixed evaluation set) and
evaluate it point by point without gradients; losses come back as float64 CPU tensors.
``loss_fn`` keeps its buffers fixed along a path: for BatchNorm networks the barrier between two
models is inflated unless the statistics are re-estimated at each point (Jordan et al. 2023,
REPAIR; reference section 13.3), which these functions do not do. Reference:
docs/reference/measures.md section 13.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flatlab.engine.layout import ParamLayout
from flatlab.errors import MeasureError
from flatlab.measures.base import LossFn, check_count, check_x, loss_value
from flatlab.seeds import seed_for

__all__ = [
    "Slice1D",
    "Slice2D",
    "Interpolation",
    "Interpolations",
    "filter_normalized_direction",
    "slice_1d",
    "slice_2d",
    "interpolate",
    "node_to_node",
    "node_to_average",
]

_IGNORE = ("biasbn", None)


@dataclass(frozen=True)
class Slice1D:
    """``f(x + α d)`` on a grid of ``α``.

    Attributes:
        alphas: ``[m]`` float64 grid.
        losses: ``[m]`` float64 losses.
        loss: ``f(x)``.
    """

    alphas: torch.Tensor
    losses: torch.Tensor
    loss: float


@dataclass(frozen=True)
class Slice2D:
    """``f(x + α d₁ + β d₂)`` on a grid of ``(α, β)``.

    Attributes:
        alphas: ``[a]`` float64 grid along ``d₁``.
        betas: ``[b]`` float64 grid along ``d₂``.
        losses: ``[a, b]`` float64; ``losses[i, j] = f(x + alphas[i] d₁ + betas[j] d₂)``.
        loss: ``f(x)``.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    losses: torch.Tensor
    loss: float


@dataclass(frozen=True)
class Interpolation:
    """The loss along the segment ``x_t = (1 − t) x_a + t x_b``.

    Attributes:
        ts: ``[m]`` float64 values of ``t``.
        losses: ``[m]`` float64 ``f(x_t)``.
        gaps: ``[m]`` float64 ``f(x_t) − [(1 − t) f(x_a) + t f(x_b)]``.
        barrier: ``max_{t ∈ [0, 1]} gaps`` over the grid (``nan`` if no ``t`` lies in
            ``[0, 1]``); 0 when the grid holds both ends and the loss is convex along the path.
        barrier_t: The ``t`` of the barrier.
        loss_a: ``f(x_a)``.
        loss_b: ``f(x_b)``.
    """

    ts: torch.Tensor
    losses: torch.Tensor
    gaps: torch.Tensor
    barrier: float
    barrier_t: float
    loss_a: float
    loss_b: float


@dataclass(frozen=True)
class Interpolations:
    """Several segments on one grid of ``t``: node to node, or average to node.

    Attributes:
        pairs: ``(a, b)`` for each segment, node indices; ``a`` is ``None`` for the average
            ``x̄``.
        ts: ``[m]`` float64 values of ``t``.
        losses: ``[k, m]`` float64 ``f(x_t)`` per segment.
        gaps: ``[k, m]`` float64 ``f(x_t) − [(1 − t) f(x_a) + t f(x_b)]``.
        barriers: ``[k]`` float64 barrier of each segment.
        loss_a: ``[k]`` float64 ``f`` at the start of each segment.
        loss_b: ``[k]`` float64 ``f`` at its end.
    """

    pairs: tuple[tuple[int | None, int], ...]
    ts: torch.Tensor
    losses: torch.Tensor
    gaps: torch.Tensor
    barriers: torch.Tensor
    loss_a: torch.Tensor
    loss_b: torch.Tensor


# ---------------------------------------------------------------------------------- helpers
def _point(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    x = check_x(x, name)
    if x.dim() != 1:
        raise MeasureError(f"{name} must be one model's flat parameters [P], got shape "
                           f"{tuple(x.shape)}")
    return x


def _like(d: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    d = check_x(d, name)
    if tuple(d.shape) != tuple(x.shape):
        raise MeasureError(f"{name} must have the shape of x {tuple(x.shape)}, got "
                           f"{tuple(d.shape)}")
    return d.to(device=x.device, dtype=x.dtype)


def _grid(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float64, device="cpu").detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise MeasureError(f"{name} must be a sequence of numbers") from None
    if t.dim() != 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise MeasureError(f"{name} must be a non-empty 1-D sequence of finite numbers, got "
                           f"shape {tuple(t.shape)}")
    return t


# ---------------------------------------------------------------------------------- directions
def filter_normalized_direction(layout: ParamLayout, x: torch.Tensor, *, seed: int = 0,
                                index: int = 0, ignore: str | None = "biasbn") -> torch.Tensor:
    """A Gaussian direction with every filter rescaled to the norm of the same filter of ``x``.

    Li et al. 2018, "Visualizing the loss landscape of neural nets" (NeurIPS), filter
    normalization: draw ``d ~ N(0, I)``; for each parameter of two or more dimensions and each
    filter ``j`` (index along its first dimension: a conv output channel, a row of a linear
    weight) set ``d_j ← d_j · ‖x_j‖ / ‖d_j‖``. Parameters of at most one dimension (biases,
    normalization weights) are zeroed (``ignore="biasbn"``, the default of their code) or set to
    ``x``'s own values (``ignore=None``, as their code does then).

    Args:
        layout: The parameter layout of ``x``.
        x: Flat parameters ``[P]``.
        seed: Seed of the Gaussian draw (reproducible per device; the stream
            ``seed_for(seed, "landscape", index)`` of :mod:`flatlab.seeds`).
        index: Which direction of this seed: a 2-D slice takes ``0`` and ``1``, independent
            draws (``seed + 1`` would be another seed's first direction).
        ignore: ``"biasbn"`` or ``None``.

    Returns:
        The direction ``[P]``, with ``x``'s dtype and device.
    """
    x = _point(x)
    if x.shape[0] != layout.P:
        raise MeasureError(f"x has {x.shape[0]} entries but the layout has P = {layout.P}")
    if ignore not in _IGNORE:
        raise MeasureError(f"ignore {ignore!r} is unknown; accepted: 'biasbn', None")
    gen = torch.Generator(device=x.device).manual_seed(seed_for(seed, "landscape", index))
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    tiny = torch.finfo(x.dtype).tiny
    for _, s, shape in layout:
        if len(shape) <= 1:
            d[s] = 0 if ignore == "biasbn" else x[s]
            continue
        dv = d[s].view(shape[0], -1)
        wn = x[s].reshape(shape[0], -1).norm(dim=1, keepdim=True)
        dv.mul_(wn / dv.norm(dim=1, keepdim=True).clamp_min(tiny))
    return d


# ---------------------------------------------------------------------------------- slices
def slice_1d(loss_fn: LossFn, x: torch.Tensor, d: torch.Tensor,
             alphas: Sequence[float] | torch.Tensor) -> Slice1D:
    """The 1-D slice ``α ↦ f(x + α d)``.

    Goodfellow et al. 2015 (ICLR); Li et al. 2018 (NeurIPS) take a filter-normalized ``d`` and
    ``α ∈ [−1, 1]`` with about 51 points.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss.
        x: The centre ``[P]``.
        d: The direction ``[P]``.
        alphas: The grid of ``α``.

    Returns:
        A :class:`Slice1D`.
    """
    x = _point(x)
    d = _like(d, x, "d")
    a = _grid(alphas, "alphas")
    losses = torch.tensor([loss_value(loss_fn, x + float(al) * d) for al in a],
                          dtype=torch.float64, device="cpu")
    return Slice1D(a, losses, loss_value(loss_fn, x))


def slice_2d(loss_fn: LossFn, x: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor,
             alphas: Sequence[float] | torch.Tensor,
             betas: Sequence[float] | torch.Tensor) -> Slice2D:
    """The 2-D slice ``(α, β) ↦ f(x + α d₁ + β d₂)`` (Li et al. 2018, contour plots).

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss.
        x: The centre ``[P]``.
        d1: First direction ``[P]``.
        d2: Second direction ``[P]``.
        alphas: Grid along ``d1``.
        betas: Grid along ``d2``.

    Returns:
        A :class:`Slice2D`; ``losses[i, j]`` is at ``(alphas[i], betas[j])``.
    """
    x = _point(x)
    d1, d2 = _like(d1, x, "d1"), _like(d2, x, "d2")
    a, b = _grid(alphas, "alphas"), _grid(betas, "betas")
    losses = torch.tensor([[loss_value(loss_fn, x + float(al) * d1 + float(be) * d2) for be in b]
                           for al in a], dtype=torch.float64, device="cpu")
    return Slice2D(a, b, losses, loss_value(loss_fn, x))


# ---------------------------------------------------------------------------------- paths
def _ts(points: int, ts: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    if ts is not None:
        return _grid(ts, "ts")
    return torch.linspace(0.0, 1.0, check_count("points", points, 2), dtype=torch.float64,
                          device="cpu")


def _segment(loss_fn: LossFn, x_a: torch.Tensor, x_b: torch.Tensor, t: torch.Tensor,
             f_a: float, f_b: float) -> Interpolation:
    losses = torch.tensor([loss_value(loss_fn, (1 - float(ti)) * x_a + float(ti) * x_b)
                           for ti in t], dtype=torch.float64, device="cpu")
    gaps = losses - ((1 - t) * f_a + t * f_b)
    inside = (t >= 0) & (t <= 1)
    if bool(inside.any()):
        g = torch.where(inside, gaps, torch.tensor(-torch.inf, dtype=torch.float64, device="cpu"))
        k = int(torch.argmax(g))
        barrier, barrier_t = float(gaps[k]), float(t[k])
    else:
        barrier, barrier_t = float("nan"), float("nan")
    return Interpolation(t, losses, gaps, barrier, barrier_t, f_a, f_b)


def interpolate(loss_fn: LossFn, x_a: torch.Tensor, x_b: torch.Tensor, *, points: int = 21,
                ts: Sequence[float] | torch.Tensor | None = None) -> Interpolation:
    """The loss along ``x_t = (1 − t) x_a + t x_b`` and its barrier.

    ``B = max_{t ∈ [0, 1]} f(x_t) − [(1 − t) f(x_a) + t f(x_b)]`` (linear mode connectivity:
    Frankle et al. 2020, ICML; Entezari et al. 2022, ICLR), taken over the grid. For a quadratic
    ``f`` with Hessian ``H`` the gap is exactly ``−t(1 − t)/2 · (x_b − x_a)ᵀ H (x_b − x_a)``.
    Goodfellow et al. 2015 extend the path to ``t ∈ [−0.5, 1.5]``: pass ``ts`` for that (the
    barrier still uses only ``t ∈ [0, 1]``).

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss.
        x_a: Start ``[P]`` (``t = 0``).
        x_b: End ``[P]`` (``t = 1``).
        points: Number of evenly spaced ``t`` in ``[0, 1]`` (ends included).
        ts: An explicit grid of ``t`` instead of ``points``.

    Returns:
        An :class:`Interpolation`.
    """
    x_a = _point(x_a, "x_a")
    x_b = _like(x_b, x_a, "x_b")
    t = _ts(points, ts)
    return _segment(loss_fn, x_a, x_b, t, loss_value(loss_fn, x_a), loss_value(loss_fn, x_b))


def _collect(pairs: list[tuple[int | None, int]], segs: list[Interpolation],
             t: torch.Tensor) -> Interpolations:
    return Interpolations(
        tuple(pairs), t,
        torch.stack([s.losses for s in segs]) if segs else torch.zeros(
            0, t.numel(), dtype=torch.float64, device="cpu"),
        torch.stack([s.gaps for s in segs]) if segs else torch.zeros(
            0, t.numel(), dtype=torch.float64, device="cpu"),
        torch.tensor([s.barrier for s in segs], dtype=torch.float64, device="cpu"),
        torch.tensor([s.loss_a for s in segs], dtype=torch.float64, device="cpu"),
        torch.tensor([s.loss_b for s in segs], dtype=torch.float64, device="cpu"),
    )


def _stack(X: torch.Tensor) -> torch.Tensor:  # noqa: N803
    X = check_x(X, "X")  # noqa: N806
    if X.dim() != 2:
        raise MeasureError(f"X must be a node stack [n, P], got shape {tuple(X.shape)}")
    return X


def node_to_node(loss_fn: LossFn, X: torch.Tensor, *,  # noqa: N803
                 pairs: Sequence[tuple[int, int]] | None = None, points: int = 21,
                 ts: Sequence[float] | torch.Tensor | None = None) -> Interpolations:
    """Linear interpolation between pairs of node models, ``(1 − t) x_i + t x_j``.

    See :func:`interpolate` for the barrier. The loss of each node is evaluated once.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss.
        X: Node models ``[n, P]``.
        pairs: ``(i, j)`` node pairs; default every pair ``i < j`` (``n(n − 1)/2`` segments of
            ``points`` evaluations each).
        points: Number of evenly spaced ``t`` in ``[0, 1]``.
        ts: An explicit grid of ``t``.

    Returns:
        :class:`Interpolations` with ``pairs`` ``(i, j)``.
    """
    X = _stack(X)  # noqa: N806
    n = X.shape[0]
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    checked = []
    for p in pairs:
        try:
            i, j = (int(v) for v in p)
        except (TypeError, ValueError):
            raise MeasureError(f"pairs must hold (i, j) node indices, got {p!r}") from None
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise MeasureError(f"pair {p!r} needs two different node indices in [0, {n})")
        checked.append((i, j))
    t = _ts(points, ts)
    f = {k: loss_value(loss_fn, X[k]) for k in sorted({v for p in checked for v in p})}
    segs = [_segment(loss_fn, X[i], X[j], t, f[i], f[j]) for i, j in checked]
    return _collect(checked, segs, t)


def node_to_average(loss_fn: LossFn, X: torch.Tensor, *,  # noqa: N803
                    points: int = 21, ts: Sequence[float] | torch.Tensor | None = None,
                    xbar: torch.Tensor | None = None) -> Interpolations:
    """Linear interpolation from the average to each node, ``x̄ + t (x_i − x̄)``.

    The decentralized slice of reference section 13.3: ``t = 0`` is ``x̄``, ``t = 1`` node ``i``;
    its curvature at ``t = 0`` is ``(x_i − x̄)ᵀ H (x_i − x̄)`` (derived). See :func:`interpolate`
    for the barrier.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss (for BatchNorm networks, built with the averaged
            buffers, the default of :func:`~flatlab.measures.model_loss`).
        X: Node models ``[n, P]``.
        points: Number of evenly spaced ``t`` in ``[0, 1]``.
        ts: An explicit grid of ``t``.
        xbar: The average to use instead of ``X.mean(0)``.

    Returns:
        :class:`Interpolations` with ``pairs`` ``(None, i)``.
    """
    X = _stack(X)  # noqa: N806
    xbar = X.mean(0) if xbar is None else _like(xbar, X[0], "xbar")
    t = _ts(points, ts)
    f_bar = loss_value(loss_fn, xbar)
    pairs: list[tuple[int | None, int]] = [(None, i) for i in range(X.shape[0])]
    segs = [_segment(loss_fn, xbar, X[i], t, f_bar, loss_value(loss_fn, X[i]))
            for i in range(X.shape[0])]
    return _collect(pairs, segs, t)
