"""The runner: build a run from its config, train with a progress bar, measure, checkpoint.

A run directory (DESIGN.md §7)::

    config.yaml      the resolved config
    status.json      running | done | diverged | failed, with step, timings, versions, device
    metrics.parquet  long form: step, epoch, metric, scope, value
    checkpoint.pt    everything needed to resume (and the final state, for later measurement)

Every file is written atomically (temporary file, then ``os.replace``), and the checkpoint also
holds the metric rows measured so far, so a run killed at any moment resumes from its last
checkpoint and ends with exactly the metrics of an uninterrupted run (on the CPU; the sampler is a
pure function of the step, the learning rate too, and the torch RNG state is saved).

Metric scopes: ``avg`` (the averaged model ``x̄``), ``mean`` (mean over the node models),
``network`` (a quantity of the whole network) and ``"0" … "n-1"`` (one node).

Backends. With ``backend: simulated`` one process holds all ``n`` nodes and a
:class:`~flatlab.comm.SimulatedMixer` gossips. With ``backend: distributed`` the run is started by
``torchrun --nproc_per_node=K``; rank ``r`` holds the nodes ``r n/K … (r+1) n/K − 1`` (its rows
of the node stack, its minibatches, its initial models) and a
:class:`~flatlab.comm.DistributedMixer` gossips by point-to-point messages. The loop is the same
code: the per-step loss is all-reduced, the averaged model ``x̄`` is all-reduced and evaluated once
(on rank 0), each rank evaluates its own nodes and the per-node metrics are gathered, and
checkpoints hold the gathered state of all ``n`` nodes, so a run directory looks the same either
way and can be resumed under either backend. Rank 0 writes the directory. A rank that dies or
hangs makes the others fail within ``timeout`` seconds with one line naming it
(:class:`~flatlab.comm.process.Watchdog`); the run is then marked ``failed``.
"""

from __future__ import annotations

import importlib
import platform
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatlab import algorithms as _algorithms
from flatlab.comm.process import PeerLost, Processes, Watchdog, join, leave
from flatlab.errors import FlatlabError, RankLostError, RunDirError
from flatlab.experiment import hooks as _hooks
from flatlab.experiment import rundir
from flatlab.experiment.build import Run, build
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.hooks import measure
from flatlab.experiment.rundir import METRIC_COLUMNS, STATUSES, average_model, final_models
from flatlab.experiment.train import train

