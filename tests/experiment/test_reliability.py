"""Nothing lost, nothing mixed (issue 36): one writer per run directory, whatever the timing.

Real processes racing on real folders; the lock itself against threads (flock locks belong to
open file descriptions, so two opens in one process exclude each other as two processes do).
"""

import errno
import os
import stat
import threading
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
import yaml

from flatlab.errors import RunBusyError, RunDirError
from flatlab.experiment import load_config, run
from flatlab.experiment.rundir import RunLock, identity, load_checkpoint

TINY = {
    "name": "race",
    "data": {"name": "digits", "partition": "iid", "batch_size": 8},
    "model": {"name": "logistic"},
    "topology": {"name": "ring", "nodes": 4},
    "algorithm": {"name": "dsgd"},
    "optim": {"lr": 0.1},
    "train": {"steps": 6},
    "measure": {"every": 3, "train_subset": 100, "test_subset": 100},
    "checkpoint_every": 3,
    "device": "cpu",
}
ROUNDS = 12


def test_a_second_lock_on_a_directory_is_refused_until_the_first_is_released(tmp_path):
    out = tmp_path / "new" / "run"
    first = RunLock(out)
    first.acquire()
    assert out.is_dir(), "a new run directory is created to be locked"
    with pytest.raises(RunBusyError, match=r"run directory .* is being written by another "
                                           r"process .*; wait for it to end"):
        RunLock(out).acquire()
    first.release()
    assert not out.exists(), "a directory the lock created and nothing filled is removed"
    with RunLock(tmp_path / "kept") as lock:
        (lock.out / "status.json").write_text("{}")
    assert (tmp_path / "kept" / "status.json").is_file()
    with RunLock(tmp_path / "kept"):  # released: a later process resumes
        pass


def test_threads_racing_for_one_directory_let_exactly_one_through(tmp_path):
    for k in range(50):
        out, won, barrier = tmp_path / f"d{k}", [], threading.Barrier(4)

        def take(out=out, won=won, barrier=barrier):
            barrier.wait()
            lock = RunLock(out)
            try:
                lock.acquire()
            except RunBusyError:
                return
            won.append(lock)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {k}: {len(won)} holders"
        won[0].release()


def test_where_a_directory_cannot_be_locked_a_hidden_file_in_it_is(tmp_path, monkeypatch):
    """NFS emulates flock with byte-range locks, which refuse a directory opened read-only."""
    import fcntl

    real = fcntl.flock

    def nfs_like(fd, op):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", nfs_like)
    with RunLock(tmp_path / "r"):
        assert (tmp_path / "r" / RunLock.FILE).is_file()
        with pytest.raises(RunBusyError):
            RunLock(tmp_path / "r").acquire()


def test_a_lock_that_cannot_be_taken_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere: the case does not arise
            pytest.skip("this user writes into read-only folders (root)")
        with pytest.raises(RunDirError, match=r"cannot create run directory .*: Permission "
                                              r"denied; accepted: a path in a writable folder"):
            RunLock(tmp_path / "ro" / "run").acquire()
    finally:
        (tmp_path / "ro").chmod(0o700)


def _racer(name: str, root: str, barrier, results) -> None:
    """One of two processes: ROUNDS times, wait for the other, then run into the same folder."""
    torch.set_num_threads(1)
    for k in range(ROUNDS):
        lr = 0.05 if name == "a" else 0.2  # two different configs, as in the issue
        cfg = load_config(dict(TINY, optim={"lr": lr}))
        barrier.wait()
        try:
            res = run(cfg, Path(root) / f"r{k}", progress=False)
            results.put((k, name, "ran" if res.ran else "finished", lr))
        except RunBusyError:
            results.put((k, name, "busy", lr))
        except RunDirError as e:
            results.put((k, name, "other config" if "different config" in str(e) else str(e),
                         lr))


