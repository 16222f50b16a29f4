"""A run across processes: one decision for all ranks, failure verdicts, SIGTERM.

With ``backend: distributed`` every rank runs :func:`flatlab.experiment.runner.run`; rank 0 reads
the run directory and the others hear its decision (:func:`decide`), a failure is recorded with
the watchdog's verdict on which rank was lost (:func:`record_failure`), and SIGTERM (how
torchrun stops the other workers) ends the loop at the next step instead of killing the process
(:func:`catch_sigterm`). In a one-process run these are the plain operations.

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

import signal
import threading
from pathlib import Path
from typing import Any

import torch.distributed as dist

from flatlab.comm.process import PeerLost, Processes, Watchdog
from flatlab.errors import FlatlabError, RankLostError, RunBusyError, RunDirError
from flatlab.experiment import rundir
from flatlab.experiment.hooks import StatusFile, Terminated

__all__ = ["decide", "record_failure", "run_id", "catch_sigterm"]


def decide(out: Path, cfg_dict: dict[str, Any], resume: bool, procs: Processes | None,
           lock: rundir.RunLock) -> tuple[str, Any]:
    """:func:`rundir.decide` on rank 0 under the directory's ``lock``, heard by every rank.

    Rank 0 (the one writer) takes ``lock`` first; a refusal, a busy directory or a read that
    fails is raised on every rank alike (a busy one as :class:`RunBusyError`).
    """
    if procs is None:
        lock.acquire()
        decision = rundir.decide(out, cfg_dict, resume)
    elif procs.rank == 0:
        try:
            lock.acquire()
            decision = rundir.decide(out, cfg_dict, resume)
        except RunBusyError as e:
            decision = "busy", str(e)
        except FlatlabError as e:  # reported on every rank below
            decision = "error", str(e)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            decision = "error", f"cannot resume from {out}: {type(e).__name__}: {e}"
    else:
        decision = None
    if procs is not None:

        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    if decision[0] == "busy":
        raise RunBusyError(decision[1])
    if decision[0] == "error":
        raise RunDirError(decision[1])
    return decision


def record_failure(e: BaseException, out: Path, status: StatusFile, watchdog: Watchdog | None,
            waiting: bool) -> None:
    """Record a failure in ``status.json``.

    The error, or the watchdog's verdict on a lost rank (then raised as
    :class:`RankLostError`); ``waiting``: the mixer was inside a collective.
    """
    msg = "interrupted" if isinstance(e, KeyboardInterrupt) else \
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    terminated = isinstance(e, Terminated)
    lost = None
    if isinstance(e, PeerLost):
        msg = lost = e.verdict
    elif watchdog is not None:
        if waiting or terminated:
            msg = lost = watchdog.verdict(e, terminated=terminated)
        elif not isinstance(e, KeyboardInterrupt):
            watchdog.blame_self(msg)
    if isinstance(e, KeyboardInterrupt) and lost is None:
        # Ctrl-C is an interrupt, not a failure: left as a killed process leaves it (shown as
        # interrupted, resumed from its last checkpoint by the same command)
        status.release()
    else:
        status.fail(msg)
    if watchdog is not None:
        watchdog.close()
        watchdog.mark_exited()
    if lost is not None:
        raise RankLostError(f"{lost}; the run in {out} is marked failed") from None


def run_id(rank: int) -> int:
    """How many runs this process has started in its group.

    The same on every rank (all ranks run the same sequence), so one run's store keys never
    meet another's.
    """
    store = dist.distributed_c10d._get_default_store()
    return int(store.add(f"flatlab/runs/{rank}", 1))


def catch_sigterm(flag: threading.Event) -> Any:
    """Let SIGTERM set ``flag`` (checked at every step) instead of killing the process.

    torchrun stops the other workers with SIGTERM when one fails; they must still record the
    verdict and mark the run failed. Returns the previous handler (``None`` off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