__all__ = ["Run", "RunResult", "build", "run", "measure", "average_model", "final_models",
           "STATUSES", "METRIC_COLUMNS"]


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run`: the directory, the final status, the step reached.

    ``main`` is whether this process wrote the directory (rank 0 of a distributed run).
    """

    path: Path
    status: str
    step: int
    message: str = ""
    main: bool = True


def run(config: RunConfig | dict | str | Path, out: str | Path, *, progress: bool = True,
        resume: bool = True, stop_after: int | None = None) -> RunResult:
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
    procs = join(cfg.device, cfg.timeout) if cfg.backend == "distributed" else None
    failed = False
    try:
        kind, payload = _decide(out, to_dict(cfg), resume, procs)
        if kind == "finished":
            return RunResult(out, payload["status"], payload["step"],
                             payload.get("message", ""), procs is None or procs.rank == 0)
        return _train(cfg, out, payload, procs, progress=progress, stop_after=stop_after)
    except BaseException:
        failed = True
        raise
    finally:
        if procs is not None:
            leave(procs, failed=failed)


def _decide(out: Path, cfg_dict: dict[str, Any], resume: bool, procs: Processes | None
            ) -> tuple[str, Any]:
    """:func:`rundir.decide` on rank 0, heard by every rank (also when reading fails)."""
    if procs is None:
        decision = rundir.decide(out, cfg_dict, resume)
    elif procs.rank == 0:
        try:
            decision = rundir.decide(out, cfg_dict, resume)
        except FlatlabError as e:  # reported on every rank below
            decision = "error", str(e)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            decision = "error", f"cannot resume from {out}: {type(e).__name__}: {e}"
    else:
        decision = None
    if procs is not None:
        import torch.distributed as dist

        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    if decision[0] == "error":
        raise RunDirError(decision[1])
    return decision


def _rows_of(v: Any, rows: slice, n: int) -> Any:
    """This process's rows of a checkpointed per-node tensor of all ``n`` nodes."""
    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
        return v[rows]
    return v


def _restore(ck: rundir.Checkpoint, out: Path, built: Run, state: Any) -> Any:
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
        if len(ck.rng) == mixer.world_size:  # the same processes: each continues its own stream
            mine = ck.rng[mixer.rank]
            torch.set_rng_state(mine[0])
            if mine[1] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine[1])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, FlatlabError) as e:
        first = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
        raise RunDirError(f"checkpoint {path} cannot be restored ({first}); "
                          f"{rundir.RESTART_HINT}") from None
    return state


def _setup(cfg: RunConfig, out: Path, ck: rundir.Checkpoint | None, procs: Processes | None,
           watchdog: Watchdog | None, box: list) -> tuple[Run, Any]:
    """Build the run and its initial (or restored) state; nothing is written before this ends."""
    try:
        built = build(cfg, procs)
        box.append(built.mixer)
        torch.manual_seed(cfg.seed + built.mixer.rank)
        state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
        if ck is not None:  # everything in the checkpoint is checked before anything is written
            state = _restore(ck, out, built, state)
    except BaseException:
        if watchdog is not None:
            watchdog.close()
        raise
    return built, state


def _status_fields(cfg: RunConfig, built: Run, record: _hooks.Record,
                   procs: Processes | None) -> dict[str, Any]:
    """The fields of ``status.json`` that stay fixed during a run."""
    import flatlab

    dev = built.stack.device
    device = (f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
              f"cpu ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)")
    if procs is not None:
        device += f", {procs.world_size} processes ({procs.backend})"
    return {"name": cfg.name, "total_steps": built.total_steps,
            "steps_per_epoch": built.steps_per_epoch, "started": record.started,
            "device": device, "backend": cfg.backend, "processes": built.mixer.world_size,
            "versions": {"flatlab": flatlab.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "nodes": built.n, "parameters": built.stack.P, **_sizes(built)}


def _sizes(built: Run) -> dict[str, int]:
    """The sizes of the fixed evaluation sets."""
    return {f"{k}_eval_size": int(v[0].shape[0]) for k, v in
            (("train", built.train_eval), ("test", built.test_eval),
             ("curvature", built.curvature_eval))}


def _train(cfg: RunConfig, out: Path, ck: rundir.Checkpoint | None, procs: Processes | None,
           *, progress: bool, stop_after: int | None) -> RunResult:
    """Build, restore, write the run's files and train with the runner's hooks."""
    main = procs is None or procs.rank == 0
    watchdog, box = None, []
    if procs is not None:  # heartbeats from here on, so that a slow setup is not a hang
        watchdog = Watchdog(procs.rank, procs.world_size,
                            lambda: box[0].calls if box else 0, timeout=cfg.timeout,
                            run_id=_run_id(procs.rank), solo_timeout=cfg.measure_timeout)
    built, state = _setup(cfg, out, ck, procs, watchdog, box)
    cfg_dict = to_dict(cfg)
    if main:
        rundir.start_files(out, cfg_dict, {
            "measures": built.schedule.measures, "every": cfg.measure.every, **_sizes(built),
            "curvature_dtype": cfg.measure.curvature_dtype, "eval_mode": True}, fresh=ck is None)
    spe = built.steps_per_epoch
    record = _hooks.Record.resumed(ck, spe) if ck is not None else _hooks.Record(spe)
    writer = rundir.StatusWriter(out, _status_fields(cfg, built, record, procs), spe)
    term = threading.Event()  # set by SIGTERM in a distributed run

    def alone(label: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 while the other processes wait watchfully (not in a collective)."""
        return fn() if watchdog is None else watchdog.alone(label, fn, stop=term.is_set)

    status = _hooks.StatusFile(writer, record, cfg.checkpoint_every, main,
                               step=ck.step if ck else 0)
    hooks = [_hooks.Terminate(term), _hooks.BatchLoss(record), _hooks.Divergence(built.mixer),
             _hooks.Measuring(built, record, alone),
             _hooks.Progress(cfg.name, built.total_steps, status.step, record,
                             progress and main),
             *([_hooks.StopAfter(stop_after)] if stop_after is not None else []),
             _hooks.Checkpointing(built, record, out, cfg.checkpoint_every, cfg_dict, alone),
             status]
    old_term = _catch_sigterm(term) if procs is not None else None
    try:
        if watchdog is not None:
            # torch.func imports torch._dynamo on first use (1-3 s): pay it here, before the
            # ranks line up, not inside the first step while the peers wait in a collective
            importlib.import_module("torch._dynamo")
            watchdog.barrier("setting up", stop=term.is_set)
        _, outcome = train(built.algorithm, state, built.sampler, built.oracle, built.mixer,
                           built.lr, hooks, total=built.total_steps, start=status.step)
        shown = "running" if outcome.status == "stopped" else outcome.status
        return RunResult(out, shown, outcome.step, outcome.message, main)
    except BaseException as e:
        _failed(e, out, status, watchdog, built.mixer.waiting)
        raise
    finally:
        status.on_close()
        if watchdog is not None:
            watchdog.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _failed(e: BaseException, out: Path, status: _hooks.StatusFile, watchdog: Watchdog | None,
            waiting: bool) -> None:
    """Record a failure in ``status.json``.

    The error, or the watchdog's verdict on a lost rank (then raised as
    :class:`RankLostError`); ``waiting``: the mixer was inside a collective.
    """
    msg = "interrupted" if isinstance(e, KeyboardInterrupt) else \
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    terminated = isinstance(e, _hooks.Terminated)
    lost = None
    if isinstance(e, PeerLost):
        msg = lost = e.verdict
    elif watchdog is not None:
        if waiting or terminated:
            msg = lost = watchdog.verdict(e, terminated=terminated)
        elif not isinstance(e, KeyboardInterrupt):
            watchdog.blame_self(msg)
    if status.main or (out / "status.json").is_file():  # rank 0 may be the one that was lost
        status.writer.write("failed", status.step, status.record.elapsed, msg)
    if watchdog is not None:
        watchdog.close()
        watchdog.mark_exited()
    if lost is not None:
        raise RankLostError(f"{lost}; the run in {out} is marked failed") from None


def _run_id(rank: int) -> int:
    """How many runs this process has started in its group.

    The same on every rank (all ranks run the same sequence), so one run's store keys never
    meet another's.
    """
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    return int(store.add(f"flatlab/runs/{rank}", 1))


def _catch_sigterm(flag: threading.Event) -> Any:
    """Let SIGTERM set ``flag`` (checked at every step) instead of killing the process.

    torchrun stops the other workers with SIGTERM when one fails; they must still record the
    verdict and mark the run failed. Returns the previous handler (``None`` off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
