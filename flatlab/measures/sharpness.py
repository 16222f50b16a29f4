"""Sharpness of a loss at a point: worst-case, one-step (SAM), average-case and Keskar's.

Every measure takes ``loss_fn`` (``x`` ``[P]`` ↦ scalar loss on a fixed evaluation set) and a
point ``x`` ``[P]``, or a stack of node models ``X`` ``[n, P]``; the stack is measured one row after
another with the same ``loss_fn`` (a loop, not a ``vmap``), and the per-model fields of the result
become ``[n]`` (or ``[n, P]``) tensors.

Perturbations live in a scaled ball ``{δ : ‖δ ⊘ c‖_p ≤ ρ}``. Plain sharpness has ``c = 1``;
adaptive sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023) has ``c = |x| + η``,
which makes it invariant to the rescalings of ReLU layers that leave the function unchanged
(Dinh et al. 2017). The measures work in the scaled coordinates ``u = δ ⊘ c`` (``δ = c ⊙ u``,
``‖u‖_p ≤ ρ``): the gradient in ``u`` is ``c ⊙ ∇f``, the projection is the plain Euclidean or box
projection, and nothing is divided by ``c`` (zero weights are simply not perturbed when
``η = 0``).

Differences ``f(x + δ) − f(x)`` are taken in double precision from losses computed in the model's
dtype; with float32 models, values much below ``1e-6 · f(x)`` are rounding noise. Reference:
docs/reference/measures.md sections 8, 9 and 15.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flatlab.errors import MeasureError
from flatlab.measures.base import (
    LossFn,
    check_count,
    check_x,
    loss_value,
    loss_value_and_grad,
)
from flatlab.seeds import seed_for

__all__ = [
    "WorstCaseSharpness",
    "SamSharpness",
    "AverageSharpness",
    "KeskarSharpness",
    "sharpness_worst",
    "sharpness_sam",
    "sharpness_average",
    "sharpness_keskar",
]

#: Defaults shared by these functions and the run measures of the same names
#: (``flatlab.measures.named``), so that a number computed in a notebook and one scheduled in a
#: run mean the same thing unless a setting says otherwise.
RHO = 0.05
SIGMA = 0.01
SAMPLES = 50
KESKAR_EPS = 1e-3
STEPS = 20

_NORMS = ("l2", "linf")


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class WorstCaseSharpness:
    """``max_{‖δ ⊘ c‖_p ≤ ρ} f(x + δ) − f(x)``, as found by projected gradient ascent.

    For a stack ``X`` ``[n, P]`` the per-model fields are ``[n]`` float64 tensors (``delta``
    ``[n, P]``); the settings stay scalars.

    Attributes:
        value: ``f(x + δ) − f(x)`` at the best ``δ`` visited (a lower bound on the maximum;
            never below 0, since ``δ = 0`` is feasible).
        loss: ``f(x)``.
        perturbed_loss: ``f(x + δ)``.
        delta_norm: ``‖δ ⊘ c‖_p`` (``≤ rho``).
        delta: The perturbation ``δ`` ``[P]``.
        rho: Radius of the ball.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: Whether ``c = |x| + eta`` (else ``c = 1`` or the given ``scale``).
        eta: The additive constant of the adaptive scale.
        steps: Number of ascent steps (one gradient each).
        step_size: Initial step size in the scaled coordinates (halved after a failed step).
        seed: Seed of the random start.
    """

    value: float | torch.Tensor
    loss: float | torch.Tensor
    perturbed_loss: float | torch.Tensor
    delta_norm: float | torch.Tensor
    delta: torch.Tensor
    rho: float
    norm: str
    adaptive: bool
    eta: float
    steps: int
    step_size: float
    seed: int

    _PER_MODEL: ClassVar[tuple[str, ...]] = ("value", "loss", "perturbed_loss", "delta_norm",
                                             "delta")


@dataclass(frozen=True)
class SamSharpness:
    """One-step first-order sharpness ``f(x + δ̂) − f(x)`` (SAM; ASAM when adaptive).

    Attributes:
        value: ``f(x + δ̂) − f(x)``; 0 when the scaled gradient vanishes (``δ̂ = 0``).
        loss: ``f(x)``.
        perturbed_loss: ``f(x + δ̂)``.
        grad_norm: ``‖∇f(x)‖₂`` (unscaled).
        delta: ``δ̂ = ρ c² ⊙ g / ‖c ⊙ g‖₂`` ``[P]``.
        rho: Radius.
        adaptive: Whether ``c = |x| + eta``.
        eta: The additive constant of the adaptive scale.
    """

    value: float | torch.Tensor
    loss: float | torch.Tensor
    perturbed_loss: float | torch.Tensor
    grad_norm: float | torch.Tensor
    delta: torch.Tensor
    rho: float
    adaptive: bool
    eta: float

    _PER_MODEL: ClassVar[tuple[str, ...]] = ("value", "loss", "perturbed_loss", "grad_norm",
                                             "delta")


@dataclass(frozen=True)
class AverageSharpness:
    """Average-case sharpness ``E_{z ~ N(0, I)} f(x + σ c ⊙ z) − f(x)``, by Monte Carlo.

    Attributes:
        value: The sample mean of ``f(x + σ c ⊙ z_k) − f(x)`` (of the antithetic pair means
            ``½[f(x + σ c ⊙ z_k) + f(x − σ c ⊙ z_k)] − f(x)`` when ``antithetic``).
        stderr: Its standard error, ``std_k / √samples`` (sample standard deviation).
        loss: ``f(x)``.
        sigma: Standard deviation ``σ`` of the noise (relative to ``c``).
        adaptive: Whether ``c = |x| + eta``.
        eta: The additive constant of the adaptive scale.
        samples: Number of draws ``z_k``.
        antithetic: Whether each draw is also evaluated at ``−z_k``.
        seed: Seed of the draws (the same draws for every model of a stack).
    """

    value: float | torch.Tensor
    stderr: float | torch.Tensor
    loss: float | torch.Tensor
    sigma: float
    adaptive: bool
    eta: float
    samples: int
    antithetic: bool
    seed: int

    _PER_MODEL: ClassVar[tuple[str, ...]] = ("value", "stderr", "loss")


@dataclass(frozen=True)
class KeskarSharpness:
    """Keskar et al.'s ε-sharpness, in percent.

    Attributes:
        value: ``100 · [max_{δ ∈ C_ε} f(x + δ) − f(x)] / (1 + f(x))``.
        increase: ``max_{δ ∈ C_ε} f(x + δ) − f(x)`` (as found by the ascent).
        loss: ``f(x)``.
        perturbed_loss: ``f(x + δ)``.
        delta: The maximizing ``δ`` ``[P]``, in ``C_ε = {|δ_i| ≤ ε (|x_i| + 1)}``.
        eps: ``ε``.
        steps: Number of ascent steps.
        seed: Seed of the random start.
    """

    value: float | torch.Tensor
    increase: float | torch.Tensor
    loss: float | torch.Tensor
    perturbed_loss: float | torch.Tensor
    delta: torch.Tensor
    eps: float
    steps: int
    seed: int

    _PER_MODEL: ClassVar[tuple[str, ...]] = ("value", "increase", "loss", "perturbed_loss",
                                             "delta")


# ---------------------------------------------------------------------------------- helpers
def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MeasureError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise MeasureError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _nonnegative(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MeasureError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise MeasureError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _scale(x: torch.Tensor, adaptive: bool, eta: float,
           scale: float | torch.Tensor | None) -> torch.Tensor:
    """The per-coordinate scale ``c`` of the perturbation ball, shaped like ``x`` ``[P]``."""
    if scale is not None:
        if adaptive:
            raise MeasureError("give either adaptive=True or an explicit scale, not both")
        c = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        if c.dim() > 0 and tuple(c.shape) != tuple(x.shape):
            raise MeasureError(f"scale must be a number or a tensor shaped like x "
                               f"{tuple(x.shape)}, got {tuple(c.shape)}")
        if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
            raise MeasureError("scale must be finite and >= 0")
        return c.expand_as(x)
    if adaptive:
        return x.abs() + eta
    return torch.ones_like(x)


def _batched(single: Callable[..., Any], cls: type, x: torch.Tensor,
             scale: float | torch.Tensor | None = None, **kw: Any) -> Any:
    """Run ``single`` on ``x`` ``[P]``, or on each row of ``x`` ``[n, P]`` and stack."""
    if x.dim() == 1:
        return single(x, scale=scale, **kw)
    per_row = isinstance(scale, torch.Tensor) and scale.dim() == 2
    if per_row and tuple(scale.shape) != tuple(x.shape):
        raise MeasureError(f"scale must be shaped like x {tuple(x.shape)} or [P], got "
                           f"{tuple(scale.shape)}")
    rows = [single(x[i], scale=scale[i] if per_row else scale, **kw) for i in range(x.shape[0])]
    fields = {}
    for f in dataclasses.fields(cls):
        items = [getattr(r, f.name) for r in rows]
        if f.name not in cls._PER_MODEL:
            fields[f.name] = items[0]
        elif isinstance(items[0], torch.Tensor):
            fields[f.name] = torch.stack(items)
        else:
            fields[f.name] = torch.tensor(items, dtype=torch.float64, device="cpu")
    return cls(**fields)


def _project(u: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    """Euclidean projection onto ``{‖u‖_p ≤ ρ}``."""
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u * (rho / n) if n > rho else u


def _ascent_direction(gu: torch.Tensor, norm: str) -> torch.Tensor | None:
    """Steepest-ascent direction of unit ``p``-norm: ``g/‖g‖₂`` (l2) or ``sign(g)`` (linf)."""
    if not bool(torch.isfinite(gu).all()):
        return None
    if norm == "linf":
        d = torch.sign(gu)
        return d if bool(d.any()) else None
    n = float(gu.norm())
    return gu / n if n > 0 else None


def _random_start(x: torch.Tensor, rho: float, norm: str, seed: int) -> torch.Tensor:
    """A point drawn uniformly in ``{‖u‖_p ≤ ρ}`` (seeded; reproducible per device)."""
    gen = torch.Generator(device=x.device).manual_seed(seed_for(seed, "sharpness"))
    if norm == "linf":
        return rho * (2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1)
    z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    r = float(torch.rand((), generator=gen, device=x.device, dtype=torch.float64))
    return z * (rho * r ** (1.0 / x.numel()) / float(z.norm()))


def _ascend(loss_fn: LossFn, x: torch.Tensor, c: torch.Tensor, *, rho: float, norm: str,
            steps: int, step_size: float, seed: int,
            random_start: bool) -> tuple[float, float, torch.Tensor]:
    """Maximize ``f(x + c ⊙ u)`` over ``‖u‖_p ≤ ρ``; returns ``(f(x), f(x + c ⊙ u*), u*)``."""
    f0 = loss_value(loss_fn, x)
    u = _random_start(x, rho, norm, seed) if random_start else torch.zeros_like(x)
    fu, g = loss_value_and_grad(loss_fn, x + c * u)
    gu = c * g
    eta = step_size
    for _ in range(steps):
        d = _ascent_direction(gu, norm)
        if d is None:
            break
        u_new = _project(u + eta * d, rho, norm)
        f_new, g_new = loss_value_and_grad(loss_fn, x + c * u_new)
        if f_new > fu:
            u, fu, gu = u_new, f_new, c * g_new
        else:
            eta = eta / 2
    if not fu >= f0:  # δ = 0 is feasible: never report less than f(x) (nor a NaN)
        u, fu = torch.zeros_like(x), f0
    return f0, fu, u


# ---------------------------------------------------------------------------------- measures
def sharpness_worst(loss_fn: LossFn, x: torch.Tensor, *, rho: float = RHO, norm: str = "l2",
                    adaptive: bool = False, eta: float = 0.0, steps: int = STEPS,
                    step_size: float | None = None, seed: int = 0,
                    scale: float | torch.Tensor | None = None,
                    random_start: bool = True) -> WorstCaseSharpness:
    """Worst-case (adaptive) sharpness by projected gradient ascent.

    ``S_max^ρ(x) = max_{‖δ ⊘ c‖_p ≤ ρ} f(x + δ) − f(x)``, with ``c = 1`` (plain) or
    ``c = |x| + η`` (adaptive): Andriushchenko et al. 2023, "A modern look at the relationship
    between sharpness and generalization" (ICML), their ``S_max`` with ``c = |w|``; the adaptive
    ball is ASAM's ``‖T_x⁻¹ δ‖_p ≤ ρ`` with ``T_x = diag(|x|) + ηI`` (Kwon et al. 2021, ICML).
    Here on the full evaluation set of ``loss_fn`` (not averaged over batches of size ``m``).

    The maximization runs in ``u = δ ⊘ c``: from a random point of the ball, each step is
    ``u ← Π(u + α · d)`` with ``d = ∇_u/‖∇_u‖₂`` (l2) or ``sign(∇_u)`` (linf) and ``Π`` the
    projection; a step that does not raise the loss is discarded and ``α`` halved (initial
    ``α = 2ρ``, the Auto-PGD initial step of Croce & Hein 2020 used by Andriushchenko et al.). The
    result is the best point visited, so it is a lower bound on the maximum; on a quadratic at
    its minimum it reaches ``(ρ²/2) λ_max(H)`` (l2; a shifted power iteration).

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss, differentiable in ``x`` (an objective of
            :func:`~flatlab.measures.model_loss` is differentiated chunk by chunk).
        x: The point ``[P]``, or node models ``[n, P]`` (measured one after another).
        rho: Radius ``ρ > 0`` (in units of ``c``); default :data:`RHO`, as the run measure.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: Use ``c = |x| + eta``.
        eta: The additive constant of the adaptive scale (Andriushchenko et al.: 0; ASAM: 0.01).
        steps: Number of ascent steps (one gradient each); ``steps + 2`` loss evaluations.
        step_size: Initial step ``α`` in the scaled coordinates; default ``2ρ``.
        seed: Seed of the random start (the same start for every row of a stack).
        scale: An explicit scale ``c`` (a number, ``[P]``, or ``[n, P]`` for a stack) instead of
            ``adaptive``.
        random_start: Start from a uniform point of the ball (else from ``δ = 0``, where a zero
            gradient stops the ascent at once).

    Returns:
        A :class:`WorstCaseSharpness`.
    """
    x = check_x(x)
    rho = _positive("rho", rho)
    if norm not in _NORMS:
        raise MeasureError(f"norm {norm!r} is unknown; accepted: {', '.join(_NORMS)}")
    eta = _nonnegative("eta", eta)
    steps = check_count("steps", steps, 0)
    alpha = 2 * rho if step_size is None else _positive("step_size", step_size)

    def one(xi: torch.Tensor, scale: Any) -> WorstCaseSharpness:
        c = _scale(xi, adaptive, eta, scale)
        f0, fu, u = _ascend(loss_fn, xi, c, rho=rho, norm=norm, steps=steps, step_size=alpha,
                            seed=seed, random_start=random_start)
        un = float(u.abs().max()) if norm == "linf" else float(u.norm())
        return WorstCaseSharpness(fu - f0, f0, fu, un, c * u, rho, norm, bool(adaptive), eta,
                                  steps, alpha, int(seed))

    return _batched(one, WorstCaseSharpness, x, scale=scale)


def sharpness_sam(loss_fn: LossFn, x: torch.Tensor, *, rho: float = RHO, adaptive: bool = False,
                  eta: float = 0.0) -> SamSharpness:
    """One-step (first-order ascent) sharpness, as SAM and ASAM perturb.

    ``δ̂ = ρ c² ⊙ g / ‖c ⊙ g‖₂`` with ``g = ∇f(x)`` — the maximizer of the linearization
    ``gᵀδ`` over ``‖δ ⊘ c‖₂ ≤ ρ`` — and ``S_SAM = f(x + δ̂) − f(x)``. Plain (``c = 1``):
    ``δ̂ = ρ g/‖g‖`` (Foret et al. 2021, SAM); adaptive (``c = |x| + η``): ASAM's
    ``ρ T² g/‖T g‖`` (Kwon et al. 2021). Second order: ``S_SAM ≈ ρ‖g‖ + (ρ²/2) ĝᵀHĝ`` (exact on
    a quadratic). Near a minimum ``g`` is small and noisy and this underestimates the worst case
    (reference section 8.2); use :func:`sharpness_worst` to measure.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss, differentiable in ``x``.
        x: The point ``[P]``, or node models ``[n, P]`` (measured one after another).
        rho: Radius ``ρ > 0``; default :data:`RHO`, as the run measure.
        adaptive: Use ``c = |x| + eta``.
        eta: The additive constant of the adaptive scale (ASAM: 0.01).

    Returns:
        A :class:`SamSharpness`.
    """
    x = check_x(x)
    rho = _positive("rho", rho)
    eta = _nonnegative("eta", eta)

    def one(xi: torch.Tensor, scale: Any) -> SamSharpness:
        c = _scale(xi, adaptive, eta, scale)
        f0, g = loss_value_and_grad(loss_fn, xi)
        cg = c * g
        n = float(cg.norm())
        delta = cg * c * (rho / n) if n > 0 and math.isfinite(n) else torch.zeros_like(xi)
        fp = loss_value(loss_fn, xi + delta) if n > 0 else f0
        return SamSharpness(fp - f0, f0, fp, float(g.norm()), delta, rho, bool(adaptive), eta)

    return _batched(one, SamSharpness, x)


def sharpness_average(loss_fn: LossFn, x: torch.Tensor, *, sigma: float = SIGMA,
                      adaptive: bool = False, eta: float = 0.0, samples: int = SAMPLES,
                      seed: int = 0, antithetic: bool = False,
                      scale: float | torch.Tensor | None = None) -> AverageSharpness:
    """Average-case (Gaussian) sharpness by Monte Carlo, with its standard error.

    ``S_avg^σ(x) = E_{δ ~ N(0, σ² diag(c²))} f(x + δ) − f(x)`` (Andriushchenko et al. 2023,
    average-case sharpness; ``c = |x| + η`` when adaptive). Second order:
    ``S_avg ≈ (σ²/2) tr(diag(c) H diag(c))``, i.e. ``(σ²/2) tr(H)`` when plain (reference
    sections 8.5 and 9). With ``antithetic=True`` each draw ``z`` is paired with ``−z``, which
    cancels the first-order term ``σ gᵀ(c ⊙ z)`` and so removes most of the variance away from a
    minimum.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss (no gradient needed).
        x: The point ``[P]``, or node models ``[n, P]`` (measured one after another, with the
            same draws: common random numbers).
        sigma: Standard deviation ``σ > 0`` of the noise, in units of ``c``; default
            :data:`SIGMA`, as the run measure.
        adaptive: Use ``c = |x| + eta``.
        eta: The additive constant of the adaptive scale.
        samples: Number of draws (``≥ 2``); ``2 · samples`` evaluations when ``antithetic``;
            default :data:`SAMPLES`, as the run measure.
        seed: Seed of the draws (reproducible per device).
        antithetic: Evaluate each draw at ``±z``.
        scale: An explicit scale ``c`` (a number, ``[P]``, or ``[n, P]``) instead of
            ``adaptive``.

    Returns:
        An :class:`AverageSharpness`.
    """
    x = check_x(x)
    sigma = _positive("sigma", sigma)
    eta = _nonnegative("eta", eta)
    samples = check_count("samples", samples, 2)

    def one(xi: torch.Tensor, scale: Any) -> AverageSharpness:
        c = _scale(xi, adaptive, eta, scale)
        f0 = loss_value(loss_fn, xi)
        gen = torch.Generator(device=xi.device).manual_seed(seed_for(seed, "sharpness"))
        diffs = []
        for _ in range(samples):
            d = sigma * c * torch.randn(xi.shape, generator=gen, device=xi.device,
                                        dtype=xi.dtype)
            f = loss_value(loss_fn, xi + d)
            if antithetic:
                f = 0.5 * (f + loss_value(loss_fn, xi - d))
            diffs.append(f - f0)
        t = torch.tensor(diffs, dtype=torch.float64, device="cpu")
        return AverageSharpness(float(t.mean()), float(t.std() / math.sqrt(samples)), f0, sigma,
                                bool(adaptive), eta, samples, bool(antithetic), int(seed))

    return _batched(one, AverageSharpness, x, scale=scale)


def sharpness_keskar(loss_fn: LossFn, x: torch.Tensor, *, eps: float = KESKAR_EPS,
                     steps: int = STEPS,
                     step_size: float | None = None, seed: int = 0) -> KeskarSharpness:
    """Keskar et al.'s ε-sharpness in the full space (``A = I``), in percent.

    ``φ_x(ε) = 100 · [max_{δ ∈ C_ε} f(x + δ) − f(x)] / (1 + f(x))`` with the box
    ``C_ε = {δ : |δ_i| ≤ ε (|x_i| + 1)}`` (Keskar et al. 2017, "On large-batch training for deep
    learning: generalization gap and sharp minima", ICLR; ``ε ∈ {1e-3, 5e-4}`` there).
    The paper maximizes with 10 iterations of L-BFGS-B; here the box is the ``linf`` ball of
    :func:`sharpness_worst` with ``c = |x| + 1`` and radius ``ε``, maximized by projected sign
    ascent. Keskar's random-subspace variant (``A`` ``n × p``) is not provided.

    Args:
        loss_fn: ``x`` ``[P]`` ↦ scalar loss, differentiable in ``x``.
        x: The point ``[P]``, or node models ``[n, P]`` (measured one after another).
        eps: ``ε > 0``.
        steps: Number of ascent steps.
        step_size: Initial step in units of ``|x_i| + 1``; default ``2ε``.
        seed: Seed of the random start in the box.

    Returns:
        A :class:`KeskarSharpness`.
    """
    x = check_x(x)
    eps = _positive("eps", eps)
    steps = check_count("steps", steps, 0)
    alpha = 2 * eps if step_size is None else _positive("step_size", step_size)

    def one(xi: torch.Tensor, scale: Any) -> KeskarSharpness:
        c = xi.abs() + 1
        f0, fu, u = _ascend(loss_fn, xi, c, rho=eps, norm="linf", steps=steps,
                            step_size=alpha, seed=seed, random_start=True)
        return KeskarSharpness(100 * (fu - f0) / (1 + f0), fu - f0, f0, fu, c * u, eps, steps,
                               int(seed))

    return _batched(one, KeskarSharpness, x)
