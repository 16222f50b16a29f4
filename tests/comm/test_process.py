"""The watchdog's verdicts: the rules on fake heartbeats (:func:`blame`), then on an in-process
store with one watchdog per simulated rank."""

import threading
import time

import pytest
import torch.distributed as dist

from flatlab.comm.process import Beat, PeerLost, Watchdog, blame

TIMEOUT, INTERVAL = 5.0, 1.0


def beats(*ranks: tuple[int, bool, float]) -> dict[int, Beat]:
    """Heartbeats ``(calls, waiting in communication, seconds its count stood still)``."""
    return {q: Beat(10, calls, waiting, still) for q, (calls, waiting, still) in enumerate(ranks)}


def later(first: dict[int, Beat], **changes: tuple[int, bool, float]) -> dict[int, Beat]:
    """The second look, 2.5 heartbeats later: every heartbeat advanced, counts as given or same."""
    out = {}
    for q, b in first.items():
        calls, waiting, still = changes.get(f"r{q}", (b.calls, b.waiting, b.still + 2.5))
        out[q] = Beat(b.count + 2, calls, waiting, still)
    return out


def verdict(first, second, rank=0, calls=None, **kw) -> str:
    calls = second[rank].calls if calls is None else calls
    return blame(rank, len(first), calls, first, second, timeout=TIMEOUT, interval=INTERVAL, **kw)


def test_judge_names_the_hung_rank_not_the_one_a_faster_peer_left_behind():
    """The failure seen on a 2-core machine: rank 2 hangs in its own code after posting only its
    messages to rank 0, so rank 0 completes call 109 and waits in 110, while rank 1 still waits
    in 109 for rank 2. Counting calls alone, ranks 1 and 2 are both behind, and rank 1 was named."""
    first = beats((110, True, 5.1), (109, True, 5.2), (109, False, 6.0))
    v = verdict(first, later(first))
    assert v.startswith("rank 2 was lost (alive but hung in its own code after entering 109 "
                        "communication calls, behind peers that wait for it, for over 5 s)"), v
    # judged by rank 1 (level with rank 2): the same rank
    v = verdict(first, later(first), rank=1)
    assert v.startswith("rank 2 was lost (alive but hung in its own code during communication "
                        "call 109 that its peers wait in"), v


def test_judge_names_a_stuck_rank_beside_a_slow_but_progressing_one():
    # rank 1 is slow (4 processes on 2 cores): outside communication, behind, but its count
    # moved between the looks; rank 3 has not entered a call for longer than the timeout
    first = beats((52, True, 5.0), (50, False, 0.4), (52, True, 5.0), (51, False, 5.5))
    second = later(first, r1=(51, False, 0.2))
    v = verdict(first, second)
    assert v.startswith("rank 3 was lost (alive but hung in its own code after entering 51 "
                        "communication calls"), v


@pytest.mark.parametrize("slow", [
    ((49, False, 0.4), (50, False, 0.2)),  # its count moves between the looks
    ((50, False, 1.0), (50, False, 3.5)),  # a long step: still for less than the timeout
])
def test_judge_blames_no_rank_that_is_only_slow(slow):
    first = beats((51, True, 5.0), slow[0], (51, True, 5.0))
    v = verdict(first, later(first, r1=slow[1]))
    assert v.startswith("communication failed with every rank alive and none clearly hung "
                        "(calls entered: rank 0: 51 (this one), rank 1: 50 working, rank 2: 51 "
                        "waiting)"), v
    assert "was lost" not in v


def test_judge_does_not_pick_among_ranks_that_wait_behind():
    # ranks 1 and 2 both wait in call 109 (rank 2 is hung inside communication code, say): the
    # heartbeats cannot tell which one the other waits for
    first = beats((110, True, 5.0), (109, True, 6.0), (109, True, 6.0))
    v = verdict(first, later(first), error=RuntimeError("Timed out waiting 5000ms for recv"))
    assert v.startswith("communication failed with every rank alive and none clearly hung"), v
    assert v.endswith("(Timed out waiting 5000ms for recv)"), v


