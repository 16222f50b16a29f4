"""The training loop: it steps an algorithm and calls hooks, and touches no files or processes.

::

    for t = start, ..., total - 1:
        state = algorithm.step(state, sampler.batch(t), oracle, mixer, lr(t))
        loss  = (1/n) sum_i loss_i          the network's mean batch loss of step t
        for hook in hooks: hook.on_step(loop)     any hook may end the run with an Outcome

Everything else a run does is a :class:`Hook`: measuring, divergence checks, checkpoints, the
status file, the progress bar, logging (:mod:`flatlab.experiment.hooks` holds the runner's).
Hooks are called in the order given; the loop itself only communicates to average the batch
loss over processes (through the collective group, the mixer in a run).

A notebook can drive the same loop on a built run::

    cfg = flatlab.experiment.load_config("configs/ring16.yaml", ["train.steps=60"])
    run = flatlab.experiment.build(cfg)
    state = run.algorithm.init(run.stack.initial_params(), run.oracle, run.mixer)
    state, outcome = train(run.algorithm, state, run.sampler, run.oracle, run.mixer, run.lr,
                           [MyLogger()], total=run.total_steps)

Outcomes a hook may return: ``"done"`` ends the run early with its results (in a run: measured,
checkpointed and marked done at that step), ``"diverged"`` ends it as diverged, ``"stopped"``
leaves it as a kill would (resumable from its last checkpoint; nothing after it is kept).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flatlab.algorithms.base import hold
from flatlab.engine.oracle import DelayedGradients, SkippingOracle
from flatlab.errors import FlatlabError

__all__ = ["Loop", "Outcome", "Hook", "train", "network_mean"]

#: How a loop ended: all steps done, a hook saw divergence, or a hook stopped it early.
OUTCOMES = ("done", "diverged", "stopped")


@dataclass
class Loop:
    """What hooks see: where the loop is and the current iterate.

    Attributes:
        step: Steps done (``state`` is the iterate after ``step`` steps).
        total: The last step.
        state: The algorithm state (``state.x`` is this process's ``[k, P]`` node models).
        batch_loss: The network's mean batch loss of the last step, a 0-d float64 tensor on the
            run's device (reading it costs no wait for the device); ``None`` before the first
            step and for algorithms that report no loss.
        start: The step the loop started from (0, or the step of a resumed checkpoint).
    """

    step: int
    total: int
    state: Any
    batch_loss: torch.Tensor | None = None
    start: int = 0
    _read: tuple[torch.Tensor, float] | None = field(default=None, repr=False)

    @property
    def loss(self) -> float | None:
        """``batch_loss`` as a number (on a GPU the first read of a step waits for the step)."""
        if self.batch_loss is None:
            return None
        if self._read is None or self._read[0] is not self.batch_loss:
            self._read = (self.batch_loss, float(self.batch_loss))
        return self._read[1]


@dataclass(frozen=True)
class Outcome:
    """How a loop ended: ``status`` (one of :data:`OUTCOMES`), the step, and why.

    Raises:
        FlatlabError: An unknown status.
    """

    status: str
    step: int
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in OUTCOMES:
            raise FlatlabError(f"outcome {self.status!r} is unknown; accepted: "
                               f"{', '.join(OUTCOMES)}")


class Hook:
    """A loop callback; every method is optional (the defaults do nothing).

    ``on_start`` and ``on_step`` may return an :class:`Outcome` to end the loop; ``on_end`` then
    runs on every hook with it. ``on_close`` runs on every hook however the loop ends (also on
    an exception), to release what the hook holds.

    What a hook shares with the others goes through the run's record
    (:class:`flatlab.experiment.hooks.Record`), and each hook declares which of its fields it
    touches within a step, so that the runner can check their order
    (:func:`flatlab.experiment.hooks.check_order`): ``writes``, the fields it changes;
    ``reads``, those it needs as this step's other hooks left them (their writers come first);
    ``reads_before``, those it needs before this step's other hooks change them (their writers
    come after). A hook that declares nothing is placed freely.
    """

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    reads_before: frozenset[str] = frozenset()

    def on_start(self, loop: Loop) -> Outcome | None:
        """Before the first step (``loop.step == loop.start``)."""
        return None

    def on_step(self, loop: Loop) -> Outcome | None:
        """After every step."""
        return None

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """After the loop ended with ``outcome``."""

    def on_close(self) -> None:
        """Last, always."""


def network_mean(values: torch.Tensor, group: Any) -> torch.Tensor:
    """``(1/n) sum_i values_i`` over the nodes of every process (one all-reduce when several).

    ``values`` holds this process's ``k`` nodes; ``group`` has ``world_size`` and ``all_reduce``
    (a mixer), and every process holds the same number of nodes. The mean is a 0-d float64
    tensor on the device of ``values``: nothing waits for the device until it is read.
    """
    if group is None or group.world_size == 1:
        return values.mean().double()
    n = values.shape[0] * group.world_size
    return group.all_reduce(values.sum().reshape(1))[0].double() / n


def train(algorithm: Any, state: Any, sampler: Any, oracle: Any, mixer: Any,
          lr: Callable[[int], float] | float, hooks: Sequence[Hook] = (), *, total: int,
          start: int = 0, group: Any = None,
          offline: Callable[[int], torch.Tensor] | None = None,
          straggling: Callable[[int], torch.Tensor] | None = None,
          delayed: DelayedGradients | None = None) -> tuple[Any, Outcome]:
    """Run ``algorithm`` from ``state`` at step ``start`` to ``total``, calling ``hooks``.

    Args:
        algorithm: An algorithm of :mod:`flatlab.algorithms` (``step``).
        state: Its state after ``start`` steps.
        sampler: ``batch(t)`` gives step ``t``'s per-node minibatches.
        oracle: The gradient oracle.
        mixer: The gossip mixer.
        lr: The step size at step ``t`` (a built run's ``run.lr``), or a constant.
        hooks: Called in this order.
        total: The last step.
        start: Steps already done.
        group: The collective group over processes (default: ``mixer``).
        offline: Node churn: ``offline(t)`` gives step ``t``'s offline nodes among this
            process's (booleans); they keep their whole state (:func:`flatlab.algorithms.hold`).
        straggling: Stragglers: ``straggling(t)`` gives the nodes that miss step ``t``'s
            gradient; the step sees :class:`~flatlab.engine.oracle.SkippingOracle`.
        delayed: Stale gradients (``train.staleness``): the step's oracle answers at the
            points of earlier steps (:class:`~flatlab.engine.oracle.DelayedGradients`).

    Returns:
        The final state and the :class:`Outcome`. A non-finite loss ends the loop only through a
        hook (:class:`~flatlab.experiment.hooks.Divergence`); without one the loop runs on.
    """
    group = mixer if group is None else group
    if not callable(lr):
        rate = float(lr)

        def lr(t: int) -> float:
            return rate
    loop = Loop(step=start, total=total, state=state, start=start)
    try:
        outcome = _first(hooks, lambda h: h.on_start(loop))
        while outcome is None and loop.step < total:
            t = loop.step
            before = loop.state
            now = oracle if delayed is None else delayed.at(oracle, t)
            now = now if straggling is None else SkippingOracle(now, straggling(t))
            loop.state = algorithm.step(before, sampler.batch(t), now, mixer, lr(t))
            if offline is not None:  # node churn: the offline nodes did not step
                loop.state = hold(loop.state, before, offline(t))
            loop.step = t + 1
            loss = loop.state.loss
            loop.batch_loss = None if loss is None else network_mean(loss, group)
            outcome = _first(hooks, lambda h: h.on_step(loop))
        outcome = outcome or Outcome("done", loop.step)
        for h in hooks:
            h.on_end(loop, outcome)
        return loop.state, outcome
    finally:
        for h in hooks:
            h.on_close()


def _first(hooks: Sequence[Hook], call: Callable[[Hook], Outcome | None]) -> Outcome | None:
    """The first hook's outcome (the hooks after it are not called)."""
    for h in hooks:
        out = call(h)
        if out is not None:
            if not isinstance(out, Outcome):
                raise FlatlabError(f"hook {type(h).__name__} returned a "
                                   f"{type(out).__name__}; accepted: None or an Outcome")
            return out
    return None
