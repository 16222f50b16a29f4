"""The runner: one run, wired from its parts (docs/architecture.md).

:func:`run` decides what to do with the run directory (:func:`flatlab.experiment.rundir.decide`:
resume, start afresh, or return a finished run), builds the run
(:func:`flatlab.experiment.assemble.build`), restores a checkpoint, writes the run's files and
trains with :func:`flatlab.experiment.loop.train` and the hooks of
:mod:`flatlab.experiment.hooks` (measuring, divergence, checkpoints, status, progress). The
processes of a distributed run agree through :mod:`flatlab.experiment.ranks`.

A run directory (DESIGN.md §7; :mod:`flatlab.experiment.rundir` owns it)::

    config.yaml      the resolved config
    status.json      running | done | diverged | failed, with step, timings, versions, device
    metrics.parquet  long form: step, epoch, metric, scope, value
    checkpoint.pt    everything needed to resume (and the final state, for later measurement)

Every file is written atomically (temporary file, then ``os.replace``), and the checkpoint also
holds the metric rows measured so far, so a run killed at any moment resumes from its last
checkpoint and ends with exactly the metrics of an uninterrupted run (on the CPU; the sampler is a
pure function of the step, the learning rate too, and the torch RNG state is saved).

Backends (one process holding all nodes, or ``torchrun`` processes holding their rows):
:mod:`flatlab.experiment.ranks`.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from flatlab.comm.process import Processes, Watchdog, join, leave
from flatlab.engine.precision import deterministic
from flatlab.engine.stack import resolve_device
from flatlab.errors import ConfigError
from flatlab.experiment import hooks as _hooks
from flatlab.experiment import ranks, rundir
from flatlab.experiment.assemble import Run, build, wall_clock
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.hooks import measure_run
from flatlab.experiment.loop import Hook, train
from flatlab.experiment.rundir import METRIC_COLUMNS, STATUSES, average_model, final_models
from flatlab.experiment.tensorboard import TensorBoardLog, require_tensorboard
from flatlab.seeds import seed_for

__all__ = ["Run", "RunResult", "build", "run", "preflight", "resolve_threads", "measure_run",
           "average_model", "final_models", "STATUSES", "METRIC_COLUMNS"]


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run`: the directory, the final status, the step reached.

    ``main`` is whether this process wrote the directory (rank 0 of a distributed run); ``ran``
    is False when the run had finished before and was returned as it was. ``mended`` says which
    of a finished run's files were missing or damaged and how they were mended (rewritten from
    its checkpoint, or the run trained again); empty when nothing was.
    """

    path: Path
    status: str
    step: int
    message: str = ""
    main: bool = True
    ran: bool = True  # False: the run had finished before and nothing ran
    mended: str = ""  # a finished run's damaged files, and how they were mended


