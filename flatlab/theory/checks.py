"""Checks of the numbers a calculator takes: finite, of the right sign, in the right interval.

Every theory calculator checks its inputs here, so NaN, infinities, booleans and strings are
refused in one :class:`~flatlab.errors.TheoryError` line naming the input, and never turn into a
NaN result.
"""

from __future__ import annotations

import math
from typing import Any

from flatlab.errors import TheoryError

__all__ = ["finite", "positive", "unit_interval", "doubly_stochastic"]


def doubly_stochastic(what: str, topology: Any) -> None:
    """Refuse a column-stochastic schedule (push-sum weights) where a formula needs ``W 1 = 1``.

    ``topology`` is a :class:`~flatlab.topology.Topology` or a spectral summary (anything with a
    ``stochastic`` attribute); other inputs pass.
    """
    if getattr(topology, "stochastic", "doubly") == "column":
        name = getattr(topology, "label", None) or getattr(topology, "topology", "this topology")
        raise TheoryError(f"{what} is derived for doubly stochastic W and does not apply to the "
                          f"column-stochastic (push-sum) {name}; flatlab.theory.spectral "
                          "summarises it")


def finite(name: str, value: Any) -> float:
    """``value`` as a float; refused unless it is a finite real number (not a bool)."""
    if isinstance(value, bool):
        raise TheoryError(f"{name} must be a number (got {value!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TheoryError(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(v):
        raise TheoryError(f"{name} must be a finite number (got {value!r})")
    return v


def positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    v = finite(name, value)
    if not (v >= 0 if allow_zero else v > 0):
        raise TheoryError(f"{name} must be {'>= 0' if allow_zero else '> 0'} (got {value!r})")
    return v


def unit_interval(name: str, value: Any, closed_right: bool = False) -> float:
    """A finite number in ``[0, 1)`` (or ``(0, 1]`` with ``closed_right``)."""
    v = positive(name, value, allow_zero=not closed_right)
    if (v > 1) if closed_right else (v >= 1):
        raise TheoryError(f"{name} must be in {'(0, 1]' if closed_right else '[0, 1)'} "
                          f"(got {value!r})")
    return v
