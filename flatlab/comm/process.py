"""Processes of a distributed run: joining the process group, and naming a rank that was lost.

:func:`join` starts (or adopts) the default process group from the environment ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on the CPU, NCCL
on a GPU (``cuda:LOCAL_RANK``), with an explicit ``timeout`` so that a collective waiting for a lost
rank fails after ``timeout`` seconds instead of the default 10-30 minutes.

:class:`Watchdog` makes that failure say *which* rank was lost. Each rank publishes a heartbeat in
the rendezvous store (a background thread, every ``interval`` seconds) together with the number
of communication calls it has entered. When a call fails (gloo reports a closed connection at
once, and a hung peer after ``timeout``), :meth:`Watchdog.verdict` looks at the store:

1. a verdict already recorded by another rank (first writer wins, via ``compare_set``) is reused,
   so every survivor prints the same line;
2. otherwise a rank whose heartbeat stops (killed, stopped, machine gone) is the lost one;
3. otherwise every rank is alive, and a rank is hung only on evidence that holds for the whole
   timeout: outside any communication call in both looks, its call count unchanged for the
   timeout (each heartbeat says how long it has been unchanged), and not ahead of the judging
   rank. A rank that is merely slow keeps entering calls and is never named; nor is one that
   waits in a call (a victim), unless it alone lags behind calls every other rank has passed;
4. when no rank fits, the line says that every rank is alive and none is clearly hung, with the
   call counts, rather than guess (:func:`blame` holds these rules, apart from the store).

Ranks legitimately stand one call apart (point-to-point exchanges do not line up all ranks, and
a rank that posts only some of an exchange's messages before it hangs lets some peers through):
counting calls alone, a rank waiting behind a faster peer looks as stuck as the hung one.

Stretches where ranks work unevenly (rank 0 measuring the averaged model or writing files
alone, a slow setup) are not process-group calls: :meth:`Watchdog.alone` and
:meth:`Watchdog.barrier` wait for them in the store, watching heartbeats, so a long measurement
is not mistaken for a hang. There a rank that does not arrive is lost when its heartbeat stops,
or hung when it has not arrived within ``solo_timeout`` seconds (the rank working alone, or
every rank during setup) or ``timeout`` seconds (the others, which come straight from the same
communication calls: a rank that hangs between its last call and the barrier).

A rank that fails in its own code (an exception outside communication) records its own verdict
before it exits, and a rank that leaves after a verdict marks itself as exited, so the cascade of
closed connections that follows one loss is never blamed on the messengers.

Limits: the store lives in the launcher (``torchrun``) or, when processes are started by hand,
in rank 0; if that host is gone the verdict says so. On NCCL a hung collective is ended by
PyTorch's own watchdog (which aborts the process after ``timeout``), not by this one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from flatlab.errors import FlatlabError

__all__ = ["Processes", "join", "leave", "Watchdog", "PeerLost", "Beat", "blame", "LAUNCH_HINT"]

LAUNCH_HINT = ("launch with `torchrun --nproc_per_node=K -m flatlab run CONFIG "
               "backend=distributed` (K processes dividing the number of nodes)")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_PREFIX = "flatlab/"
_TORCH_DIST = os.path.dirname(dist.__file__)
#: Code objects in which a thread waits for communication (the mixer registers its wait).
WAIT_CODES: set = set()


@dataclass(frozen=True)
class Processes:
    """This process's place in the group.

    Attributes:
        rank, world_size: This process and the number of processes ``K``.
        local_rank: Index on this machine (selects the GPU).
        device: The device this rank computes on.
        backend: ``"gloo"`` or ``"nccl"``.
        created: Whether :func:`join` started the group (and :func:`leave` should end it).
        timeout: Seconds a collective waits for a peer.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    created: bool
    timeout: float