def run(config: RunConfig | dict | str | Path, out: str | Path, *, progress: bool = True,
        resume: bool = True, stop_after: int | None = None,
        hooks: Sequence[Hook] = ()) -> RunResult:
    """Train one run into the directory ``out``, resuming from its checkpoint when there is one.

    With ``backend: distributed`` call this in every process of a ``torchrun`` launch (the
    process group is started from its environment unless it already is); every rank returns
    the same :class:`RunResult`.

    Args:
        config: A :class:`RunConfig`, a mapping or a YAML path (validated).
        out: The run directory (created).
        progress: Show a tqdm progress bar (rank 0 only).
        resume: Continue from ``out/checkpoint.pt`` when the run there is unfinished; a finished
            run (done or diverged) is returned as it is. With ``False`` the run starts over.
        stop_after: Stop (as if killed, without a final checkpoint) once this many steps are done;
            for tests of resumption.
        hooks: Extra :class:`~flatlab.experiment.Hook` s (a logger, say), called after the
            runner's measuring and before its checkpoint at every step; one with
            ``bind(run, record)`` gets the built run and its :class:`~flatlab.experiment.hooks.
            Record` first. ``Outcome("done")`` from one ends the run early with its results.

    Returns:
        The :class:`RunResult`. A diverging run ends with status ``diverged`` (not an error).

    Raises:
        RunDirError: The directory holds a run with a different config, a damaged or foreign
            status, config or checkpoint (read safely: ``weights_only=True``), or a run that is
            alive in another process; nothing is written then.
        RankLostError: A distributed run lost a process (the message names it; the run is
            marked ``failed``).
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    out = Path(out)
    for h in hooks:
        if not isinstance(h, Hook):
            raise ConfigError(f"hooks: a {type(h).__name__} is not a flatlab.experiment.Hook")
    preflight(cfg)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(cfg.threads))
    try:
        with deterministic(cfg.deterministic):
            return _run(cfg, out, progress=progress, resume=resume, stop_after=stop_after,
                        hooks=hooks)
    finally:
        torch.set_num_threads(saved_threads)


def preflight(cfg: RunConfig) -> None:
    """What a valid config needs of this machine, checked before anything is written.

    The device exists, ``threads`` fits the machine, ``init_from`` holds a checkpoint and the
    ``tensorboard`` package is there when ``log.tensorboard`` asks for it. :func:`run` calls it,
    and :func:`~flatlab.experiment.run_many` calls it for every job before the first runs, so
    that a sweep with such a mistake is refused in one line instead of failing at every point.

    Raises:
        FlatlabError: One line naming what is missing.
    """
    if cfg.backend != "distributed":  # a distributed run's device is its rank's, resolved there
        resolve_device(cfg.device)
    resolve_threads(cfg.threads)
    if cfg.init_from is not None and not (Path(cfg.init_from) / "checkpoint.pt").is_file():
        raise ConfigError(f"init_from: {cfg.init_from} holds no checkpoint.pt; accepted: a run "
                          "directory (train it first)")
    if cfg.log.tensorboard:
        require_tensorboard()


def resolve_threads(threads: int | str) -> int:
    """The CPU threads a run uses: ``auto`` is one thread; a number is taken as it is.

    One thread, measured on 2 cores (``benchmarks/threads.py``, ``benchmarks/RESULTS.md``): alone
    on the machine two threads were 1.1-1.6x faster for training and curvature measures, but
    beside one busy process 2.3-2.4x slower, so one thread is never far from the best while
    torch's default (a thread per core) can be. A fixed count also keeps a run's float32
    numbers independent of what else the machine runs. A large model alone on many cores may
    gain from more: set ``threads`` (``--threads``) then. Parallel runs (``--jobs``) use the
    cores across processes instead.
    """
    if threads == "auto":
        return 1
    cores = os.cpu_count() or 1
    if int(threads) > 4 * cores:
        raise ConfigError(f"threads={threads} is more than 4 per CPU of this machine ({cores}); "
                          f"accepted: auto or 1 to {4 * cores}")
    return int(threads)


def _run(cfg: RunConfig, out: Path, *, progress: bool, resume: bool, stop_after: int | None,
         hooks: Sequence[Hook]) -> RunResult:
    procs = join(cfg.device, cfg.timeout) if cfg.backend == "distributed" else None
    failed = False
    lock = rundir.RunLock(out)  # rank 0's, held until the run has written its last file
    try:
        kind, payload = ranks.decide(out, to_dict(cfg), resume, procs, lock)
        main = procs is None or procs.rank == 0
        if main:  # under the lock: what a killed writer left half-written goes
            rundir.clear_temporaries(out)
        if kind == "finished":
            return RunResult(out, payload["status"], payload["step"],
                             payload.get("message", ""), main, ran=False)
        if kind == "repair":  # a finished run whose other files its checkpoint rewrites
            st, ck, damage = payload
            if main:
                rundir.repair(out, ck, to_dict(cfg))
            return RunResult(out, st["status"], st["step"], st.get("message", ""), main,
                             ran=False, mended=f"{'; '.join(damage)}: rewritten from its "
                                               "checkpoint, nothing trained")
        if kind == "redo":  # a finished run without a sound checkpoint: trained again
            res = _train(cfg, out, None, procs, progress=progress, stop_after=stop_after,
                         extra=hooks)
            return replace(res, mended=f"{'; '.join(payload)}: trained again from the start")
        return _train(cfg, out, payload, procs, progress=progress, stop_after=stop_after,
                      extra=hooks)
    except BaseException:
        failed = True
        raise
    finally:
        lock.release()
        if procs is not None:
            leave(procs, failed=failed)


class _Calls:
    """The communication calls the watchdog counts: the run's mixer's, once it exists.

    The watchdog beats from before the run is built (a slow setup is not a hang), so it is given
    this, and :func:`_setup` hands it the mixer as soon as the run is built.
    """

    def __init__(self) -> None:
        self.mixer: Any = None

    def __call__(self) -> int:
        return 0 if self.mixer is None else self.mixer.calls


def _setup(cfg: RunConfig, out: Path, ck: rundir.Checkpoint | None, procs: Processes | None,
           watchdog: Watchdog | None, calls: _Calls) -> tuple[Run, Any]:
    """Build the run and its initial (or restored) state; nothing is written before this ends."""
    try:
        built = build(cfg, procs)
        calls.mixer = built.mixer
        torch.manual_seed(seed_for(cfg.seed, "process", built.mixer.rank))
        state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
        if ck is not None:  # everything in the checkpoint is checked before anything is written
            state = _hooks.restore(ck, out, built, state)
    except BaseException:
        if watchdog is not None:
            watchdog.close()
        raise
    return built, state


def _hooks_of(built: Run, record: _hooks.Record, status: _hooks.StatusFile, out: Path,
              alone: Callable[[str, Callable[[], Any]], Any], term: threading.Event, *,
              progress: bool, stop_after: int | None, extra: Sequence[Hook]) -> list[Hook]:
    """The runner's hooks and the caller's, in their order (flatlab.experiment.hooks says why)."""
    cfg = built.cfg
    for h in extra:
        if hasattr(h, "bind"):
            h.bind(built, record)
    hooks = [_hooks.Terminate(term), _hooks.BatchLoss(record), _hooks.Divergence(built.mixer),
             _hooks.Measuring(built, record, alone),
             *([_hooks.Clock(built, record, wall_clock(cfg), cfg.checkpoint_every)]
               if cfg.clock.on else []),
             _hooks.Progress(cfg.name, built.total_steps, status.step, record,
                             progress and status.main, lr=built.lr),
             *([_hooks.StopAfter(stop_after)] if stop_after is not None else []),
             *([TensorBoardLog(out, record, status.step)] if cfg.log.tensorboard and status.main
               else []), *extra,
             _hooks.Checkpointing(built, record, out, cfg.checkpoint_every, to_dict(cfg), alone),
             status]
    _hooks.check_order(hooks)  # what each declares it reads and writes of the record
    return hooks


def _train(cfg: RunConfig, out: Path, ck: rundir.Checkpoint | None, procs: Processes | None,
           *, progress: bool, stop_after: int | None, extra: Sequence[Hook] = ()) -> RunResult:
    """Build, restore, write the run's files and train with the runner's hooks."""
    main = procs is None or procs.rank == 0
    watchdog, calls = None, _Calls()
    if procs is not None:  # heartbeats from here on, so that a slow setup is not a hang
        watchdog = Watchdog(procs.rank, procs.world_size, calls, timeout=cfg.timeout,
                            run_id=ranks.run_id(procs.rank), solo_timeout=cfg.measure_timeout)
    built, state = _setup(cfg, out, ck, procs, watchdog, calls)
    if main:
        rundir.start_files(out, to_dict(cfg), {
            "measures": built.schedule.measures, "every": cfg.measure.every,
            **_hooks.eval_sizes(built), "curvature_dtype": cfg.measure.curvature_dtype,
            "eval_mode": True}, fresh=ck is None)
    spe = built.steps_per_epoch
    record = _hooks.Record.resumed(ck, spe) if ck is not None else _hooks.Record(spe)
    writer = rundir.StatusWriter(out, _hooks.status_fields(built, record, procs), spe)
    term = threading.Event()  # set by SIGTERM in a distributed run

    def alone(label: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 while the other processes wait watchfully (not in a collective)."""
        return fn() if watchdog is None else watchdog.alone(label, fn, stop=term.is_set)

    status = _hooks.StatusFile(writer, record, cfg.checkpoint_every, main,
                               step=ck.step if ck else 0)
    hooks = _hooks_of(built, record, status, out, alone, term, progress=progress,
                      stop_after=stop_after, extra=extra)
    old_term = ranks.catch_sigterm(term) if procs is not None else None
    try:
        if watchdog is not None:
            # torch.func imports torch._dynamo on first use (1-3 s): pay it here, before the
            # ranks line up, not inside the first step while the peers wait in a collective
            importlib.import_module("torch._dynamo")
            watchdog.barrier("setting up", stop=term.is_set)
        _, outcome = train(built.algorithm, state, built.sampler, built.oracle, built.mixer,
                           built.lr, hooks, total=built.total_steps, start=status.step,
                           offline=built.offline, straggling=built.straggling,
                           delayed=built.delayed)
        shown = "running" if outcome.status == "stopped" else outcome.status
        return RunResult(out, shown, outcome.step, outcome.message, main)
    except BaseException as e:
        ranks.record_failure(e, out, status, watchdog, built.mixer.waiting)
        raise
    finally:
        status.on_close()
        if watchdog is not None:
            watchdog.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


