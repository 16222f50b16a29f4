"""Tolerances of floating-point comparisons, derived from the dtype's machine epsilon.

Two evaluations of one computation by different but equally valid kernels (``vmap`` against a
loop over modules, a dense product against per-neighbour sums, one CPU's vector width against
another's) differ by rounding: about ``eps * scale`` per operation, where ``scale`` is the size of
the numbers involved, summed over the depth of the computation and amplified by its condition
number. A fixed absolute tolerance (``1e-5``) encodes one machine's rounding; here every
float32 tolerance is

    ``|actual - expected|_inf <= c * cond * eps(dtype) * scale``

with ``scale`` the magnitude of what is compared (for a trajectory: of the iterates, times the
number of steps), ``cond`` a condition factor where the computation is ill-conditioned (measured
in float64 by perturbing the inputs, :func:`conditioning`), and ``c`` an error budget justified
by measurement (:data:`C`). A real error (a wrong node's gradient, a missing term) is of the size
of ``scale`` itself, some ``1 / (c * cond * eps)`` (1e5 for ``cond = 1``) times beyond it.

Comparisons within one process that must be bit-exact (a resumed run against the uninterrupted
one) use ``torch.equal``, not this module.

Set ``FLATLAB_ULPS_LOG=FILE`` to append every measured ratio (``ulps``) to ``FILE``, one line
``test<TAB>what<TAB>ratio<TAB>budget`` each, to re-measure the margins on another machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

#: Error budget, in units of ``eps * scale`` (times ``cond``; per step for a trajectory), of two
#: evaluations of one computation. Measured worst cases on AMD EPYC (AVX2 kernels, and again with
#: ATEN_CPU_CAPABILITY=default, MKL_ENABLE_INSTRUCTIONS=SSE4_2 and one thread): vmap against the
#: loop 4.4 (gradients), 3.3 (VJPs), 4.1 (BatchNorm statistics), 3.3 (eval outputs), 1.1
#: (losses); distributed against simulated runs 4.7 per step (NGPD's final iterate), 0.9 per
#: step (metrics); distributed against simulated mixers 0.21 per step. 16 leaves a factor of 3.4.
C = 16

#: The largest condition factor :func:`conditioning` accepts: beyond it a float32 tolerance
#: (``C * cond * eps``, 2e-3 of the scale at this bound) no longer separates rounding from bugs by
#: orders of magnitude, or the point sits at a kink (a ReLU input within rounding of 0).
MAX_COND = 1000.0


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (the spacing of floats just above 1)."""
    return float(torch.finfo(dtype).eps)


def _tensors(x) -> Iterable[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _tensors(v)
    else:
        for v in x:
            yield from _tensors(v)


def magnitude(x) -> float:
    """``max |x|`` over a tensor, or over the tensors of a dict or a sequence."""
    return max((float(t.detach().abs().max()) for t in _tensors(x) if t.numel()), default=0.0)


def ulps(actual: torch.Tensor, expected: torch.Tensor, scale: float | torch.Tensor) -> float:
    """``|actual - expected|_inf`` in units of ``eps * scale`` (``eps`` of ``expected``'s dtype).

    ``scale`` is one number, or a tensor of per-entry scales (broadcast against ``expected``).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not expected.numel():
        return 0.0
    diff = (actual.detach().to(expected.dtype) - expected.detach()).abs()
    unit = eps(expected.dtype) * torch.as_tensor(scale, dtype=torch.float64)
    ratio = torch.where(diff == 0, 0.0, diff.double() / unit)  # 0 / 0: equal; d / 0: inf
    return float(ratio.max())


def conditioning(fn: Callable[..., Any], *args: Any, scale: float, draws: int = 4,
                 seed: int = 0) -> float:
    """How much ``fn`` amplifies rounding at ``args``: its condition factor, at least 1.

    The largest change of ``fn`` (in units of ``eps(float32) * scale``) when every entry of the
    floating tensors in ``args`` (tensors or dicts of them) is perturbed by a relative
    ``eps(float32)`` of random sign, as rounding them to float32 would, over ``draws`` draws.
    Evaluated in float64, so it is the same on every machine: a property of the computation at
    this point, not of a CPU.

    Raises:
        AssertionError: Above :data:`MAX_COND`: too ill-conditioned (or at a kink) for a float32
            comparison at this point to separate rounding from a bug.
    """
    gen = torch.Generator().manual_seed(seed)
    e = eps(torch.float32)

    def cast(x, perturb: bool):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.detach().double()
            if perturb:
                x = x * (1 + e * torch.randn(x.shape, generator=gen, dtype=x.dtype).sign())
            return x
        if isinstance(x, Mapping):
            return {k: cast(v, perturb) for k, v in x.items()}
        return x

    def flat(out) -> list[torch.Tensor]:
        return list(_tensors(out))

    exact = flat(fn(*(cast(a, False) for a in args)))
    cond = 1.0
    for _ in range(draws):
        moved = flat(fn(*(cast(a, True) for a in args)))
        diff = max(float((m - x).abs().max()) for m, x in zip(moved, exact, strict=True))
        cond = max(cond, diff / (e * scale))
    assert cond <= MAX_COND, (
        f"condition factor {cond:.3g} at this point (allowed {MAX_COND:g}): ill-conditioned "
        "or at a kink, a float32 comparison here cannot tell rounding from a bug")
    return cond


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *,
                 scale: float | torch.Tensor | None = None, c: float = C, cond: float = 1.0,
                 what: str = "") -> float:
    """Assert ``|actual - expected|_inf <= c * cond * eps * scale``; return the ratio in units of
    ``eps * scale``.

    Args:
        scale: The size of the numbers compared (default: ``magnitude(expected)``), or a tensor
            of per-entry sizes.
        c: The error budget (:data:`C` unless a comment justifies another).
        cond: The condition factor (:func:`conditioning`), 1 for well-conditioned computations.
        what: Named in the failure message.
    """
    if scale is None:
        scale = magnitude(expected)
    ratio = ulps(actual, expected, scale)
    _log(what, ratio, c * cond)
    size = f"scale {scale:.3g}" if isinstance(scale, float | int) else "per-entry scales"
    assert ratio <= c * cond, (
        f"{what}: |actual - expected| reaches {ratio:.3g} eps x scale ({size}, eps "
        f"{eps(expected.dtype):.3g}); allowed {c:g}" +
        (f" x condition {cond:.3g}" if cond != 1.0 else ""))
    return ratio


def _log(what: str, ratio: float, budget: float) -> None:
    path = os.environ.get("FLATLAB_ULPS_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as f:
            f.write(f"{test}\t{what}\t{ratio:.4g}\t{budget:.4g}\n")
