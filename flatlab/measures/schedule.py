"""When a run measures and what: the measurement schedule (DESIGN.md section 5).

A run measures at step 0, every ``measure.every`` steps and at its last step. Each named measure
may thin itself with its own ``every`` (a multiple of the run's): it is *due* at step 0, at the
last step and at multiples of its own period. :func:`measure` computes the due measures at one
iterate, in two parts so that a distributed run computes each quantity once:

- the ``nodes`` parts on every process, on its own node models (they may communicate);
- the ``average`` parts on ``x̄``, once, on rank 0, through ``alone`` (which lets the other
  processes wait watchfully instead of inside a collective).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flatlab.engine.precision import full_float32
from flatlab.measures import named

__all__ = ["Schedule", "scheduled", "measure"]

#: Runs ``fn()`` on rank 0 (``label`` says what for); the identity in a one-process run.
Alone = Callable[[str, Callable[[], Any]], Any]


def scheduled(metrics: Sequence[str],
              options: Mapping[str, Mapping[str, Any]] | None = None,
              every: int | None = None) -> dict[str, dict[str, Any]]:
    """The named measures of a run with their resolved settings (what ``measures.json`` holds).

    ``comm_bytes`` is always measured, first; the others follow in the order given. A measure
    that thins itself by default (:attr:`NamedMeasure.thin <flatlab.measures.named.NamedMeasure>`
    > 1, the expensive curvature of the mechanism) and is given no ``every`` of its own gets
    ``every = thin × every`` (the run's period), so ``measures.json`` records its real period.
    """
    options = options or {}
    out = {}
    for name in ["comm_bytes", *(m for m in metrics if m != "comm_bytes")]:
        s = named.resolve(name, options.get(name))
        if s["every"] is None and every is not None and named.get(name).thin > 1:
            s["every"] = named.get(name).thin * every
        out[name] = s
    return out


@dataclass(frozen=True)
class Schedule:
    """A run's measurement schedule.

    Attributes:
        measures: ``{name: resolved settings}`` (:func:`scheduled`).
        every: The run's measurement period in steps.
        total: The run's last step.
    """

    measures: dict[str, dict[str, Any]]
    every: int
    total: int

    def is_step(self, step: int) -> bool:
        """Whether the run measures at ``step`` (0, multiples of ``every``, the last step)."""
        return step % self.every == 0 or step == self.total

    def due(self, step: int) -> dict[str, dict[str, Any]]:
        """The measures due at a measurement ``step``, with their settings."""
        return {name: s for name, s in self.measures.items()
                if step == 0 or step == self.total or step % (s["every"] or 1) == 0}


def measure(ctx: named.MeasureContext, due: Mapping[str, Mapping[str, Any]], *,
            alone: Alone | None = None, timings: dict[str, float] | None = None,
            announce: Callable[[str], None] | None = None) -> list[named.Row]:
    """The ``due`` measures at ``ctx``'s iterate: ``(metric, scope, value)`` rows.

    Every process computes the node parts (communicating as they need); rank 0 then computes the
    parts on the averaged model through ``alone``. The rows are complete on rank 0 only (the
    node parts' rows are gathered there by the measures themselves). Extra tables (spectral
    densities, landscapes) are left in ``ctx.tables``. The seconds each measure took (both
    parts) are added to ``timings[name]`` when it is given; ``announce(name)`` is called as
    each starts (a progress bar shows it).
    """
    with full_float32():  # a GPU's TF32 would round the curvature to 10 mantissa bits
        return _measure(ctx, due, alone=alone, timings=timings, announce=announce)


def _measure(ctx: named.MeasureContext, due: Mapping[str, Mapping[str, Any]], *,
             alone: Alone | None, timings: dict[str, float] | None,
             announce: Callable[[str], None] | None) -> list[named.Row]:
    """:func:`measure`, inside :func:`~flatlab.engine.precision.full_float32`."""
    rows: list[named.Row] = []
    clock = timings if timings is not None else {}

    def timed(name: str, part: Any, s: Mapping[str, Any]) -> list[named.Row]:
        if announce is not None:
            announce(name)
        t0 = time.perf_counter()
        try:
            return part(ctx, s)
        finally:
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0

    for name, s in due.items():
        part = named.get(name).nodes
        if part is not None:
            rows += timed(name, part, s)

    def on_average() -> list[named.Row]:
        out: list[named.Row] = []
        ctx.top_wanted = named.top_wanted(ctx, due)  # one eigensolve at x̄ for all that want it
        for name, s in due.items():
            part = named.get(name).average
            if part is not None:
                out += timed(name, part, s)
        return out

    if any(named.get(name).average is not None for name in due):
        rows += (alone or (lambda label, fn: fn()))(
            f"measuring the averaged model at step {ctx.step}", on_average) or []
    return rows