def test_judge_names_a_rank_that_alone_lags_in_a_call_the_others_passed():
    # rank 1 hangs inside call 109 or in the barrier after it (both read as waiting)
    first = beats((110, True, 5.0), (109, True, 7.0), (110, True, 5.0))
    v = verdict(first, later(first))
    assert v.startswith("rank 1 was lost (alive but hung after entering 109 communication calls, "
                        "which every other rank has passed"), v


def test_judge_names_every_hung_rank_and_none_ahead_of_it():
    first = beats((60, True, 5.0), (59, False, 6.0), (60, False, 5.5), (61, False, 9.0))
    v = verdict(first, later(first))  # rank 3 is ahead of rank 0: not what rank 0 waits for
    assert v.startswith("ranks 1 and 2 were lost (alive but hung in their own code, outside "
                        "communication at calls 59, 60"), v


def test_judge_stopped_heartbeats_exits_and_termination():
    first = beats((7, True, 5.0), (7, True, 5.0), (6, False, 9.0))
    stopped = later(first)
    stopped[2] = first[2]  # rank 2 stopped beating
    assert verdict(first, stopped).startswith("rank 2 was lost (its heartbeat stopped")
    assert verdict(first, stopped, exited={2}).startswith("communication failed")
    assert verdict(first, later(first), terminated=True).startswith("terminated by SIGTERM")
    level = beats((7, True, 5.0), (7, True, 5.0), (7, True, 5.0))
    assert verdict(level, later(level)).startswith(
        "communication failed with every rank alive and level at call 7")


# ---------------------------------------------------------------------- on a store
def watchdogs(progress: dict[int, int], run_id: int, world: int = 3,
              timeout: float = 1.0) -> dict[int, Watchdog]:
    store = dist.HashStore()
    return {r: Watchdog(r, world, (lambda r=r: progress[r]), timeout=timeout, store=store,
                        interval=0.1, run_id=run_id) for r in range(world)}