def test_two_processes_started_on_one_folder_at_the_same_moment_never_both_write(tmp_path):
    """The issue's case: ``flatlab run C --out X & flatlab run C optim.lr=... --out X``.

    Exactly one process trains each folder; the other is refused (the folder is busy, or by the
    time it looked it held a finished run of another config), and the folder holds one run's
    files only: its config, the config inside its checkpoint and its final status agree.
    """
    ctx = get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(n, str(tmp_path), barrier, results))
             for n in ("a", "b")]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in range(2 * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    busy = 0
    for k in range(ROUNDS):
        mine = sorted((g for g in got if g[0] == k), key=lambda g: g[2])
        outcomes = [g[2] for g in mine]
        assert outcomes.count("ran") == 1, f"round {k}: {mine}"
        (winner,) = (g for g in mine if g[2] == "ran")
        (loser,) = (g for g in mine if g[2] != "ran")
        assert loser[2] in ("busy", "other config"), loser
        busy += loser[2] == "busy"
        d = tmp_path / f"r{k}"
        written = yaml.safe_load((d / "config.yaml").read_text())
        assert written["optim"]["lr"] == winner[3]
        ck = load_checkpoint(d / "checkpoint.pt")
        assert identity(ck.config) == identity(written)
        assert '"status": "done"' in (d / "status.json").read_text()
    assert busy >= 1, "no round raced: the processes never met inside a run"


def _sweep(tmp_path: Path) -> dict:
    return {"name": "s", "base": dict(TINY, train={"steps": 6}), "out": str(tmp_path / "sw"),
            "grid": {"optim.lr": [0.05, 0.1, 0.2, 0.3]}}


def _files(run_dir: Path) -> dict[str, bytes]:
    return {n: (run_dir / n).read_bytes() for n in ("config.yaml", "metrics.parquet")}


def test_a_sweep_rerun_checks_finished_points_and_mends_the_damaged_ones(tmp_path, capsys):
    """The issue's damages: a deleted config, truncated metrics, a truncated checkpoint, garbage
    status. A rerun mends each (rewritten from the checkpoint, or trained again: CPU runs are
    deterministic, so the mended files equal the originals) and says so; nothing else runs."""
    import pandas as pd

    from flatlab.experiment.sweep import load_sweep, run_sweep

    spec = load_sweep(_sweep(tmp_path))
    first = run_sweep(spec, progress=False, verbose=False)
    assert (first.status == "done").all()
    runs = [spec.out / r for r in first.run]
    before = {r.name: (_files(r), pd.read_parquet(r / "metrics.parquet")) for r in runs}
    (runs[0] / "config.yaml").unlink()
    m = (runs[1] / "metrics.parquet").read_bytes()
    (runs[1] / "metrics.parquet").write_bytes(m[: len(m) // 2])
    c = (runs[2] / "checkpoint.pt").read_bytes()
    (runs[2] / "checkpoint.pt").write_bytes(c[: len(c) // 2])
    (runs[3] / "status.json").write_text('{"status": "do')
    again = run_sweep(load_sweep(_sweep(tmp_path)), progress=False, verbose=True)
    err = capsys.readouterr().err
    msg = dict(zip(again.run, again.message, strict=True))
    assert "config.yaml is missing: rewritten from its checkpoint, nothing trained" in \
        msg[runs[0].name]
    assert "metrics.parquet is damaged" in msg[runs[1].name] and "rewritten" in msg[runs[1].name]
    assert "checkpoint.pt is damaged" in msg[runs[2].name] and \
        "trained again from the start" in msg[runs[2].name]
    assert "status.json is damaged" in msg[runs[3].name]
    assert all(f"{r}: mended: " in err for r in runs)
    assert (again.status == "done").all() and not again.skipped.any()
    for r in runs:
        assert _files(r)["config.yaml"] == before[r.name][0]["config.yaml"]
        pd.testing.assert_frame_equal(pd.read_parquet(r / "metrics.parquet"), before[r.name][1])
        load_checkpoint(r / "checkpoint.pt")
    third = run_sweep(load_sweep(_sweep(tmp_path)), progress=False, verbose=False)
    assert third.skipped.all(), "a sound finished point is skipped"


def test_a_run_missing_its_config_is_named_by_results_not_left_out(tmp_path):
    """``flatlab results`` and ``flatlab plot`` of a sweep list a run whose config was deleted."""
    import subprocess
    import sys

    from flatlab.experiment.results import load_readable
    from flatlab.experiment.sweep import load_sweep, run_sweep

    spec = load_sweep(dict(_sweep(tmp_path), grid={"optim.lr": [0.05, 0.1]}))
    df = run_sweep(spec, progress=False, verbose=False)
    gone = spec.out / df.run[0]
    (gone / "config.yaml").unlink()
    readout = load_readable(spec.out)
    assert [u.run for u in readout.unreadable] == [gone.name]
    assert "has no config.yaml (deleted?)" in readout.unreadable[0].message
    out = subprocess.run([sys.executable, "-m", "flatlab.cli", "results", str(spec.out)],
                         capture_output=True, text=True, timeout=120)
    assert gone.name in out.stdout + out.stderr and "no config.yaml" in out.stdout + out.stderr
    with pytest.raises(RunDirError, match=r"has no config.yaml \(deleted\?\)"):
        load_readable(gone)


def _cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "flatlab.cli", *args]


def _as_from_a_terminal() -> None:
    """SIGINT as a terminal's foreground process has it: default (Python's KeyboardInterrupt).

    A process inherits an ignored SIGINT (a shell's background job, a pytest-xdist worker), and
    Python then keeps ignoring it, as Ctrl-C never reaches a background job.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path: Path, proc, seconds: float = 120) -> None:
    import time

    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_ctrl_c_interrupts_a_run_in_one_line_and_it_resumes(tmp_path):
    """SIGINT as a terminal sends it: one line, status 130, the run left interrupted (not
    failed), a dead writer's temporaries removed on resume, and the resume finishes."""
    import json
    import signal
    import subprocess
    import time

    from flatlab.experiment.rundir import read_status, shown_status

    cfg = dict(TINY, train={"steps": 3000}, checkpoint_every=5)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = _cli("run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    _wait_for(out / "checkpoint.pt", proc)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted (Ctrl-C)" in lines[0], stderr
    st = read_status(out)
    assert st["status"] == "running" and st["step"] < 3000 and shown_status(st) == "interrupted"
    (out / ".checkpoint.pt.tmp999-1").write_bytes(b"")  # as a killed writer leaves one
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.time() + 120
    while (read_status(out) or {}).get("pid") != proc.pid and time.time() < deadline:
        time.sleep(0.05)  # the resumed run has taken the directory over
    assert not (out / ".checkpoint.pt.tmp999-1").exists()
    proc.send_signal(signal.SIGINT)  # the parent alone, as kill -INT does, as it starts
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # (a Ctrl-C between creating and starting the
    # heartbeat thread once left an unstarted thread to join: a traceback and status 1)
    assert json.loads((out / "status.json").read_text())["status"] == "running"


def test_ctrl_c_of_a_parallel_sweep_is_one_line_and_leaves_no_run_failed(tmp_path):
    import signal
    import subprocess
    import time

    from flatlab.experiment.rundir import read_status, shown_status

    spec = dict(_sweep(tmp_path), base=dict(TINY, train={"steps": 3000}, checkpoint_every=5))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(_cli("sweep", str(tmp_path / "s.yaml"), "--jobs", "2",
                                 "--no-progress"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "sw").glob("*/checkpoint.pt")):
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    states = [shown_status(read_status(d)) for d in (tmp_path / "sw").iterdir()
              if (d / "status.json").exists()]
    assert states and "failed" not in states and "interrupted" in states, states


def _limit_file_size(nbytes: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_a_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A real ``ulimit -f``: torch's writer fails; one line naming the file and the cause, exit
    1, the previous checkpoint and metrics byte for byte, no temporary file left."""
    import subprocess

    out = tmp_path / "run"
    run(load_config(TINY), out, progress=False, stop_after=4)  # its checkpoint: step 3
    kept = {n: (out / n).read_bytes() for n in ("checkpoint.pt", "metrics.parquet")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    limit = len(kept["checkpoint.pt"]) - 1000  # the next checkpoint cannot be written
    proc = subprocess.run(_cli("run", str(tmp_path / "c.yaml"), "--out", str(out),
                               "--no-progress"), capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(limit))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "checkpoint.pt cannot be written: a file-size limit stops it (ulimit -f" in lines[0]
    assert {n: (out / n).read_bytes() for n in kept} == kept
    assert not [f for f in out.iterdir() if ".tmp" in f.name]


def _mounted(where: Path, options: str):
    """A real tmpfs at ``where``, where this machine lets the tests mount one (else a skip)."""
    import subprocess

    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("this machine does not let the tests mount a file system")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_file_system(tmp_path):
    """A real file system of 160 KiB."""
    yield from _mounted(tmp_path / "small", "size=160k")


@pytest.fixture
def read_only_file_system(tmp_path):
    """A real file system mounted read-only (root writes into read-only folders, not here)."""
    yield from _mounted(tmp_path / "ro", "size=64k,ro")


def test_a_study_or_sweep_into_a_read_only_file_system_is_one_line(read_only_file_system,
                                                                   tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "flatlab.studies", "large_batch", "--scale",
                           "tiny", "--out", str(read_only_file_system / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"error: {read_only_file_system / 'x'} Read-only file system"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        dict(_sweep(tmp_path), out=str(read_only_file_system / "sw"))))
    proc = subprocess.run(_cli("sweep", str(tmp_path / "s.yaml")), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Read-only file system" in proc.stderr


def test_a_sweep_onto_a_full_file_system_says_so_in_one_line_per_point(small_file_system,
                                                                       tmp_path):
    import subprocess

    spec = dict(_sweep(tmp_path), out=str(small_file_system / "sw"),
                grid={"optim.lr": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run(_cli("sweep", str(tmp_path / "s.yaml"), "--no-progress"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "the file system is full" in proc.stderr
    for line in proc.stderr.strip().splitlines():
        assert "cannot be written: the file system is full" in line, line
    for d in (small_file_system / "sw").iterdir():
        if d.is_dir():
            assert not [f for f in d.iterdir() if ".tmp" in f.name]
    # the table of a full disk: no empty or half file
    done = next(d for d in (small_file_system / "sw").iterdir()
                if (d / "status.json").exists() and '"done"' in (d / "status.json").read_text())
    filler = small_file_system / "filler"
    try:  # fill what is left
        with open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    proc = subprocess.run(_cli("results", str(done), "--csv",
                               str(small_file_system / "table.csv")),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "table.csv cannot be written: the file system is full" in proc.stderr
    assert not (small_file_system / "table.csv").exists()


def test_plain_ascii_python_runs_into_a_non_ascii_folder(tmp_path):
    """``LC_ALL=C PYTHONUTF8=0``: Python holds the path with surrogate escapes, which pyarrow
    cannot encode; flatlab hands it files Python opened, so run, results and plot all work."""
    import subprocess
    import sys

    where = tmp_path / "résultats ünï"
    where.mkdir()
    (where / "c.yaml").write_text(yaml.safe_dump(TINY))
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONIOENCODING="utf-8")
    env.pop("LANG", None)
    # one interpreter runs the three commands; the folder comes in through argv, so Python
    # holds it as the C locale decodes it (surrogate escapes), as a typed command would
    code = ("import sys\nfrom flatlab.cli import main\nw = sys.argv[1]\n"
            "for a in (['run', w + '/c.yaml', '--out', w + '/run', '--no-progress'],\n"
            "          ['results', w + '/run'], ['plot', w + '/run']):\n"
            "    assert any(0xDC80 <= ord(c) <= 0xDCFF for c in w), ascii(w)\n"
            "    if main(a):\n"
            "        sys.exit(f'{a[0]} failed')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(where)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (where / "run" / "curves.png").stat().st_size > 0


def test_a_read_only_home_gives_matplotlib_a_private_folder_quietly(monkeypatch):
    from flatlab import cli

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user without rights
    cli._matplotlib_config_dir()
    made = Path(os.environ["MPLCONFIGDIR"])
    assert made.is_dir() and made.name.startswith("flatlab-matplotlib-")
    monkeypatch.setenv("MPLCONFIGDIR", "/chosen")
    cli._matplotlib_config_dir()
    assert os.environ["MPLCONFIGDIR"] == "/chosen"  # the user's choice stands


def test_the_advice_for_damaged_metrics_when_followed_mends_them(tmp_path, capsys):
    """``flatlab results`` says to run the config into the folder; doing so rewrites the table
    from the checkpoint (before: "done, nothing ran", then the same error)."""
    import pandas as pd

    from flatlab.cli import main

    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    want = pd.read_parquet(out / "metrics.parquet")
    (out / "metrics.parquet").write_bytes(b"PAR1 not really")
    capsys.readouterr()
    assert main(["results", str(out)]) == 2
    err = capsys.readouterr().err
    assert "`flatlab run` its config into it" in err
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "mended: metrics.parquet is damaged" in said and "nothing ran" not in said
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), want)
    assert main(["results", str(out)]) == 0


def test_a_run_written_before_a_config_field_existed_is_still_the_same_run(tmp_path):
    """A config.yaml without the fields added later (clock, topology.faults, train.stragglers)
    ran with their defaults: it matches today's config, so sweeps and studies resume it (a
    study folder was refused as "a different config" before identity filled the defaults)."""
    cfg = load_config(TINY)
    run(cfg, tmp_path / "r", progress=False)
    old = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    del old["clock"], old["topology"]["faults"], old["train"]["stragglers"]
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(old))
    res = run(cfg, tmp_path / "r", progress=False)
    assert res.status == "done" and not res.ran and not res.mended
    changed = load_config({**TINY, "clock": {"compute": 0.1}})
    with pytest.raises(RunDirError, match=r"different config \(it differs in clock.compute\)"):
        run(changed, tmp_path / "r", progress=False)
