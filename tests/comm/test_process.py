"""The watchdog's verdicts, on an in-process store with one watchdog per simulated rank."""

import torch.distributed as dist

from flatlab.comm.process import Watchdog


def watchdogs(progress: dict[int, int], run_id: int, world: int = 3) -> dict[int, Watchdog]:
    store = dist.HashStore()
    return {r: Watchdog(r, world, (lambda r=r: progress[r]), timeout=1.0, store=store,
                        interval=0.05, run_id=run_id) for r in range(world)}


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
    w = watchdogs({0: 12, 1: 12, 2: 11}, run_id=2)  # rank 2 never entered call 12
    try:
        v = w[1].verdict(RuntimeError("Timed out waiting 1000ms for recv"))
        assert v.startswith("rank 2 was lost (alive but hung before communication call 12")
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
    w = watchdogs({0: 5, 1: 5, 2: 5}, run_id=5)
    w[0]._communicating = lambda: False  # noqa: SLF001 - rank 0's thread is in its own code
    try:
        w[1]._judging = True  # noqa: SLF001 - rank 1 failed its call too and is judging
        w[2]._judging = True  # noqa: SLF001
        v = w[2]._verdict(RuntimeError("Timed out"), False)  # noqa: SLF001
        assert v.startswith("rank 0 was lost (alive but hung in its own code during "
                            "communication call 5"), v
    finally:
        for x in w.values():
            x.close()


def test_barrier_names_a_rank_that_is_hung_or_dead_and_passes_when_all_arrive():
    import threading

    import pytest

    from flatlab.comm.process import PeerLost

    store = dist.HashStore()
    w = {r: Watchdog(r, 2, lambda: 0, timeout=1.0, store=store, interval=0.05, run_id=6,
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
