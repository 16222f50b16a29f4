"""The runner's hooks on the training loop (:mod:`flatlab.experiment.loop`).

Each owns one concern of a run; :func:`flatlab.experiment.runner.run` wires them, in this order::

    Terminate     SIGTERM ends the run (torchrun stops the other workers that way)
    BatchLoss     accumulates the network's batch loss between measurements
    Divergence    a non-finite loss (or iterate) ends the run as diverged
    Measuring     the scheduled measures (flatlab.measures.schedule) at step 0, every
                  measure.every steps and the last; non-finite metrics end the run as diverged
    Clock         the simulated wall clock (with a clock config): sim_time rows
    Progress      the progress bar (rank 0)
    StopAfter     stops after k steps as a kill would (tests of resumption)
    (TensorBoardLog, then the caller's hooks)
    Checkpointing checkpoint.pt, metrics.parquet and the extra tables, every checkpoint_every
                  steps, at the end and on divergence
    StatusFile    status.json: running, then done / diverged; released when stopped

They share a :class:`Record` (the metric rows, tables and timings a checkpoint holds); each
declares the fields it ``reads``, ``writes`` and ``reads_before`` (:class:`~flatlab.experiment.
loop.Hook`), and the runner checks the order above against those declarations
(:func:`check_order`) before training. :class:`Progress` installs ``Record.announce`` when it is
built (the measures call it as they start), which is wiring, not an order. A new hook
(a logger, timings) subclasses :class:`~flatlab.experiment.Hook` and is given to
``flatlab.experiment.run(..., hooks=[...])``, which places it after ``StopAfter``, before
``Checkpointing``; if it defines ``bind(run, record)``, that is called once before training
with the built :class:`~flatlab.experiment.assemble.Run` and the :class:`Record` (``rows``: what
was measured so far). A hook that ends the run early with ``Outcome("done", ...)`` gets the run
measured, checkpointed and marked done at that step.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import flatlab
from flatlab import algorithms as _algorithms
from flatlab.comm.clock import WallClock
from flatlab.comm.delayed import DelayedDistributedMixer, DelayedMixer
from flatlab.errors import FlatlabError, RunDirError
from flatlab.experiment import rundir
from flatlab.experiment.assemble import Run
from flatlab.experiment.loop import Hook, Loop, Outcome
from flatlab.measures import named
from flatlab.measures import schedule as _schedule

__all__ = ["Record", "Terminate", "Terminated", "BatchLoss", "Divergence", "Measuring",
           "Progress", "StopAfter", "Checkpointing", "StatusFile", "measure_run", "agree",
           "restore", "status_fields", "eval_sizes", "check_order"]

Alone = Callable[[str, Callable[[], Any]], Any]

#: The mixers whose messages arrive late: their past values are checkpointed.
DELAYED = (DelayedMixer, DelayedDistributedMixer)


def check_order(hooks: list[Hook]) -> None:
    """Refuse an order of hooks that breaks what they declare about the :class:`Record`.

    Within a step the hooks run in list order. A hook that ``reads`` a field must come after
    every other hook that ``writes`` it (it sees this step's value: :class:`Measuring` after
    :class:`BatchLoss`, :class:`Checkpointing` after every writer); a hook that ``reads_before``
    a field must come before them (:class:`Measuring` measures a fresh run's start only while
    nothing is recorded, so before :class:`Clock` records the clock's zero).

    Raises:
        FlatlabError: One line naming the two hooks and the field.
    """
    for i, early in enumerate(hooks):
        for late in hooks[i + 1:]:
            for field_ in sorted(early.reads & late.writes):
                raise FlatlabError(f"hook order: {type(early).__name__} reads the record's "
                                   f"{field_} before {type(late).__name__} writes it this step; "
                                   f"place {type(late).__name__} first")
            for field_ in sorted(late.reads_before & early.writes):
                raise FlatlabError(f"hook order: {type(late).__name__} reads the record's "
                                   f"{field_} as it was before this step, but "
                                   f"{type(early).__name__} writes it first; place "
                                   f"{type(late).__name__} first")


def _here(label: str, fn: Callable[[], Any]) -> Any:
    return fn()


@dataclass
class Record:
    """What a run has recorded so far (and what its checkpoint holds besides the state).

    Attributes:
        rows: Metric rows ``(step, epoch, metric, scope, value)`` (rank 0's are complete).
        tables: Rows of extra tables (``density``, ``landscape``), each with its ``step``.
        loss_acc: ``[sum, count]`` of batch losses since the last measurement (the sum a
            float64 tensor on the run's device while training, a number in a checkpoint).
        elapsed: Training seconds up to the last :meth:`tick` (measuring and checkpoints
            included).
        started: ISO time of the run's first start.
        measure_s: Seconds spent in each named measure so far.
        checkpoint_s: Seconds spent writing checkpoints and metric files so far.
        clock_s: The simulated wall clock's seconds so far (:class:`Clock`; 0 without one).
        announce: Called with a measure's name as it starts (the progress bar sets it).
    """

    steps_per_epoch: int
    rows: list[tuple] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    loss_acc: list[Any] = field(default_factory=lambda: [0.0, 0])
    elapsed: float = 0.0
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    measure_s: dict[str, float] = field(default_factory=dict)
    checkpoint_s: float = 0.0
    clock_s: float = 0.0
    announce: Callable[[str], None] | None = field(default=None, repr=False)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    @classmethod
    def resumed(cls, ck: rundir.Checkpoint, steps_per_epoch: int) -> Record:
        """The record of a checkpoint."""
        started = ck.started or time.strftime("%Y-%m-%dT%H:%M:%S")
        return cls(steps_per_epoch, list(ck.metrics),
                   {k: list(v) for k, v in ck.tables.items()}, list(ck.loss_acc),
                   float(ck.elapsed), started,
                   {k: float(v) for k, v in ck.timings.get("measures", {}).items()},
                   float(ck.timings.get("checkpoint", 0.0)),
                   float(ck.timings.get("clock", 0.0)))

    def timings(self) -> dict[str, Any]:
        """Where the time went, as ``status.json`` holds it (``timings_s``).

        ``total``, ``train`` (the rest), ``measures`` (each one's seconds and their ``sum``)
        and ``checkpoint`` seconds.
        """
        measured = sum(self.measure_s.values())
        return {"total": round(self.elapsed, 3),
                "train": round(max(self.elapsed - measured - self.checkpoint_s, 0.0), 3),
                "measures": {"sum": round(measured, 3),
                             **{k: round(v, 3) for k, v in self.measure_s.items()}},
                "checkpoint": round(self.checkpoint_s, 3)}

    def tick(self) -> float:
        """Add the time since the last tick to ``elapsed``; returns it."""
        now = time.perf_counter()
        self.elapsed, self._t0 = self.elapsed + now - self._t0, now
        return self.elapsed

    def add(self, step: int, rows: list[named.Row]) -> None:
        """Append ``(metric, scope, value)`` rows measured at ``step``."""
        self.rows.extend((step, step / self.steps_per_epoch, m, s, float(v)) for m, s, v in rows)


def agree(group: Any, ok: bool) -> bool:
    """``ok`` on every process (one all-reduce in a distributed run)."""
    if group.world_size == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=group.device)
    return float(group.all_reduce(flag)) == 0.0


def measure_run(run: Run, X: torch.Tensor, step: int, *,  # noqa: N803
                alone: Alone | None = None,
                tables: dict[str, list[dict[str, Any]]] | None = None,
                timings: dict[str, float] | None = None,
                announce: Callable[[str], None] | None = None) -> list[named.Row]:
    """The measures due at ``step`` at iterate ``X`` (this process's nodes): rows.

    Builds the :class:`~flatlab.measures.named.MeasureContext` of the run and calls
    :func:`flatlab.measures.schedule.measure`; the step size is recorded first (``lr``). The rows
    are complete on rank 0 only (empty elsewhere); extra tables are appended to ``tables`` with
    the step, and each measure's seconds are added to ``timings``; ``announce(name)`` is called
    as each measure starts.
    """
    cfg, mixer, stack = run.cfg, run.mixer, run.stack
    # accumulated in float64 and rounded once: nodes that agree exactly average to themselves
    # (at the start every x_i = x̄ and D = 0, which the mechanism's measures skip)
    total = X.double().sum(0) if mixer.world_size == 1 else mixer.all_reduce(X.double().sum(0))
    xbar = (total / run.n).to(X.dtype)
    bufs = {k: mixer.gather(v) for k, v in stack.buffers.items()}
    ctx = named.MeasureContext(
        stack=stack, X=X, xbar=xbar, buffers_avg=stack.average_buffers(bufs),
        train=run.train_eval, test=run.test_eval,
        curvature=run.curvature_eval or run.train_eval, dataset=run.dataset, n=run.n,
        rows=run.rows, step=step, mixer=mixer,
        eval_batch=cfg.measure.eval_batch, per_node=cfg.measure.per_node,
        curvature_dtype=getattr(torch, cfg.measure.curvature_dtype),
        comm_bytes=float(mixer.gathered_stats().total_bytes()), lr=float(run.lr(step)))
    rows: list[named.Row] = [("lr", "network", ctx.lr)]
    rows += _schedule.measure(ctx, run.schedule.due(step), alone=alone, timings=timings,
                              announce=announce)
    main = mixer.rank == 0
    if main and tables is not None:
        for t, new in ctx.tables.items():
            tables.setdefault(t, []).extend({"step": step, **r} for r in new)
    return rows if main else []


class Terminated(BaseException):
    """SIGTERM (torchrun stops the other workers when one fails)."""


@dataclass
class Terminate(Hook):
    """Ends the loop with :class:`Terminated` once ``flag`` is set (by a SIGTERM handler)."""

    flag: threading.Event

    def _check(self) -> None:
        if self.flag.is_set():
            raise Terminated("terminated (SIGTERM)")

    def on_start(self, loop: Loop) -> None:
        """Refuse to start once terminated."""
        self._check()

    def on_step(self, loop: Loop) -> None:
        """Raise :class:`Terminated` once the flag is set."""
        self._check()


@dataclass
class BatchLoss(Hook):
    """Accumulates the network's mean batch loss; :class:`Measuring` records its average."""

    reads = frozenset()
    writes = frozenset({"loss_acc"})

    record: Record

    def on_step(self, loop: Loop) -> None:
        """Add this step's network mean loss (on the device: the sum is read where measured)."""
        if loop.batch_loss is not None:
            self.record.loss_acc[0] = self.record.loss_acc[0] + loop.batch_loss
            self.record.loss_acc[1] += 1


@dataclass
class Divergence(Hook):
    """Ends the run as ``diverged`` at a non-finite batch loss.

    For an algorithm that reports no loss, at a non-finite iterate (agreed over processes).

    Reading a GPU's loss on the host waits for the step, and the next step cannot be queued
    meanwhile; so on a GPU (``lag=None``, or ``lag=True`` anywhere) the check is one step late:
    step ``t``'s flag is copied to the host behind step ``t``'s kernels and read after step
    ``t + 1`` was queued, so the GPU never runs dry. A loss that turns non-finite at step ``t``
    then ends the run as ``diverged`` at step ``t + 1`` (its message names step ``t``); the last
    step is checked at once. Every process reads the same all-reduced loss, so all of them stop
    at the same step.
    """

    group: Any
    lag: bool | None = None
    _pending: tuple[int, torch.Tensor, Any] | None = field(default=None, repr=False)

    def on_step(self, loop: Loop) -> Outcome | None:
        """``diverged`` at a non-finite loss or iterate."""
        if loop.state.loss is None:
            if agree(self.group, bool(torch.isfinite(loop.state.x).all())):
                return None
            return Outcome("diverged", loop.step, f"non-finite iterate at step {loop.step}")
        loss = loop.batch_loss
        lag = _waits_for_device(loss) if self.lag is None else self.lag
        earlier, self._pending = self._pending, None
        if earlier is not None:
            step, flag, copied = earlier
            if copied is not None:
                copied.synchronize()  # step `step`'s flag only, not the steps queued after it
            if not bool(flag):
                return Outcome("diverged", loop.step, f"non-finite loss at step {step}")
        if lag and loop.step < loop.total:
            self._pending = (loop.step, *_host_flag(torch.isfinite(loss)))
            return None
        if math.isfinite(loop.loss):
            return None
        return Outcome("diverged", loop.step, f"non-finite loss at step {loop.step}")


def _waits_for_device(t: torch.Tensor) -> bool:
    """Whether reading ``t`` on the host waits for a device (a GPU's queue)."""
    return t.device.type == "cuda"


def _host_flag(flag: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``flag`` on its way to the host: the copy and, on a GPU, the event that marks it done."""
    if flag.device.type != "cuda":
        return flag, None
    host = torch.empty((), dtype=flag.dtype, pin_memory=True, device="cpu")
    host.copy_(flag, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(flag.device))  # the copy's stream (cuda:1 too)
    return host, done


@dataclass
class Clock(Hook):
    """The simulated wall clock (:class:`flatlab.comm.clock.WallClock`): ``sim_time``.

    After every step: each of this process's nodes' compute time plus the bytes it sent that
    step over the bandwidth; the step takes the slowest node's time over all processes, plus
    the latency when anything was sent (asynchronous gossip: the nodes' mean time). The
    processes combine their per-step maxima (and sums) only where
    the run measures or checkpoints (one gather), so the clock adds no collective to a step;
    the cumulative seconds are recorded as ``sim_time`` (scope ``network``) wherever the run
    measures, and kept in the checkpoint.
    """

    reads = frozenset()
    writes = frozenset({"rows", "clock_s"})

    run: Run
    record: Record
    clock: WallClock
    checkpoint_every: int
    _pending: list[tuple[float, bool, float, int]] = field(default_factory=list)
    _sent: torch.Tensor | None = None

    def on_start(self, loop: Loop) -> None:
        """The mixer's byte counts so far; ``sim_time = 0`` at the start of a fresh run."""
        self._sent = self.run.mixer.stats.bytes.clone()
        if loop.step == 0 and self.run.mixer.rank == 0 and not any(
                r[2] == "sim_time" for r in self.record.rows):
            self.record.add(0, [("sim_time", "network", 0.0)])

    def on_step(self, loop: Loop) -> None:
        """Add the step's time; combine and record where the run measures or checkpoints."""
        now = self.run.mixer.stats.bytes
        sent = (now - self._sent).double().cpu().numpy()
        self._sent = now.clone()
        times = self.clock.node_times(loop.step - 1, sent, self.run.rows)
        self._pending.append((float(times.max()), bool(sent.sum() > 0), float(times.sum()),
                              int(times.size)))
        measured = self.run.schedule.is_step(loop.step)
        if measured or loop.step % self.checkpoint_every == 0:
            self._flush()
        if measured and self.run.mixer.rank == 0:
            self.record.add(loop.step, [("sim_time", "network", self.record.clock_s)])

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """A run that ended off the schedule (diverged, or done early) records its time too."""
        if outcome.status in ("done", "diverged") and (
                self._pending or not self.run.schedule.is_step(outcome.step)):
            self._flush()
            if self.run.mixer.rank == 0 and not self.run.schedule.is_step(outcome.step):
                self.record.add(outcome.step, [("sim_time", "network", self.record.clock_s)])

    def _flush(self) -> None:
        """Combine every process's pending steps (their slowest node, anything sent)."""
        per_rank = self.run.mixer.gather_object(self._pending)
        for steps in zip(*per_rank, strict=True):
            self.record.clock_s += self.clock.step_seconds(
                max(s[0] for s in steps), any(s[1] for s in steps),
                mean=sum(s[2] for s in steps) / sum(s[3] for s in steps))
        self._pending = []


@dataclass
class Measuring(Hook):
    """Records the scheduled measures (:class:`~flatlab.measures.schedule.Schedule`).

    At step 0 (a fresh run), every ``measure.every`` steps and at the last step; a non-finite
    iterate or metric ends the run as ``diverged``, and a diverged run gets a ``diverged`` row.
    """

    reads = frozenset({"loss_acc"})
    writes = frozenset({"rows", "tables", "measure_s", "loss_acc"})
    reads_before = frozenset({"rows"})

    run: Run
    record: Record
    alone: Alone = _here

    def _measure(self, loop: Loop) -> bool:
        """Measure at ``loop.step``; False (on every process) when anything is not finite."""
        group, rec = self.run.mixer, self.record
        if not agree(group, bool(torch.isfinite(loop.state.x).all())):
            return False
        new = measure_run(self.run, loop.state.x, loop.step, alone=self.alone,
                          tables=rec.tables, timings=rec.measure_s, announce=rec.announce)
        if loop.step > 0 and rec.loss_acc[1]:
            new.append(("batch_loss", "mean", float(rec.loss_acc[0]) / rec.loss_acc[1]))
            rec.loss_acc[0], rec.loss_acc[1] = 0.0, 0
        if group.rank == 0:
            rec.add(loop.step, new)
        return agree(group, all(math.isfinite(v) for _, _, v in new))

    def on_start(self, loop: Loop) -> Outcome | None:
        """Measure the initial point of a fresh run."""
        if loop.step == 0 and not self.record.rows and not self._measure(loop):
            return Outcome("diverged", 0, "non-finite parameters or metrics at the initial point")
        return None

    def on_step(self, loop: Loop) -> Outcome | None:
        """Measure when the schedule says so."""
        if self.run.schedule.is_step(loop.step) and not self._measure(loop):
            return Outcome("diverged", loop.step,
                           f"non-finite parameters or metrics at step {loop.step}")
        return None

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """Add the ``diverged`` row; measure a run that a hook ended early as done."""
        if outcome.status == "diverged" and self.run.mixer.rank == 0:
            self.record.add(outcome.step, [("diverged", "network", 1.0)])
        if outcome.status == "done" and not self.run.schedule.is_step(outcome.step):
            self._measure(loop)


class Progress(Hook):
    """A tqdm progress bar (shown by rank 0 only).

    It shows the steps, the time so far and left, the network's batch loss and the step size of
    the step just taken; while a measure runs, its name (``measuring hessian_top``), so that a
    long Lanczos run is not mistaken for a hang.
    """

    def __init__(self, name: str, total: int, start: int, record: Record, show: bool,
                 lr: Callable[[int], float] | None = None) -> None:
        self.lr = lr
        self.show = show
        self.bar = tqdm(total=total, initial=start, desc=name, disable=not show,
                        dynamic_ncols=True, leave=False)
        self.info: dict[str, str] = {}
        self._shown = -math.inf
        if show:
            record.announce = self._announce

    def _announce(self, name: str) -> None:
        self.bar.set_postfix({**self.info, "measuring": name}, refresh=True)

    def on_start(self, loop: Loop) -> None:
        """Clear ``measuring`` after the initial measurement."""
        if self.show:
            self.bar.set_postfix(self.info, refresh=False)

    def on_step(self, loop: Loop) -> None:
        """Advance the bar; show the step's loss (read twice a second) and step size."""
        if self.show:
            now = time.monotonic()
            if loop.batch_loss is not None and now - self._shown >= 0.5:
                self.info["loss"] = f"{loop.loss:.4g}"  # reading it waits for a GPU's step
                self._shown = now
            if self.lr is not None:
                self.info["lr"] = f"{self.lr(loop.step - 1):.3g}"
            self.bar.set_postfix(self.info, refresh=False)
        self.bar.update(1)

    def on_close(self) -> None:
        """Close the bar."""
        self.bar.close()


@dataclass
class StopAfter(Hook):
    """Stops the loop once ``steps`` steps are done (before the run ends).

    As a kill would: without a final checkpoint (for tests of resumption).
    """

    steps: int

    def on_step(self, loop: Loop) -> Outcome | None:
        """``stopped`` once ``steps`` are done."""
        if loop.step >= self.steps and loop.step < loop.total:
            return Outcome("stopped", loop.step, "stopped (stop_after)")
        return None


@dataclass
class Checkpointing(Hook):
    """Saves everything needed to resume, with the metrics and extra tables.

    Every ``every`` steps, at the last step and on divergence; every process takes part (its
    rows of the state are gathered), rank 0 writes.
    """

    reads = frozenset({"rows", "tables", "loss_acc", "measure_s", "clock_s"})
    writes = frozenset({"checkpoint_s", "elapsed"})

    run: Run
    record: Record
    out: Path
    every: int
    config: dict[str, Any]
    alone: Alone = _here
    saved: int | None = None  # the step of the last checkpoint written

    def _gathered(self, v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        mixer = self.run.mixer
        if mixer.world_size > 1:
            return mixer.gather(v.to(self.run.stack.device)).cpu()
        return v.detach().cpu().clone()

    def save(self, step: int, state: Any) -> None:
        """Write the checkpoint of ``state`` at ``step``."""
        mixer, rec = self.run.mixer, self.record
        t0 = time.perf_counter()
        dev = self.run.stack.device  # the run's GPU only: another machine may have fewer
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(dev) if dev.type == "cuda"
               else None)
        ck = rundir.Checkpoint(
            step=step,
            state={k: self._gathered(v) for k, v in _algorithms.state_dict(state).items()},
            buffers={k: self._gathered(v) for k, v in self.run.stack.buffers.items()},
            mixer=mixer.gathered_stats().state_dict(), metrics=rec.rows,
            elapsed=rec.elapsed, loss_acc=[float(rec.loss_acc[0]), rec.loss_acc[1]],
            rng=mixer.gather_object(rng),
            processes=mixer.world_size, tables=rec.tables, started=rec.started,
            config=self.config,
            timings={"measures": dict(rec.measure_s), "checkpoint": rec.checkpoint_s,
                     "clock": rec.clock_s},
            stale={} if self.run.delayed is None else {
                k: self._gathered(v) for k, v in self.run.delayed.state_dict().items()},
            delays={k: self._gathered(v) for k, v in mixer.state_dict().items()}
            if isinstance(mixer, DELAYED) else {})

        def write() -> None:
            rundir.save_checkpoint(self.out, ck)
            rundir.write_metrics(self.out, rec.rows, rec.tables)

        self.alone(f"writing the checkpoint of step {step}", write)
        self.saved = step
        # counted from the next checkpoint on (this one's own time is known only now); the
        # elapsed time is ticked again so that the total includes it
        rec.checkpoint_s += time.perf_counter() - t0
        rec.tick()

    def on_step(self, loop: Loop) -> None:
        """Save at every ``every`` steps and at the last step."""
        if loop.step % self.every == 0 or loop.step == loop.total:
            self.record.tick()
            self.save(loop.step, loop.state)

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """Save a diverged run, and one ended as done before this step's checkpoint."""
        if outcome.status in ("done", "diverged") and self.saved != outcome.step:
            self.record.tick()
            self.save(outcome.step, loop.state)


@dataclass
class StatusFile(Hook):
    """Keeps ``status.json`` through a :class:`~flatlab.experiment.rundir.StatusWriter`.

    Written by the ``main`` process: ``running`` at the start and after each checkpoint, then
    ``done`` or ``diverged``; a stopped run is released (shown as interrupted). ``step`` is the
    last step seen, for a failure.
    """

    reads = frozenset({"elapsed", "measure_s", "checkpoint_s"})
    writes = frozenset()

    writer: rundir.StatusWriter
    record: Record
    checkpoint_every: int
    main: bool = True
    step: int = 0

    def write(self, status: str, step: int, message: str = "") -> None:
        """Write ``status`` (on the main process)."""
        if self.main:
            self.writer.write(status, step, self.record.elapsed, message,
                              timings=self.record.timings())

    def on_start(self, loop: Loop) -> None:
        """``running``."""
        self.step = loop.step
        self.write("running", loop.step)

    def on_step(self, loop: Loop) -> None:
        """``running`` after each checkpoint."""
        self.step = loop.step
        if loop.step % self.checkpoint_every == 0 and loop.step < loop.total:
            self.write("running", loop.step)

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """The final status, or released when stopped."""
        self.step = outcome.step
        if outcome.status == "stopped":
            if self.main:  # as after a kill: no process is on this directory any more
                self.writer.release()
        else:
            self.write(outcome.status, outcome.step, outcome.message)

    def on_close(self) -> None:
        """Stop the heartbeat."""
        self.writer.stop()

    def release(self) -> None:
        """Leave the run as a killed process leaves it (shown as interrupted, resumable).

        Written by the main process; a failed write is left to the error being raised.
        """
        if self.main:
            try:
                self.writer.release()
            except OSError:
                pass

    def fail(self, message: str) -> None:
        """``failed`` at the last step seen, with ``message``.

        Written by the main process, or by any process once ``status.json`` exists (the main
        process may be the one that was lost). A full disk leaves the status as it was: the
        error being raised says why.
        """
        if self.main or self.writer.path.is_file():
            try:
                self.writer.write("failed", self.step, self.record.elapsed, message)
            except OSError:
                pass


# ---------------------------------------------------------------------- resume and status
def _rows_of(v: Any, rows: slice, n: int) -> Any:
    """This process's rows of a checkpointed per-node tensor of all ``n`` nodes."""
    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
        return v[rows]
    return v


def _restore_cuda_rng(saved: Any, device: torch.device) -> None:
    """The run's GPU generator from a checkpoint's saved CUDA state.

    One state; or, from checkpoints written before it was one, the list of every visible GPU's,
    of which the run's own is taken when present. Nothing on the CPU, or when the checkpoint was
    written without a GPU.
    """
    if saved is None or device.type != "cuda":
        return
    if isinstance(saved, (list, tuple)):
        index = device.index or 0
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)


def restore(ck: rundir.Checkpoint, out: Path, built: Run, state: Any) -> Any:
    """The state, buffers, communication counts and random stream of a checkpoint.

    The checkpoint is first checked against the run (:func:`rundir.check_fits`): a checkpoint of
    another algorithm, size or model is refused in one line, before anything is written.
    """
    n, own, stack, mixer = built.n, built.rows, built.stack, built.mixer
    path = out / "checkpoint.pt"
    rundir.check_fits(ck, path, state=_algorithms.state_dict(state), buffers=stack.buffers, n=n)
    try:
        saved = {k: _rows_of(v, own, n) for k, v in ck.state.items()}
        state = _algorithms.load_state(saved, state, device=stack.device)
        stack.load_buffers({k: _rows_of(v, own, n) for k, v in ck.buffers.items()})
        mixer.stats.load_state_dict({k: _rows_of(v, own, n) for k, v in ck.mixer.items()})
        if built.delayed is not None:
            built.delayed.load_state_dict({k: _rows_of(v, own, n) for k, v in ck.stale.items()},
                                          device=stack.device)
        if isinstance(mixer, DELAYED):  # the full past: each rank keeps the rows it mixes
            mixer.load_state_dict(ck.delays)
        if len(ck.rng) == mixer.world_size:  # the same processes: each continues its own stream
            mine = ck.rng[mixer.rank]
            torch.set_rng_state(mine[0])
            _restore_cuda_rng(mine[1], stack.device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, FlatlabError) as e:
        first = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
        raise RunDirError(f"checkpoint {path} cannot be restored ({first}); "
                          f"{rundir.RESTART_HINT}") from None
    return state


def status_fields(built: Run, record: Record, procs: Any = None) -> dict[str, Any]:
    """The fields of ``status.json`` that stay fixed during a run."""
    dev = built.stack.device
    device = (f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
              f"cpu ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)")
    if procs is not None:
        device += f", {procs.world_size} processes ({procs.backend})"
    return {"name": built.cfg.name, "total_steps": built.total_steps,
            "steps_per_epoch": built.steps_per_epoch, "started": record.started,
            "device": device, "backend": built.cfg.backend,
            "processes": built.mixer.world_size, "threads": torch.get_num_threads(),
            "versions": {"flatlab": flatlab.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "nodes": built.n, "parameters": built.stack.P, **eval_sizes(built)}


def eval_sizes(built: Run) -> dict[str, int]:
    """The sizes of the fixed evaluation sets."""
    return {f"{k}_eval_size": int(v[0].shape[0]) for k, v in
            (("train", built.train_eval), ("test", built.test_eval),
             ("curvature", built.curvature_eval))}
