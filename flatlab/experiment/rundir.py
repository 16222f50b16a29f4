"""The run directory: its on-disk contract has one owner (DESIGN.md §7).

::

    config.yaml      the resolved config
    status.json      running | done | diverged | failed, with step, timings, versions, device,
                     and the process that writes it (pid, host, heartbeat)
    metrics.parquet  long form: step, epoch, metric, scope, value
    checkpoint.pt    everything needed to resume (and the final state, for later measurement)

Metric scopes: ``avg`` (the averaged model ``x̄``), ``mean`` (mean over the node models),
``network`` (a quantity of the whole network) and ``"0" … "n-1"`` (one node).

This module is the only writer of ``status.json`` (:class:`StatusWriter`, :func:`mark_failed`)
and the only reader of run files. Everything it reads is checked before it is used, and every
problem is one :class:`~flatlab.errors.RunDirError` line naming the file and what to do:

- ``checkpoint.pt`` is read with ``torch.load(weights_only=True)`` (tensors and plain data only:
  a crafted pickle is refused, never run), then checked field by field
  (:func:`load_checkpoint`) and against the run it is to resume (:func:`check_fits`);
- ``status.json`` must be a JSON object with a known status (:func:`read_status`);
- ``config.yaml`` is read by the strict safe loader of :mod:`flatlab.experiment.io`.

**Interrupted runs.** A running process records its ``pid``, ``host`` and the start time of the
process, and refreshes ``heartbeat`` (Unix seconds) every :data:`HEARTBEAT_S` seconds from a
background thread. A ``running`` status whose process is gone (on this host: no process with that
pid and start time; on another host: no heartbeat for :data:`STALE_S` seconds) is shown as
``interrupted`` (:func:`shown_status`); ``flatlab run`` resumes it from its checkpoint. A run
directory whose process is still alive is never written by a second process: :class:`RunLock`
(an ``flock`` on the directory, held from before :func:`decide` to the last file) makes that hold
whatever the timing, and :func:`finished_damage` / :func:`repair` check and mend a finished run's
files before it is trusted.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd
import torch
import yaml

from flatlab.errors import RunBusyError, RunDirError
from flatlab.experiment.config import EXECUTION_FIELDS, RunConfig, to_dict
from flatlab.experiment.io import (
    atomic_write,
    read_json,
    read_parquet,
    read_yaml,
    write_parquet,
    write_text,
)
from flatlab.measures.named import TABLES

__all__ = ["STATUSES", "METRIC_COLUMNS", "SHOWN_STATUSES", "HEARTBEAT_S", "STALE_S", "Status",
           "Checkpoint", "read_status", "shown_status", "process_gone", "read_config", "identity",
           "load_checkpoint", "check_fits", "save_checkpoint", "final_models", "average_model",
           "StatusWriter", "mark_failed", "clear_results", "conflict", "owned_elsewhere",
           "decide", "start_files", "write_metrics", "RESTART_HINT", "RunLock",
           "finished_damage", "repair", "clear_temporaries", "cause"]

STATUSES = ("running", "done", "diverged", "failed")
#: Columns of ``metrics.parquet`` (long form).
METRIC_COLUMNS = ("step", "epoch", "metric", "scope", "value")
#: What :func:`shown_status` reports: a ``running`` run whose process is gone is ``interrupted``.
SHOWN_STATUSES = (*STATUSES, "interrupted")
#: Seconds between two heartbeats of a running process.
HEARTBEAT_S = 30.0
#: A run on another host with no heartbeat for this long is ``interrupted``.
STALE_S = 10 * HEARTBEAT_S
#: What to do with a run directory that cannot be resumed.
RESTART_HINT = "start over with --restart (run(..., resume=False)) or delete the directory"


# ---------------------------------------------------------------------- status
class Status(TypedDict, total=False):
    """``status.json``: a JSON object (the fields :class:`StatusWriter` writes).

    ``status`` and ``step`` are always present (:func:`read_status` checks them); a status of an
    older flatlab, or of a run that failed before its runner started (:func:`mark_failed`), may
    lack the others. It stays a mapping because it is a JSON record that results tables, the
    command line and sweeps read by key.
    """

    status: str              # one of STATUSES
    step: int                # steps done
    epoch: float
    message: str             # why it failed or diverged; empty otherwise
    name: str
    total_steps: int
    steps_per_epoch: int
    started: str             # ISO time of the first start
    updated: str             # ISO time of this write
    elapsed_s: float         # training time over all starts (seconds)
    timings_s: dict          # where it went: total, train, measures (each and sum), checkpoint
    threads: int             # torch's CPU threads in the writing process
    device: str
    backend: str
    processes: int
    versions: dict[str, str]
    nodes: int
    parameters: int
    train_eval_size: int
    test_eval_size: int
    curvature_eval_size: int
    pid: int | None          # the writing process (None: released, see StatusWriter.release)
    host: str
    pid_start: int | None
    heartbeat: float         # Unix seconds, refreshed every HEARTBEAT_S while running


def read_status(path: str | Path) -> Status | None:
    """The ``status.json`` of a run directory, or ``None`` when there is none.

    Raises:
        RunDirError: The file is not a JSON object with a known ``status`` and a ``step``.
    """
    p = Path(path) / "status.json"
    if not p.exists():
        return None
    try:
        st = read_json(p, "status file", error=RunDirError)
    except RunDirError as e:
        raise RunDirError(f"{e}; {RESTART_HINT}") from None
    missing = [k for k in ("status", "step") if k not in st]
    if missing:
        raise RunDirError(f"status file {p} has no {' and no '.join(map(repr, missing))} field "
                          f"(a flatlab status holds both); {RESTART_HINT}")
    if st.get("status") not in STATUSES:
        raise RunDirError(f"status file {p}: status {st.get('status')!r} is unknown (accepted: "
                          f"{', '.join(STATUSES)}); {RESTART_HINT}")
    step = st.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise RunDirError(f"status file {p}: step {step!r} is not an integer >= 0; {RESTART_HINT}")
    return st


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name may hold spaces: the fields after it start after the last ")"
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def process_gone(st: Status, now: float | None = None) -> bool:
    """Whether the process that wrote a ``running`` status is certainly gone.

    On this host: no process with the recorded pid, or one started at another time (the pid was
    reused). On another host: no heartbeat for :data:`STALE_S` seconds. A status whose ``pid`` is
    ``null`` was released by its process. A status without these fields (written by an older
    flatlab) is never called gone.
    """
    pid, host = st.get("pid"), st.get("host")
    if "pid" in st and pid is None:  # released by its process (StatusWriter.release)
        return True
    if isinstance(pid, int) and host == socket.gethostname():
        if not _pid_alive(pid):
            return True
        start = _process_start(pid)
        return start is not None and st.get("pid_start") not in (None, start)
    beat = st.get("heartbeat")
    if isinstance(beat, (int, float)) and not isinstance(beat, bool):
        return (time.time() if now is None else now) - beat > STALE_S
    return False


def shown_status(st: Status | None) -> str | None:
    """The status to show: ``interrupted`` for a ``running`` run whose process is gone."""
    if st is None:
        return None
    if st["status"] == "running" and process_gone(st):
        return "interrupted"
    return st["status"]


def owned_elsewhere(st: Status | None) -> bool:
    """A ``running`` status written by another process that is still alive (or may be)."""
    if st is None or st["status"] != "running" or process_gone(st):
        return False
    same = st.get("pid") == os.getpid() and st.get("host") == socket.gethostname()
    return not same and ("pid" in st or "heartbeat" in st)


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on the directory, held while it runs.

    :func:`flatlab.experiment.run` takes it before it reads anything to decide what to do and
    holds it until the run has written its last file, so two processes started on one folder at
    the same moment cannot both run, whatever the timing: the second is refused
    (:class:`~flatlab.errors.RunBusyError`, one line; a sweep or study skips the point). The
    kernel releases the lock when its process ends, however it ends (an exception, SIGKILL, a
    lost machine), so a later process resumes the run. The status file's ``pid`` and heartbeat
    still say *who* writes; the lock is what makes the claim atomic.

    The lock is taken on the directory itself, so nothing is written to take it (a new directory
    is created first, and removed again when it stays empty). Where a file system refuses locks
    on directories (NFS emulates ``flock`` with byte-range locks, which need a file open for
    writing), a hidden ``.flatlab.lock`` file in the directory is locked instead. Without
    ``fcntl`` (Windows) there is no lock and only the status check guards the directory.
    """

    #: The lock file used where a directory cannot be locked.
    FILE = ".flatlab.lock"

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self._fd: int | None = None
        self._made = False

    def acquire(self) -> None:
        """Take the lock, creating the directory when it is new (a file path is left to decide).

        Raises:
            RunBusyError: Another process holds it.
            RunDirError: The directory cannot be created or opened.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks through fcntl
            return
        out = self.out
        if out.exists() and not out.is_dir():
            return  # decide() refuses a file in one line
        if not out.exists():
            try:
                out.mkdir(parents=True)
                self._made = True
            except FileExistsError:
                pass
            except OSError as e:
                raise RunDirError(f"cannot create run directory {out}: {e.strerror or e}; "
                                  "accepted: a path in a writable folder") from None
        try:
            fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise RunDirError(f"cannot open run directory {out}: {e.strerror or e}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise
            except OSError:  # no flock on a directory here: lock a file in it instead
                os.close(fd)
                fd = os.open(out / self.FILE, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(
                f"run directory {out} is being written by another process (it holds the "
                "directory's lock); wait for it to end or stop it, or choose another "
                "directory") from None
        except OSError as e:
            os.close(fd)
            raise RunDirError(f"cannot lock run directory {out}: {e.strerror or e}") from None
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (idempotent); a directory it created and nothing filled is removed.

        Only by the holder: a process that created the directory but lost the race for its lock
        leaves it to the winner.
        """
        if self._made and self._fd is not None:
            try:
                self.out.rmdir()  # only an empty directory: nothing was written
            except OSError:
                pass
            self._made = False
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StatusWriter:
    """Writes a run's ``status.json`` (atomically) and keeps its heartbeat.

    ``base`` holds the fields that do not change during a run (name, sizes, device, versions);
    :meth:`write` adds the status, the step and the time. While the status is ``running``, a
    daemon thread rewrites it with a fresh ``heartbeat`` every :data:`HEARTBEAT_S` seconds.
    """

    def __init__(self, out: Path, base: dict[str, Any], steps_per_epoch: int,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = Path(out) / "status.json"
        self.base = dict(base, pid=os.getpid(), host=socket.gethostname(),
                         pid_start=_process_start(os.getpid()))
        self.spe = steps_per_epoch
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._interval = heartbeat_s
        self._thread: threading.Thread | None = None

    def write(self, status: str, step: int, elapsed: float, message: str = "", *,
              timings: dict[str, Any] | None = None) -> None:
        """Record ``status`` at ``step``; a final status stops the heartbeat.

        ``timings`` (``Record.timings``: total, train, measures, checkpoint seconds) is kept as
        ``timings_s``.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        d = dict(self.base, status=status, step=step, epoch=step / self.spe,
                 updated=time.strftime("%Y-%m-%dT%H:%M:%S"), elapsed_s=round(elapsed, 3),
                 message=message, **({"timings_s": timings} if timings is not None else {}))
        if status != "running":
            self.stop()
        with self._lock:
            self._last = d
            self._write(d)
        if status == "running" and self._thread is None and self._interval > 0:
            beat = threading.Thread(target=self._beat, name="flatlab-heartbeat", daemon=True)
            beat.start()  # started before it is kept: a Ctrl-C between the two leaves none
            self._thread = beat

    def _write(self, d: dict[str, Any]) -> None:
        write_text(self.path, json.dumps(dict(d, heartbeat=round(time.time(), 3)), indent=1)
                   + "\n")

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if self._last is None or self._last["status"] != "running":
                    return
                try:
                    self._write(self._last)
                except OSError:  # the folder went away; the main thread will say so
                    return

    def release(self) -> None:
        """Leave a ``running`` run as a killed process would, but say so.

        ``pid`` becomes ``null``, so the run shows as ``interrupted`` and any process may resume
        it (what ``run(..., stop_after=k)`` does).
        """
        self.stop()
        with self._lock:
            if self._last is not None:
                self._last = dict(self._last, pid=None, pid_start=None)
                self._write(self._last)

    def stop(self) -> None:
        """Stop the heartbeat (idempotent)."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread() and t.ident is not None:
            t.join()


def mark_failed(out: Path, cfg_dict: dict[str, Any], message: str) -> None:
    """Record a run that failed before its runner could (e.g. missing data files).

    Writes ``config.yaml`` when the directory has none, and a ``failed`` status; never touches a
    directory whose run is alive in another process.
    """
    out = Path(out)
    try:
        st = read_status(out)
    except RunDirError:
        st = None
    if owned_elsewhere(st):
        return
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").is_file():
        write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    StatusWriter(out, {"name": cfg_dict.get("name")}, 1, heartbeat_s=0).write(
        "failed", 0 if st is None else st["step"], 0.0, message)


# ---------------------------------------------------------------------- config
def read_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.yaml`` of a run directory (a mapping), or ``None`` when there is none."""
    p = Path(path) / "config.yaml"
    if not p.exists():
        return None
    return read_yaml(p, "run config", error=RunDirError)


def identity(d: dict[str, Any]) -> dict[str, Any]:
    """A config without its execution fields (what must match to resume a directory).

    A field the config does not hold takes its default first: a ``config.yaml`` written before
    a field existed (``clock``, ``topology.faults``, ``train.stragglers``) ran with the
    behaviour that field's default keeps, so it still matches the same run of today's flatlab.
    """
    full = _with_defaults(d, to_dict(RunConfig()))
    return {k: v for k, v in full.items() if k not in EXECUTION_FIELDS}


def _with_defaults(d: Any, base: Any) -> Any:
    """``d`` with every key of the mapping ``base`` it lacks, recursively."""
    if not (isinstance(d, dict) and isinstance(base, dict)):
        return d
    out = dict(base)
    for k, v in d.items():
        out[k] = _with_defaults(v, base.get(k))
    return out


# ---------------------------------------------------------------------- checkpoint
@dataclass
class Checkpoint:
    """``checkpoint.pt``: everything needed to resume a run, and its final state.

    Saved as a plain mapping of these fields (tensors and plain data only, so that it loads with
    ``weights_only=True``). Per-node tensors hold all ``n`` nodes, whatever the number of
    processes that wrote it.

    Attributes:
        step: Steps done.
        state: ``algorithms.state_dict`` of the algorithm state (``x`` is ``[n, P]``).
        buffers: Stacked model buffers ``{name: [n, ...]}``.
        mixer: The mixer's communication counts (``MixStats.state_dict``).
        metrics: Metric rows so far, ``(step, epoch, metric, scope, value)``.
        elapsed: Training seconds so far.
        loss_acc: ``[sum, count]`` of batch losses since the last measurement.
        rng: Per process ``(torch RNG state, the run GPU's RNG state or None)``.
        processes: Number of processes that wrote it.
        tables: Rows of extra tables so far (``density``, ``landscape``).
        started: ISO time of the run's first start.
        config: The run's config (what a resumed run must match).
        timings: Seconds so far per measure (``measures``) and writing checkpoints
            (``checkpoint``).
        stale: Under ``train.staleness``, the points of the last ``tau`` steps
            (``{"past": [n, tau, P]}``: :class:`~flatlab.engine.oracle.DelayedGradients`).
        delays: Under ``topology.delays``, the past inputs of each gossip channel
            (``{"channel0": [k, n, ...]}``: :class:`~flatlab.comm.DelayedMixer`).
    """

    step: int
    state: dict[str, Any]
    buffers: dict[str, Any]
    mixer: dict[str, Any]
    metrics: list[Any]
    elapsed: float
    loss_acc: list[float]
    rng: list[Any] = field(default_factory=list)
    processes: int = 1
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    started: str | None = None
    config: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    stale: dict[str, Any] = field(default_factory=dict)
    delays: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The mapping saved to disk."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


_TOP = {"step": int, "state": dict, "buffers": dict, "mixer": dict, "metrics": list,
        "elapsed": (int, float), "loss_acc": list}
_PLAIN = (int, float, bool, str, type(None))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint read safely and checked field by field.

    ``torch.load(weights_only=True)`` accepts tensors and plain containers only, so a pickle that
    would run code is refused before anything in it runs.

    Raises:
        RunDirError: The file cannot be read, is not a checkpoint of flatlab, or is damaged.
    """
    p = Path(path)
    bad = f"checkpoint {p}"
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise RunDirError(f"{bad} cannot be read: {e.strerror or e}") from None
    if not head:
        raise RunDirError(f"{bad} is empty (the run was stopped while writing it?); "
                          f"{RESTART_HINT}")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch's zip format, or its legacy pickle
        raise RunDirError(f"{bad} is not a checkpoint file (not written by torch.save); "
                          f"{RESTART_HINT}")
    try:
        with open(p, "rb") as fh:
            ck = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = ("it holds objects other than tensors and plain data (refused: loading them could "
               "run code)" if "weights only" in str(e).lower() or "weights_only" in str(e)
               else f"it is not a readable checkpoint ({str(e).splitlines()[0][:120]})")
        raise RunDirError(f"{bad}: {why}; {RESTART_HINT}") from None
    except (EOFError, RuntimeError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120] or type(e).__name__
        raise RunDirError(f"{bad} is truncated or not a checkpoint ({first}); {RESTART_HINT}") \
            from None
    return _checked(ck, bad)


def _checked(ck: Any, bad: str) -> Checkpoint:
    """The :class:`Checkpoint` of a loaded mapping, checked field by field.

    ``bad`` names the file in messages.
    """
    if not isinstance(ck, dict):
        raise RunDirError(f"{bad} holds a {type(ck).__name__}, not a flatlab checkpoint; "
                          f"{RESTART_HINT}")
    for key, kind in _TOP.items():
        v = ck.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise RunDirError(f"{bad}: field {key!r} is missing or not a "
                              f"{getattr(kind, '__name__', 'number')}; it is not a flatlab "
                              f"checkpoint or it is damaged; {RESTART_HINT}")
    state = ck["state"]
    x = state.get("x")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise RunDirError(f"{bad}: the state holds no [n, P] parameter matrix x; {RESTART_HINT}")
    if not isinstance(state.get("__class__"), str):
        raise RunDirError(f"{bad}: the state does not name its algorithm's state class; "
                          f"{RESTART_HINT}")
    for k, v in list(state.items()) + list(ck["buffers"].items()):
        if not isinstance(v, (torch.Tensor, *_PLAIN)):
            raise RunDirError(f"{bad}: state field {k!r} is a {type(v).__name__}; {RESTART_HINT}")
    if ck["step"] < 0 or any(not isinstance(r, (list, tuple)) or len(r) != 5
                             for r in ck["metrics"]):
        raise RunDirError(f"{bad}: its step or metric rows are damaged; {RESTART_HINT}")
    rng = ck.get("rng")  # older checkpoints hold one process's state, not a list
    rng = rng if isinstance(rng, list) else [(rng, ck.get("cuda_rng"))]
    tables, config, timings = ck.get("tables"), ck.get("config"), ck.get("timings")
    if not (isinstance(timings, dict)
            and isinstance(timings.get("measures", {}), dict)
            and all(isinstance(v, (int, float)) for v in timings.get("measures", {}).values())
            and isinstance(timings.get("checkpoint", 0.0), (int, float))):
        timings = {}  # older checkpoints have none; a damaged one only loses the split
    stale = ck.get("stale", {})
    if not isinstance(stale, dict) or any(not isinstance(v, torch.Tensor) or v.dim() < 2
                                          for v in stale.values()):
        raise RunDirError(f"{bad}: its stale-gradient points are damaged; {RESTART_HINT}")
    delays = ck.get("delays", {})
    if not isinstance(delays, dict) or any(not isinstance(v, torch.Tensor) or v.dim() < 2
                                           for v in delays.values()):
        raise RunDirError(f"{bad}: its delayed messages are damaged; {RESTART_HINT}")
    return Checkpoint(step=ck["step"], state=state, buffers=ck["buffers"], mixer=ck["mixer"],
                      metrics=ck["metrics"], elapsed=float(ck["elapsed"]),
                      loss_acc=ck["loss_acc"], rng=rng, processes=ck.get("processes", 1),
                      tables=tables if isinstance(tables, dict) else {},
                      started=ck.get("started"),
                      config=config if isinstance(config, dict) else None, timings=timings,
                      stale=stale, delays=delays)


def check_fits(ck: Checkpoint, path: Path, *, state: dict[str, Any],
               buffers: dict[str, torch.Tensor], n: int) -> None:
    """Check that a checkpoint belongs to the run about to resume from it.

    Args:
        ck: From :func:`load_checkpoint`.
        path: The checkpoint file (for messages).
        state: ``state_dict`` of the run's freshly initialised algorithm state (this process's
            rows).
        buffers: The run's stacked buffers (this process's rows).
        n: Number of nodes of the whole network.

    Raises:
        RunDirError: Another algorithm, another number of nodes or parameters, other buffers.
    """
    bad = f"checkpoint {path} belongs to another run"
    saved = ck.state
    if saved["__class__"] != state["__class__"]:
        raise RunDirError(f"{bad}: it holds a {saved['__class__']} state, this run's algorithm "
                          f"uses a {state['__class__']}; {RESTART_HINT}")
    for what, mine, theirs in (("state", state, saved), ("buffer", buffers, ck.buffers)):
        if set(mine) - {"__class__"} != set(theirs) - {"__class__"}:
            raise RunDirError(f"{bad}: its {what} fields {sorted(set(theirs) - {'__class__'})} "
                              f"differ from this run's {sorted(set(mine) - {'__class__'})}; "
                              f"{RESTART_HINT}")
        for k, v in mine.items():
            if not isinstance(v, torch.Tensor):
                continue
            w = theirs[k]
            want = (n, *v.shape[1:]) if v.dim() else tuple(v.shape)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != want:
                got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
                raise RunDirError(f"{bad}: {what} {k!r} has shape {got}, this run needs {want} "
                                  f"({n} nodes); {RESTART_HINT}")


def save_checkpoint(out: Path, ck: Checkpoint) -> None:
    """Write ``out/checkpoint.pt`` atomically."""
    def write(p: Path) -> None:  # through a Python file: any path Python can open
        with open(p, "wb") as fh:
            torch.save(ck.to_dict(), fh)

    atomic_write(Path(out) / "checkpoint.pt", write)


def final_models(path: str | Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The node models ``X`` ``[n, P]`` and stacked buffers ``{name: [n, ...]}`` of a run.

    Read from the run directory's checkpoint, the last one written (the final state of a
    finished run); rebuild the run with :func:`~flatlab.experiment.build` on its ``config.yaml``
    to evaluate them.

    Raises:
        RunDirError: ``path`` holds no checkpoint, or one that cannot be used.
    """
    ckpt = Path(path) / "checkpoint.pt"
    if not ckpt.is_file():
        raise RunDirError(f"{path} holds no checkpoint.pt; accepted: a run directory (train it "
                          "first)")
    ck = load_checkpoint(ckpt)
    return ck.state["x"], dict(ck.buffers)


def average_model(path: str | Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The averaged model ``x̄`` ``[P]`` and averaged buffers of a run (:func:`final_models`)."""
    x, buffers = final_models(path)
    return x.double().mean(0).to(x.dtype), {k: (v.mean(0) if v.is_floating_point() else v[0])
                       for k, v in buffers.items()}


def clear_results(out: Path) -> None:
    """Remove the results of an earlier run from ``out`` before a fresh start.

    A fresh start must not leave an older checkpoint behind: a kill before the new run's first
    checkpoint would otherwise resume someone else's state.
    """
    for name in ("checkpoint.pt", "metrics.parquet", *(f"{t}.parquet" for t in TABLES)):
        (Path(out) / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------- results
def start_files(out: Path, cfg_dict: dict[str, Any], measures: dict[str, Any], *,
                fresh: bool) -> None:
    """Create ``out`` and write ``config.yaml`` and ``measures.json`` for a run (re)starting.

    ``fresh``: the run starts from step 0, so an older run's results are removed first
    (:func:`clear_results`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        clear_results(out)
    write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    write_text(out / "measures.json", json.dumps(measures, indent=1) + "\n")


def write_metrics(out: Path, metrics: list[tuple], tables: dict[str, list[dict[str, Any]]]
                  ) -> None:
    """Write ``metrics.parquet`` (long form, :data:`METRIC_COLUMNS`) and the extra tables."""
    df = pd.DataFrame(metrics, columns=list(METRIC_COLUMNS))
    df = df.astype({"step": "int64", "epoch": "float64", "metric": "string", "scope": "string",
                    "value": "float64"})
    write_parquet(Path(out) / "metrics.parquet", df)
    for t, rows in tables.items():
        write_parquet(Path(out) / f"{t}.parquet", pd.DataFrame(rows))


# ---------------------------------------------------------------------- resume decision
def conflict(out: Path, cfg_dict: dict[str, Any]) -> str | None:
    """Why ``out`` cannot take a run of ``cfg_dict`` (``None`` when it can).

    ``out`` is a file, a folder of other files (:func:`foreign_files`), or it holds a run
    (finished or not) of a config that differs in more than its execution fields.

    Raises:
        RunDirError: Its ``config.yaml`` cannot be read.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"run directory {out} is a file; accepted: a directory (or a new path)"
    if (out / "sweep.yaml").is_file():
        return (f"{out} is a sweep folder (it holds sweep.yaml); accepted: a run directory of "
                f"its own (e.g. {out / 'NAME'}) or a new path")
    if not (out / "status.json").exists():
        return foreign_files(out)
    old = read_config(out)
    if old is not None and identity(old) != identity(cfg_dict):
        fields = differences(identity(old), identity(cfg_dict))
        shown = ", ".join(fields[:4]) + (f" and {len(fields) - 4} more" if len(fields) > 4
                                         else "")
        return (f"run directory {out} holds a run with a different config (it differs in "
                f"{shown}); choose another output directory or delete it")
    return None


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted config fields whose values differ between two config mappings."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


#: What a run directory may hold besides its own files before it has a status: what a run,
#: ``flatlab plot`` or a study writes there, and the temporary files of atomic writes.
_RUN_FILES = ("config.yaml", "status.json", "metrics.parquet", "checkpoint.pt", "measures.json",
              "density.parquet", "landscape.parquet", "noise.json", "curves.png", "curves.pdf",
              "slurm.log")  # the run's output when it ran as a SLURM job


def _run_file(name: str) -> bool:
    return (name in _RUN_FILES or name.startswith("events.out.tfevents.")
            or name.startswith(".") or name.endswith(".tmp")
            or re.fullmatch(r"slurm\.rank\d+\.log", name) is not None)  # a distributed job's


def foreign_files(out: Path) -> str | None:
    """Why the folder ``out``, which holds no run status, is not a run directory to write into.

    A folder that holds other files than a run's (a user's notes, a data set), or a
    ``config.yaml`` without the ``measures.json`` that a run writes beside it (a user's own
    config), is refused rather than written over. ``None`` when ``out`` is new, empty or a run
    that started.
    """
    out = Path(out)
    if not out.is_dir():
        return None
    names = {f.name for f in out.iterdir()}
    foreign = sorted(n for n in names if not _run_file(n))
    if not foreign and "config.yaml" in names and "measures.json" not in names:
        foreign = ["config.yaml, not a run's"]
    if not foreign:
        return None
    return (f"run directory {out} holds no run but other files ({foreign[0]}"
            f"{', ...' if len(foreign) > 1 else ''}); accepted: a new or empty folder, or a run "
            "directory")


def finished_damage(out: Path) -> list[str]:
    """What is missing or damaged among a finished run's files; empty when they are sound.

    A finished run is only as good as its files: ``config.yaml`` (what the run was),
    ``metrics.parquet`` (what it measured) and ``checkpoint.pt`` (its final state, which later
    measures read). Each is read whole here: the YAML parsed, the table read, the checkpoint
    loaded and checked (:func:`load_checkpoint`). Each problem is ``"FILE is missing"`` or
    ``"FILE is damaged (why)"``.
    """
    out = Path(out)
    problems = []
    for name, read in (("config.yaml", lambda p: read_yaml(p, "run config", error=RunDirError)),
                       ("metrics.parquet", read_parquet), ("checkpoint.pt", load_checkpoint)):
        if not (out / name).is_file():
            problems.append(f"{name} is missing")
            continue
        try:
            read(out / name)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
            problems.append(f"{name} is damaged ({cause(e)})")
    return problems


def cause(e: Exception) -> str:
    """The first clause of an error's first line (at most 100 characters): why a file is bad."""
    first = (str(e).splitlines() or [""])[0]
    return (first.split("; ")[0][:100] or type(e).__name__).rstrip(".")


def _mend(out: Path, cfg_dict: dict[str, Any], st: Status, damage: list[str]
          ) -> tuple[str, Any]:
    """What to do with a finished run of ``cfg_dict`` whose files are damaged.

    A sound checkpoint of the same config holds everything else (its config, every metric row
    and extra table): ``("repair", (status, checkpoint, damage))`` rewrites the other files from
    it, nothing trained. Without one the run is trained again from the start: ``("redo",
    damage)``. Never a run of another config: a readable ``config.yaml`` or checkpoint that
    differs is refused as any other conflict.
    """
    if not any(d.startswith("config.yaml") for d in damage):
        problem = conflict(out, cfg_dict)
        if problem:
            return "error", problem.replace("choose another output directory or delete it",
                                            f"choose another output directory or {RESTART_HINT}")
    if any(d.startswith("checkpoint.pt") for d in damage):
        return "redo", damage
    ck = load_checkpoint(out / "checkpoint.pt")
    if ck.config is None or identity(ck.config) != identity(cfg_dict):
        return "error", (f"run directory {out}: {'; '.join(damage)}, and its checkpoint was "
                         f"written by a run with a different config; {RESTART_HINT}")
    return "repair", (st, ck, damage)


def clear_temporaries(out: Path) -> list[str]:
    """Remove what dead writers left of their atomic writes (``.NAME.tmpPID-TID``); their names.

    Called by the holder of the directory's :class:`RunLock` only: no other writer is alive,
    so every temporary file there is a killed process's leftover.
    """
    out = Path(out)
    gone = []
    if out.is_dir():
        for f in out.iterdir():
            if f.name.startswith(".") and ".tmp" in f.name and f.is_file():
                f.unlink(missing_ok=True)
                gone.append(f.name)
    return gone


def repair(out: Path, ck: Checkpoint, cfg_dict: dict[str, Any]) -> None:
    """Rewrite a finished run's config, metrics and extra tables from its sound checkpoint."""
    out = Path(out)
    write_text(out / "config.yaml", yaml.safe_dump(ck.config or cfg_dict, sort_keys=False))
    write_metrics(out, list(ck.metrics), ck.tables)


def decide(out: Path, cfg_dict: dict[str, Any], resume: bool
           ) -> tuple[str, Status | Checkpoint | str | None]:
    """What to do with the run directory ``out`` for a run of ``cfg_dict``.

    Returns ``("finished", status)`` for a finished run (done or diverged) of the same config,
    ``("start", checkpoint)`` to resume (``None``: start afresh), ``("repair", ...)`` or
    ``("redo", damage)`` for a finished run whose files are damaged (:func:`_mend`), or
    ``("error", message)``. Everything is read and checked here, before anything is written.

    Raises:
        RunDirError: (when resuming) a damaged status, config or checkpoint.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        return "error", f"run directory {out} is a file; accepted: a directory (or a new path)"
    try:
        st = read_status(out)
    except RunDirError:
        if resume:
            raise
        st = None  # --restart overwrites a damaged status
    if (out / "sweep.yaml").is_file():
        return "error", conflict(out, cfg_dict)
    if owned_elsewhere(st):
        return "error", (f"run directory {out} is being run by process {st.get('pid')} on "
                         f"{st.get('host')} (its status is running and the process is alive); "
                         "wait for it to end or stop it, or choose another directory")
    if st is None:
        problem = foreign_files(out)
        if problem:
            return "error", problem
    if st is None or not resume:
        return "start", None
    if st["status"] in ("done", "diverged"):
        damage = finished_damage(out)
        if damage:
            return _mend(out, cfg_dict, st, damage)
    problem = conflict(out, cfg_dict)
    if problem:
        return "error", problem.replace("choose another output directory or delete it",
                                        f"choose another output directory or {RESTART_HINT}")
    if st["status"] in ("done", "diverged"):
        return "finished", st
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        return "start", None
    ck = load_checkpoint(ckpt)
    if ck.config is not None and identity(ck.config) != identity(cfg_dict):
        return "error", (f"checkpoint {ckpt} was written by a run with a different config; "
                         f"{RESTART_HINT}")
    return "start", ck