def _beat_when(w: Watchdog, ok, limit: float = 10.0) -> Beat:
    """The first heartbeat of ``w`` that satisfies ``ok`` (polled: heartbeats may come late)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        b = w._read()[w.rank]  # noqa: SLF001
        if ok(b):
            return b
        time.sleep(0.01)
    raise AssertionError(f"no such heartbeat within {limit} s; last {b}")


def test_heartbeats_say_how_long_the_call_count_stood_still():
    progress = {0: 3}
    t0 = time.monotonic()
    w = watchdogs(progress, run_id=7, world=1)[0]
    try:
        b = _beat_when(w, lambda b: b.still >= 0.2)
        assert b.calls == 3 and b.still <= time.monotonic() - t0  # measured from the start
        progress[0] = 4
        t1 = time.monotonic()
        b = _beat_when(w, lambda b: b.calls == 4)
        assert b.still <= time.monotonic() - t1  # measured from the change, not the start
    finally:
        w.close()


def test_a_stopped_heartbeat_names_the_rank_and_every_survivor_agrees():
    w = watchdogs({0: 7, 1: 7, 2: 7}, run_id=1)
    w[2].close()  # rank 2 dies: its heartbeat stops
    try:
        v = w[0].verdict(RuntimeError("Connection closed by peer"))
        assert v.startswith("rank 2 was lost (its heartbeat stopped")
        assert w[1].verdict() == v  # the first verdict is reused, not re-derived
    finally:
        w[0].close()
        w[1].close()


def test_an_alive_rank_behind_its_peers_is_named_as_hung():
    w = watchdogs({0: 12, 1: 12, 2: 11}, run_id=2, timeout=0.3)  # rank 2 never entered call 12
    w[0]._communicating = lambda: True  # noqa: SLF001 - rank 0 waits in call 12
    try:
        time.sleep(0.3)  # the peers' timeout
        v = w[1].verdict(RuntimeError("Timed out waiting 300ms for recv"))
        assert v.startswith("rank 2 was lost (alive but hung in its own code after entering 11 "
                            "communication calls"), v
    finally:
        for x in w.values():
            x.close()


def test_exited_ranks_are_not_blamed_and_self_blame_wins_when_first():
    w = watchdogs({0: 3, 1: 3, 2: 3}, run_id=3)
    try:
        assert w[2].blame_self("ValueError: bad batch") == "rank 2 failed: ValueError: bad batch"
        w[2].close()
        w[2].mark_exited()
        assert w[0].verdict() == "rank 2 failed: ValueError: bad batch"
    finally:
        w[0].close()
        w[1].close()


def test_terminated_with_everyone_alive_is_not_blamed_on_anyone():
    w = watchdogs({0: 4, 1: 5, 2: 5}, run_id=4)
    try:
        assert w[1].verdict(terminated=True).startswith("terminated by SIGTERM")
    finally:
        for x in w.values():
            x.close()


def test_level_ranks_name_the_one_not_blocked_in_communication():
    """All entered the same call; the rank in its own code is hung, not those naming it."""
    w = watchdogs({0: 5, 1: 5, 2: 5}, run_id=5, timeout=0.3)
    w[0]._communicating = lambda: False  # noqa: SLF001 - rank 0's thread is in its own code
    try:
        time.sleep(0.3)  # the peers' timeout
        w[1]._judging = True  # noqa: SLF001 - rank 1 failed its call too and is judging
        w[2]._judging = True  # noqa: SLF001
        v = w[2]._verdict(RuntimeError("Timed out"), False)  # noqa: SLF001
        assert v.startswith("rank 0 was lost (alive but hung in its own code during "
                            "communication call 5"), v
    finally:
        for x in w.values():
            x.close()


def test_barrier_names_a_rank_that_is_hung_or_dead_and_passes_when_all_arrive():
    store = dist.HashStore()
    w = {r: Watchdog(r, 2, lambda: 0, timeout=1.0, store=store, interval=0.1, run_id=6,
                     solo_timeout=0.5) for r in range(2)}
    try:
        t = threading.Thread(target=w[1].barrier, args=("setting up",))
        t.start()
        w[0].barrier("setting up")  # both arrive
        t.join(5)
        with pytest.raises(PeerLost, match=r"rank 1 was lost \(alive but hung in measuring"):
            w[0].barrier("measuring")  # rank 1 alive, never arrives
        w[1].close()
        with pytest.raises(PeerLost, match="rank 1 was lost"):  # the first verdict stands
            w[0].barrier("writing")
    finally:
        for x in w.values():
            x.close()


def test_barrier_names_a_rank_hung_on_its_way_in_within_the_timeout():
    """A rank that hangs inside the barrier before arriving (or in a call its peers are not in)
    says it is not working: the others wait the process group's timeout, not solo_timeout."""
    store = dist.HashStore()
    w = {r: Watchdog(r, 2, lambda: 0, timeout=0.5, store=store, interval=0.1, run_id=8,
                     solo_timeout=3600) for r in range(2)}
    w[1]._communicating = lambda: True  # noqa: SLF001
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerLost, match=r"rank 1 was lost \(alive but hung on the way into "
                                           r"setting up, for over 0.5 s\)"):
            w[0].barrier("setting up")  # every rank busy: solo_timeout, but rank 1 is not working
        assert time.monotonic() - t0 < 30
    finally:
        for x in w.values():
            x.close()


def test_alone_waits_for_the_busy_rank_but_not_for_one_hung_on_its_way():
    store = dist.HashStore()
    w = {r: Watchdog(r, 2, lambda: 0, timeout=0.5, store=store, interval=0.1, run_id=9,
                     solo_timeout=3600) for r in range(2)}
    try:
        # rank 0 works alone for longer than the timeout: rank 1 waits for it, no verdict
        t = threading.Thread(target=w[0].alone, args=("measuring", lambda: time.sleep(1.5)))
        t.start()
        assert w[1].alone("measuring", lambda: 1 / 0) is None  # fn runs on rank 0 only
        t.join(10)
        assert w[0].recorded() is None
        # rank 1 never arrives (hung after its last call): named after the timeout
        t0 = time.monotonic()
        with pytest.raises(PeerLost, match=r"rank 1 was lost \(alive but hung on the way into "
                                           r"writing, for over 0.5 s\)"):
            w[0].alone("writing", lambda: None)
        assert time.monotonic() - t0 < 30
    finally:
        for x in w.values():
            x.close()