def join(device: str = "auto", timeout: float = 60.0) -> Processes:
    """Join the default process group (started from torchrun's environment if not yet started).

    Args:
        device: ``auto`` (the GPU ``cuda:LOCAL_RANK`` when there is one, else the CPU), ``cpu``,
            ``cuda`` or ``cuda:K``.
        timeout: Seconds any collective waits for a peer before failing.

    Raises:
        FlatlabError: Not launched by torchrun (the environment is missing), a GPU asked for but
            absent, or the other processes never arrived within ``timeout``.
    """
    if not dist.is_available():
        raise FlatlabError("this torch has no torch.distributed; backend=distributed needs it")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        backend = dist.get_backend()
        dev = _device(device, local_rank, want_cuda=backend == "nccl")
        if dev.type == "cuda":  # NCCL's collectives run on the current device: make it ours
            torch.cuda.set_device(dev)
        return Processes(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend,
                         False, timeout)
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise FlatlabError(f"backend=distributed found no process group ({', '.join(missing)} "
                           f"not set); {LAUNCH_HINT}")
    dev = _device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:  # DistStoreError, rendezvous timeouts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlatlabError(f"could not join the process group at {os.environ['MASTER_ADDR']}:"
                           f"{os.environ['MASTER_PORT']} within {timeout:g} s ({first}); "
                           f"{LAUNCH_HINT}") from None
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, True,
                     timeout)


def _device(device: str, local_rank: int, want_cuda: bool | None = None) -> torch.device:
    cuda = torch.cuda.is_available()
    if device == "auto":
        use = cuda if want_cuda is None else want_cuda
        return torch.device(f"cuda:{local_rank}") if use else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not cuda:
            raise FlatlabError(f"device {device!r} asked for but this machine has no CUDA GPU; "
                               "accepted here: auto, cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise FlatlabError(f"device {device!r} would put every process of this machine on "
                               "one GPU (NCCL refuses two ranks on one device); accepted: auto "
                               "or cuda (each process on cuda:LOCAL_RANK)")
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise FlatlabError(f"device {dev} does not exist: this machine has {count} GPU"
                               f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); "
                               "set LOCAL_RANK below that, or launch fewer processes per machine")
        return dev
    return dev


def leave(proc: Processes, *, failed: bool = False) -> None:
    """End the group if :func:`join` started it (skipped after a failure: peers may be gone)."""
    if proc.created and not failed and dist.is_initialized():
        dist.destroy_process_group()


class PeerLost(Exception):  # noqa: N818 - the event, not a bug in this process
    """Raised on the ranks that wait in :meth:`Watchdog.barrier` when another rank was lost.

    Attributes:
        verdict: The one line (the same on every rank) that names the lost rank.
    """

    def __init__(self, verdict: str) -> None:
        super().__init__(verdict)
        self.verdict = verdict


