"""Run many configs: the one place that sweeps, studies and the demo run their jobs through.

A job is ``(run directory, config)``. :func:`run_many` keeps the rules every caller shares:

* nothing runs or is written before every config is validated, every directory checked
  (:func:`flatlab.experiment.rundir.conflict`) and every config's needs of this machine met
  (:func:`flatlab.experiment.runner.preflight`: device, threads, ``init_from``, TensorBoard);
  one bad job refuses them all, in one line;
* a finished run (``done`` or ``diverged``) of the same config is skipped when its files are
  sound (:func:`flatlab.experiment.rundir.finished_damage`); a damaged one is mended (its other
  files rewritten from a sound checkpoint, or the run trained again) and says so; an unfinished
  one resumes from its checkpoint, or starts over when its status or config was damaged; a
  failed one is retried;
* a run alive in another process (:func:`flatlab.experiment.rundir.owned_elsewhere`, or the
  directory's lock, :class:`flatlab.experiment.rundir.RunLock`) is left to it, untouched, and
  reported as skipped;
* a run that raises is marked ``failed`` (:func:`flatlab.experiment.rundir.mark_failed`) and the
  others go on; ``KeyboardInterrupt`` stops everything;
* one worker runs the jobs in this process; more run them in spawned processes of one thread
  each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from flatlab.errors import ConfigError, FlatlabError, RunBusyError, RunDirError
from flatlab.experiment import rundir
from flatlab.experiment import slurm as _slurm
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.runner import preflight, run
from flatlab.experiment.slurm import SlurmResources

__all__ = ["run_many", "COLUMNS"]

#: The columns of :func:`run_many`'s table, one row per job.
COLUMNS = ("run", "status", "step", "message", "skipped")


@dataclass(frozen=True)
class _Job:
    """One validated job and how to run it (picklable, for a spawned worker)."""

    path: Path
    config: RunConfig
    progress: bool
    verbose: bool
    damaged: str = ""  # an unfinished run's status or config is damaged: it starts over

    @property
    def name(self) -> str:
        """The run's name in rows and progress lines: its directory's name."""
        return self.path.name


#: The engine :func:`run_many` uses when its caller names none (:func:`on_slurm` sets it).
_ENGINE: list[SlurmResources] = []


@contextlib.contextmanager
def on_slurm(resources: SlurmResources) -> Iterator[None]:
    """Within this block, :func:`run_many` sends its runs to SLURM (and waits for them).

    How a study's pipeline (tuning, final runs, later phases: each a :func:`run_many`) runs on a
    cluster without threading the resources through every stage.
    """
    _ENGINE.append(resources)
    try:
        yield
    finally:
        _ENGINE.pop()


def run_many(jobs: Sequence[tuple[str | Path, RunConfig | dict[str, Any]]], workers: int, *,
             progress: bool = False, verbose: bool = True, headings: bool = False,
             threads: int | None = 1, label: str = "run",
             before: Callable[[], None] | None = None,
             slurm: SlurmResources | None = None, wait: bool = True) -> pd.DataFrame:
    """Run ``(directory, config)`` jobs, ``workers`` at a time, resumably.

    Args:
        jobs: Run directories and their configs (mappings, validated here, or a validated
            :class:`RunConfig`).
        workers: Jobs run at once: 1 runs them in this process, more in spawned processes of
            one thread each, 0 runs (and reads) nothing.
        progress: Show each run's progress bar.
        verbose: Print one line per job that runs (see ``headings``) and, to stderr, the error
            of a job that fails (its traceback unless it is a :class:`FlatlabError`).
        headings: With one worker, print ``[i/N] name`` before each run (``i`` over all jobs,
            a heading for its progress bar) as well as the line after it. That line is
            ``[k/M] name: status (time so far, about the time left)`` (``k`` over the jobs that
            run; ``[i/N]`` with headings).
        threads: Torch threads of runs in this process (``None``: as they are); the count is
            restored afterwards.
        label: What a job is called in a refusal (``"sweep point"``: "sweep point NAME: ...").
        before: Called once everything is checked, before the first run (e.g. to write a
            sweep's spec).
        slurm: Run on a SLURM cluster instead, one job-array element per run
            (:mod:`flatlab.experiment.slurm`; ``workers`` is then ignored): the jobs are
            recorded in the runs' common folder, and a run whose job is still queued or
            running is not submitted again.
        wait: With ``slurm``, wait for the runs (else return them as ``queued``). Without
            ``slurm``, the engine of an enclosing :func:`on_slurm` is used, if any.

    Returns:
        One row per job, in order: ``run`` (directory name), ``status``, ``step``, ``message``
        and ``skipped`` (finished, or alive in another process).

    Raises:
        ConfigError: A config is invalid, or a directory holds a run of another config.
        RunDirError: A run directory's status or config cannot be read.
    """
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (got {workers})")
    if workers == 0:
        return pd.DataFrame(columns=list(COLUMNS))
    planned = _plan(jobs, label, progress=progress, verbose=verbose)
    if before is not None:
        before()
    for parent in sorted({job.path.parent for job, _ in planned}):  # a read-only folder or a
        parent.mkdir(parents=True, exist_ok=True)  # full disk: one OSError now, not per run
    rows: list[dict[str, Any] | None] = [_skipped(job, st) for job, st in planned]
    if slurm is None and _ENGINE:
        slurm = _ENGINE[-1]
    if slurm is not None and planned:
        root = Path(os.path.commonpath([str(job.path.parent) for job, _ in planned]))
        held = _slurm.queued(root)
        for i, (job, _) in enumerate(planned):
            if rows[i] is None and job.name in held:
                rows[i] = {"run": job.name, "status": held[job.name], "step": 0,
                           "message": "its SLURM job is still held", "skipped": True}
        todo = [(i, job) for i, (job, _) in enumerate(planned) if rows[i] is None]
        done = _slurm.submit_and_wait(todo, root, slurm, _run_one, wait=wait, verbose=verbose)
        for i, row in done:
            rows[i] = row
        return pd.DataFrame(rows, columns=list(COLUMNS))
    todo = [(i, job) for i, (job, _) in enumerate(planned) if rows[i] is None]
    if workers == 1:
        done = _run_here(todo, len(planned), headings=headings and verbose, threads=threads)
    else:
        done = _run_pool(todo, workers)
    for i, row in done:
        rows[i] = row
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _plan(jobs: Sequence[tuple[str | Path, RunConfig | dict[str, Any]]], label: str, *,
          progress: bool, verbose: bool) -> list[tuple[_Job, dict[str, Any] | None]]:
    """Validate every job and check its directory; each job with its current status."""
    planned = []
    for path, config in jobs:
        path = Path(path)
        try:  # a RunConfig is taken as validated, as the runner takes it
            cfg = config if isinstance(config, RunConfig) else load_config(config)
        except ConfigError as e:
            raise ConfigError(f"{label} {path.name}: {e}") from None
        damaged = ""
        try:
            st = rundir.read_status(path)
        except RunDirError as e:  # flatlab writes it atomically: damaged from outside
            st, damaged = None, f"status.json is damaged ({rundir.cause(e)})"
        try:
            problem = rundir.conflict(path, to_dict(cfg))
        except RunDirError as e:  # a finished run is mended from its checkpoint (decide)
            problem = None
            if st is None or st["status"] not in ("done", "diverged"):
                damaged = damaged or f"config.yaml is damaged ({rundir.cause(e)})"
        if problem:
            raise ConfigError(f"{label} {path.name}: {problem}")
        try:
            preflight(cfg)
        except FlatlabError as e:
            raise type(e)(f"{label} {path.name}: {e}") from None
        planned.append((_Job(path, cfg, progress, verbose, damaged), st))
    return planned


def _skipped(job: _Job, st: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row of a job that does not run (finished, or alive elsewhere), else ``None``."""
    if st is None or job.damaged:
        return None
    if st["status"] in ("done", "diverged"):
        if rundir.finished_damage(job.path):  # its run mends it (rundir.decide)
            return None
        message = st.get("message", "")
    elif rundir.owned_elsewhere(st):
        message = f"running in process {st.get('pid')} on {st.get('host')}"
    else:
        return None
    return {"run": job.name, "status": st["status"], "step": st["step"], "message": message,
            "skipped": True}


def _run_one(job: _Job) -> dict[str, Any]:
    """Run one job; a run that raises is marked ``failed`` and its row says why."""
    try:
        res = run(job.config, job.path, progress=job.progress, resume=not job.damaged)
        mended = (f"{job.damaged}: trained again from the start" if job.damaged
                  else res.mended)
        if mended and job.verbose:
            print(f"{job.path}: mended: {mended}", file=sys.stderr, flush=True)
        return {"run": job.name, "status": res.status, "step": res.step,
                "message": f"mended: {mended}" if mended else res.message,
                "skipped": not res.ran and not mended}
    except KeyboardInterrupt:
        raise
    except RunBusyError as e:  # another process took it since the plan: left to it, untouched
        if job.verbose:
            print(f"{job.path}: skipped: {e}", file=sys.stderr, flush=True)
        return {"run": job.name, "status": "running", "step": 0,
                "message": "running in another process (it holds the directory's lock)",
                "skipped": True}
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, the others go on
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        message = (f"{e.filename} {e.strerror}" if isinstance(e, OSError) and e.filename
                   and e.strerror else f"{type(e).__name__}: {text}")
        if job.verbose and isinstance(e, (FlatlabError, OSError)):  # bad input, a file: a line
            print(f"{job.path}: {message}", file=sys.stderr, flush=True)
        elif job.verbose:
            traceback.print_exc()
        try:
            st = rundir.read_status(job.path) or {}
        except FlatlabError:
            st = {}
        if st.get("status") != "failed":
            try:
                rundir.mark_failed(job.path, to_dict(job.config), message)
            except OSError as e2:  # not even a status can be written (a full disk): stop here
                raise OSError(e2.errno, f"{e2.strerror} (so the sweep stops; what finished is "
                                        "kept and a rerun resumes the rest)", e2.filename
                              ) from None
        return {"run": job.name, "status": "failed", "step": st.get("step", 0),
                "message": message, "skipped": False}


def _run_here(todo: list[tuple[int, _Job]], total: int, *, headings: bool,
              threads: int | None) -> list[tuple[int, dict[str, Any]]]:
    """Run the jobs one after another in this process (torch's thread count restored)."""
    saved = torch.get_num_threads()
    out = []
    t0 = time.time()
    try:
        for k, (i, job) in enumerate(todo):
            if threads is not None:
                torch.set_num_threads(threads)
            if headings:
                print(f"[{i + 1}/{total}] {job.name}", flush=True)
            row = _run_one(job)
            if job.verbose:
                where = f"[{i + 1}/{total}]" if headings else f"[{k + 1}/{len(todo)}]"
                print(f"{where} {job.name}: {row['status']}{_eta(k + 1, len(todo), t0)}",
                      flush=True)
            out.append((i, row))
    finally:
        torch.set_num_threads(saved)
    return out


def _eta(done: int, total: int, t0: float) -> str:
    """`` (T s so far, about R s left)`` after ``done`` of ``total`` runs (the mean so far)."""
    if not done:
        return ""
    spent = time.time() - t0
    left = spent / done * (total - done)
    return f" ({_clock(spent)} so far" + (f", about {_clock(left)} left)" if left else ")")


def _clock(seconds: float) -> str:
    """``42 s``, ``3 min 5 s`` or ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _in_worker(job: _Job) -> dict[str, Any]:
    """:func:`_run_one` in a spawned worker process, on one thread (Ctrl-C: an interrupted row).

    After a SIGINT the worker starts nothing more: a job it is handed then (the pool queues
    some ahead) comes back as not run.
    """
    global _INTERRUPTED
    if _INTERRUPTED:
        return {"run": job.name, "status": "interrupted", "step": 0,
                "message": "not started (interrupted)", "skipped": True}
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return _run_one(job)
    except KeyboardInterrupt:  # the run left its directory interrupted (resumable)
        _INTERRUPTED = True
        return {"run": job.name, "status": "interrupted", "step": 0, "message": "interrupted",
                "skipped": False}
    finally:
        signal.signal(signal.SIGINT, _note_interrupt)


#: Set in a worker by a SIGINT: it starts no further job.
_INTERRUPTED = False


def _interrupt_once(signum: int, frame: Any) -> None:
    """A worker's first SIGINT during a run: KeyboardInterrupt, and later ones only noted.

    A terminal's Ctrl-C reaches the worker, and the parent passes it on too: a second
    KeyboardInterrupt would land in the run's clean-up (a ``__del__``, a ``finally``) and print
    a traceback there.
    """
    global _INTERRUPTED
    _INTERRUPTED = True
    signal.signal(signal.SIGINT, _note_interrupt)
    raise KeyboardInterrupt


def _note_interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGINT between runs: no traceback, and no run started after it."""
    global _INTERRUPTED
    _INTERRUPTED = True


def _run_pool(todo: list[tuple[int, _Job]], workers: int) -> list[tuple[int, dict[str, Any]]]:
    """Run the jobs in ``workers`` spawned processes; rows in the jobs' order."""
    if not todo:
        return []
    out = []
    t0 = time.time()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_quiet_on_interrupt) as pool:
        try:
            rows = pool.map(_in_worker, [job for _, job in todo])
            for k, ((i, job), row) in enumerate(zip(todo, rows, strict=True)):
                if job.verbose:
                    print(f"[{k + 1}/{len(todo)}] {job.name}: {row['status']}"
                          f"{_eta(k + 1, len(todo), t0)}", flush=True)
                out.append((i, row))
        except KeyboardInterrupt:
            _interrupt(pool)
            raise
    return out


def _quiet_on_interrupt() -> None:
    """A worker notes a SIGINT between runs (:func:`_note_interrupt`) instead of dying noisily."""
    signal.signal(signal.SIGINT, _note_interrupt)


def _interrupt(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C of the parent: no new run starts, and the running ones are interrupted.

    A terminal sends SIGINT to the whole process group, workers included; a ``kill -INT`` of the
    parent alone reaches them here. Each running run leaves its directory as an interrupted run
    (resumable), as in a single process.
    """
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGINT)
            except OSError:
                pass
    for proc in procs:
        proc.join(timeout=30)