class Watchdog:
    """Heartbeats in the rendezvous store, and the one line that names a lost rank.

    Args:
        rank, world_size: This process and the number of processes.
        progress: Returns how many communication calls this rank has entered so far.
        timeout: The process group's timeout (seconds); sets the heartbeat interval
            (``min(1, timeout / 5)`` unless ``interval`` is given).
        store: The store (default: the default group's rendezvous store).
        interval: Seconds between heartbeats.
        run_id: Separates the keys of successive runs in one process group.
        solo_timeout: Seconds the others wait in :meth:`barrier` for a rank that is alive but
            has not arrived (measuring alone, say) before they call it hung.
    """

    def __init__(self, rank: int, world_size: int, progress: Callable[[], int], *,
                 timeout: float, store: dist.Store | None = None,
                 interval: float | None = None, run_id: int = 0,
                 solo_timeout: float = 3600.0) -> None:
        self.rank, self.world_size = rank, world_size
        self.prefix = f"{_PREFIX}{run_id}/"
        self.progress = progress
        self.timeout = float(timeout)
        self.interval = float(interval) if interval is not None else min(1.0, self.timeout / 5)
        self.solo_timeout = float(solo_timeout)
        self.store = store if store is not None else dist.distributed_c10d._get_default_store()
        self._barriers = 0
        self._watched = threading.get_ident()  # the thread that runs the training loop
        self._judging = False
        self._stop = threading.Event()
        self._beats = 0
        self._calls = self.progress()
        self._moved = time.monotonic()  # when the heartbeat last saw the call count change
        self._beat()
        self._thread = threading.Thread(target=self._run, name="flatlab-heartbeat", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ heartbeat
    def _beat(self) -> None:
        calls, now = self.progress(), time.monotonic()
        if calls != self._calls:
            self._calls, self._moved = calls, now
        waiting = int(self._communicating())
        self.store.set(f"{self.prefix}hb/{self.rank}",
                       f"{self._beats} {calls} {waiting} {now - self._moved:.3f}")
        self._beats += 1

    def _communicating(self) -> bool:
        """Whether the watched thread is blocked in a communication call right now.

        Read from its innermost Python frame: a call into ``torch.distributed`` or the
        mixer's wait (:data:`WAIT_CODES`). A rank hung in its own code (even in the middle of
        a call made of several collectives) is somewhere else.
        """
        if self._judging:  # waiting in a barrier or naming a lost rank: a victim, not a culprit
            return True
        frame = sys._current_frames().get(self._watched)
        if frame is None:
            return False
        return frame.f_code in WAIT_CODES or frame.f_code.co_filename.startswith(_TORCH_DIST)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # the store is gone: the failure is handled by the main thread
                return

    def close(self) -> None:
        """Stop the heartbeat (the store may still be read by others)."""
        self._stop.set()
        self._thread.join(timeout=2 * self.interval + 1)

    # ------------------------------------------------------------------ uneven work
    def barrier(self, label: str, *, stop: Callable[[], bool] | None = None,
                busy: Collection[int] | None = None) -> None:
        """Wait until every rank has arrived here, in the store (no process-group call).

        All ranks call it at the same point of the same program. While waiting, a rank that
        has not arrived is lost when its heartbeat stops for ``2.5 * interval`` seconds (or
        never starts within ``timeout``), and hung when it is alive but has not arrived within
        ``solo_timeout`` seconds (``busy`` ranks, which have work of their own before the
        barrier), or within ``timeout`` seconds (the other ranks, which come straight from the
        same communication calls, as to a collective; and any rank whose heartbeat says it no
        longer works: inside this barrier's own code, or blocked in a communication call that
        cannot complete while its peers wait here); a verdict recorded by another rank ends
        the wait too.

        Args:
            label: What the ranks that arrive late are doing (quoted in the verdict).
            stop: Polled while waiting; when it returns True the run was terminated (SIGTERM).
            busy: The ranks with work of their own before the barrier (default: every rank).

        Raises:
            PeerLost: Another rank was lost; its verdict is recorded and carried.
        """
        self._judging = True
        try:
            self._barrier(label, stop, busy)
        finally:
            self._judging = False

    def _barrier(self, label: str, stop: Callable[[], bool] | None,
                 busy: Collection[int] | None) -> None:
        patience = [self.solo_timeout if busy is None or q in busy else self.timeout
                    for q in range(self.world_size)]
        self._barriers += 1
        key = f"{self.prefix}bar/{self._barriers}"
        if self._barriers > 2:  # every rank finished barrier i-2 before any arrives at i
            old = f"{self.prefix}bar/{self._barriers - 2}"
            try:
                self.store.delete_key(f"{old}/{self.rank}")
                if self.rank == 0:
                    self.store.delete_key(old)
            except Exception:  # noqa: BLE001 - a store without deletion keeps the keys
                pass
        self.store.set(f"{key}/{self.rank}", "1")
        arrived = self.store.add(key, 1)
        t0 = last_check = time.monotonic()
        seen: dict[int, tuple[int | None, float]] = {}
        stuck: dict[int, float] = {}  # late ranks that are not working: since when
        while arrived < self.world_size:
            time.sleep(min(0.02, self.interval))
            arrived = self.store.add(key, 0)
            now = time.monotonic()
            if arrived >= self.world_size or now - last_check < self.interval:
                continue
            last_check = now
            found = self.recorded()
            if found is not None:
                raise PeerLost(found)
            if stop is not None and stop():
                raise PeerLost(self.verdict(terminated=True))
            beats = self._read()
            late = [q for q in range(self.world_size)
                    if not self.store.check([f"{key}/{q}"])]
            for q in late:
                b = beats[q].count if q in beats else None
                if q not in seen or seen[q][0] != b:
                    seen[q] = (b, now)
                grace = 2.5 * self.interval if b is not None else self.timeout
                if now - seen[q][1] > grace:
                    raise PeerLost(self._record(
                        f"rank {q} was lost (its heartbeat stopped while its peers waited for "
                        f"it in {label}: the process died, was stopped or its machine is "
                        "unreachable)"))
                if q in beats and beats[q].waiting:
                    stuck.setdefault(q, now)
                else:
                    stuck.pop(q, None)
            overdue = [q for q in late if now - t0 > patience[q]]
            solo = [q for q in overdue if busy is None or q in busy]
            if solo:
                raise PeerLost(self._record(
                    f"{_ranks(solo)} lost (alive but hung in {label} for over "
                    f"{self.solo_timeout:g} s)"))
            hung = [q for q in late
                    if q in overdue or (q in stuck and now - stuck[q] > self.timeout)]
            if hung:
                raise PeerLost(self._record(
                    f"{_ranks(hung)} lost (alive but hung on the way into {label}, for over "
                    f"{self.timeout:g} s)"))

    def alone(self, label: str, fn: Callable[[], Any], *, src: int = 0,
              stop: Callable[[], bool] | None = None) -> Any:
        """Run ``fn`` on rank ``src`` only while the others wait for it in :meth:`barrier`.

        Returns ``fn()`` on ``src`` and ``None`` elsewhere (nothing is communicated). The others
        come straight from the calls before it: one that does not arrive within ``timeout`` is
        hung (only ``src`` has ``solo_timeout``).
        """
        out = fn() if self.rank == src else None
        self.barrier(label, stop=stop, busy=(src,))
        return out

    # ------------------------------------------------------------------ verdicts
    def _read(self) -> dict[int, Beat]:
        """Every rank's last heartbeat in the store (ranks that never beat are missing)."""
        out = {}
        for q in range(self.world_size):
            key = f"{self.prefix}hb/{q}"
            if self.store.check([key]):
                out[q] = Beat.parse(self.store.get(key).decode())
        return out

    def _record(self, verdict: str) -> str:
        got = self.store.compare_set(f"{self.prefix}verdict", "", verdict)
        return got.decode() if isinstance(got, bytes) else str(got)

    def recorded(self) -> str | None:
        """The verdict some rank recorded, if any."""
        key = f"{self.prefix}verdict"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def blame_self(self, message: str) -> str:
        """Record that this rank failed in its own code (unless a verdict exists); returns it."""
        try:
            return self._record(f"rank {self.rank} failed: {message}")
        except Exception:
            return f"rank {self.rank} failed: {message}"

    def mark_exited(self) -> None:
        """Tell the others this rank leaves on purpose (so it is not blamed); its last store call.

        The process that hosts the store (rank 0 when processes are started by hand) then waits
        for the others to leave too, at most ``2.5 * interval + 2`` seconds, so that none of them
        loses the store while it is still naming the lost rank.
        """
        try:
            self.store.set(f"{self.prefix}exit/{self.rank}", "1")
            left = self.store.add(f"{self.prefix}exited", 1)
            if self.rank == 0:
                deadline = time.monotonic() + 2.5 * self.interval + 2.0
                while left < self.world_size - 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                    left = self.store.add(f"{self.prefix}exited", 0)
        except Exception:
            pass

    def verdict(self, error: BaseException | None = None, *, terminated: bool = False) -> str:
        """Name the lost rank after a failed communication call: one line, the same on all ranks.

        Takes up to ``2.5 * interval`` seconds (to see which heartbeats have stopped).

        Args:
            error: The exception of the failed call (quoted when no rank can be named).
            terminated: This rank was told to stop (SIGTERM) rather than failing a call: only a
                stopped heartbeat names a rank, otherwise the run was simply terminated.
        """
        self._judging = True
        try:
            return self._verdict(error, terminated)
        finally:
            self._judging = False

    def _verdict(self, error: BaseException | None, terminated: bool) -> str:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            self.store.set_timeout(timedelta(seconds=max(2.0, 2 * self.interval)))
            found = self.recorded()
            if found is not None:
                return found
            first = self._read()
            time.sleep(2.5 * self.interval)
            found = self.recorded()
            if found is not None:
                return found
            second = self._read()
            exited = {q for q in range(self.world_size)
                      if self.store.check([f"{self.prefix}exit/{q}"])}
            text = blame(self.rank, self.world_size, self.progress(), first, second,
                         timeout=self.timeout, interval=self.interval, exited=exited,
                         terminated=terminated, error=error)
            return self._record(text)
        except Exception:
            return (f"lost the rendezvous store at {where}: its host is gone (rank 0 when "
                    "processes are started by hand, else the torchrun launcher)")


@dataclass(frozen=True)
class Beat:
    """One rank's heartbeat, as published in the store.

    Attributes:
        count: Heartbeats sent so far (it advances while the process is alive).
        calls: Communication calls entered so far.
        waiting: Blocked in a communication call (or waiting in :meth:`Watchdog.barrier`, or
            judging a failure) when it beat.
        still: Seconds its call count had been unchanged when it beat (seen at heartbeats: up
            to one interval short).
    """

    count: int
    calls: int
    waiting: bool
    still: float

    @classmethod
    def parse(cls, text: str) -> Beat:
        """The heartbeat written as ``"count calls waiting still"``."""
        count, calls, waiting, still = text.split()
        return cls(int(count), int(calls), waiting == "1", float(still))


def blame(rank: int, world_size: int, calls: int, first: dict[int, Beat],
          second: dict[int, Beat], *, timeout: float, interval: float,
          exited: set[int] | frozenset[int] = frozenset(), terminated: bool = False,
          error: BaseException | None = None) -> str:
    """The verdict of rank ``rank`` after its communication call failed: one line.

    Args:
        rank: The judging rank.
        world_size: The number of ranks.
        calls: The communication calls the judging rank has entered (the failed one included).
        first: Every rank's heartbeat read when the call failed (a rank missing never beat).
        second: The same, ``2.5 * interval`` seconds later.
        timeout: Seconds the failed call waited (the process group's timeout).
        interval: Seconds between heartbeats.
        exited: Ranks that left on purpose after a verdict (never blamed).
        terminated: The judging rank was told to stop (SIGTERM) rather than failing a call.
        error: The failed call's exception, quoted when no rank is named.

    Returns:
        ``rank Q was lost (...)`` when the heartbeats name a rank: its heartbeat stopped, or it is
        hung on evidence that holds for the whole timeout (see the module's docstring); else a
        line that names none.
    """
    others = [q for q in range(world_size) if q != rank and q not in exited]
    stopped = [q for q in others if q not in first or q not in second
               or second[q].count == first[q].count]
    if stopped:
        lost = min(stopped, key=lambda q: (second[q].calls if q in second else -1, q))
        return (f"rank {lost} was lost (its heartbeat stopped: the process died, was stopped or "
                "its machine is unreachable)")
    if terminated:
        return "terminated by SIGTERM (the launcher or a scheduler stopped the run)"
    count = {q: second[q].calls for q in others}
    count[rank] = calls

    def still(q: int) -> bool:  # its count has not moved for the whole timeout (one beat short)
        return first[q].calls == second[q].calls and second[q].still >= timeout - interval

    # not in communication (so not waiting for anyone), not moving, not ahead of this rank
    idle = [q for q in others if still(q) and not first[q].waiting and not second[q].waiting
            and count[q] <= calls]
    if len(idle) == 1:
        q = idle[0]
        if count[q] < calls:  # this rank waits in a later call
            return (f"rank {q} was lost (alive but hung in its own code after entering "
                    f"{count[q]} communication calls, behind peers that wait for it, for over "
                    f"{timeout:g} s)")
        return (f"rank {q} was lost (alive but hung in its own code during communication call "
                f"{count[q]} that its peers wait in, for over {timeout:g} s)")
    if idle:
        return (f"{_ranks(idle)} lost (alive but hung in their own code, outside communication "
                f"at calls {', '.join(str(count[q]) for q in idle)}, for over {timeout:g} s)")
    # all wait (in a call, or in a barrier after one): only one that alone lags behind calls
    # every other rank has passed is hung (inside the call, or in the barrier it alone is in)
    for q in others:
        if still(q) and all(count[q] < count[r] for r in count if r != q):
            return (f"rank {q} was lost (alive but hung after entering {count[q]} communication "
                    f"calls, which every other rank has passed, for over {timeout:g} s)")
    detail = str(error).strip().splitlines()[0] if error is not None and str(error).strip() \
        else ""
    detail = f" ({detail})" if detail else ""
    if len(set(count.values())) == 1:
        return f"communication failed with every rank alive and level at call {calls}{detail}"
    seen = ", ".join(f"rank {q}: {count[q]}" + (" (this one)" if q == rank else
                                                 " waiting" if second[q].waiting else
                                                 " working" if not still(q) else "")
                     for q in sorted(count))
    return (f"communication failed with every rank alive and none clearly hung (calls entered: "
            f"{seen}){detail}")


def _ranks(ranks: list[int]) -> str:
    """``rank 2 was`` or ``ranks 1 and 2 were``."""
    if len(ranks) == 1:
        return f"rank {ranks[0]} was"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]} were"
