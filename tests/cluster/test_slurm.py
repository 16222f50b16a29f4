"""Sweeps on a real SLURM cluster, through submitit (flatlab.experiment.slurm).

These tests submit real jobs to the single-node cluster that ``tests/cluster/slurm.sh start``
runs on this machine (root and Debian's slurm packages; ``.ci/run`` starts it when it can).
Without a cluster they skip, saying so, so that a newcomer's ``make test`` passes without root.
Each waits for its jobs with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flatlab.cli import main
from flatlab.experiment import slurm
from flatlab.experiment.sweep import load_sweep, run_sweep
from tests.experiment.test_distributed_runs import free_port


def _cluster() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no sbatch here (tests/cluster/slurm.sh start, as root, runs a local cluster)"
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if r.returncode or not any(s in r.stdout for s in ("idle", "mix", "alloc")):
        return "no SLURM node answers (tests/cluster/slurm.sh start)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'flatlab[cluster]')"
    return None


REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(_cluster() is not None, reason=str(_cluster()))

BASE = {"name": "cl", "data": {"name": "digits", "partition": "iid", "batch_size": 8},
        "model": {"name": "logistic"}, "topology": {"name": "ring", "nodes": 4},
        "optim": {"lr": 0.1}, "train": {"steps": 12},
        "measure": {"every": 6, "train_subset": 100, "test_subset": 100, "metrics": ["loss"]},
        "checkpoint_every": 6, "device": "cpu"}
RESOURCES = slurm.SlurmResources(minutes=5, parallel=2)


def _spec(out: Path, grid: dict, **base) -> object:
    return load_sweep({"name": out.name, "base": {**BASE, **base}, "grid": grid, "out": str(out)})


def test_a_sweep_through_the_job_array_equals_the_same_sweep_run_here(tmp_path):
    grid = {"algorithm.name": ["diffusion", "gradient-tracking"], "seed": [0, 1]}
    here = run_sweep(_spec(tmp_path / "here", grid), progress=False, verbose=False)
    there = run_sweep(_spec(tmp_path / "there", grid), slurm=RESOURCES, verbose=False)
    assert list(there.status) == ["done"] * 4 and list(here.status) == ["done"] * 4
    for name in here.run:
        a = pd.read_parquet(tmp_path / "here" / name / "metrics.parquet")
        b = pd.read_parquet(tmp_path / "there" / name / "metrics.parquet")
        pd.testing.assert_frame_equal(a, b)  # bit for bit: the same machine, the same code
        assert "job" in (tmp_path / "there" / name / "slurm.log").read_text()
    # a rerun submits nothing: every run is finished
    again = run_sweep(_spec(tmp_path / "there", grid), slurm=RESOURCES, verbose=False)
    assert again.skipped.all()
    assert slurm.status_counts(tmp_path / "there", list(here.run)) == {"done": 4}


def _wait_until(cond, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("the cluster did not get there in time")
        time.sleep(0.5)


@pytest.mark.slow  # two 4000-step runs, cancelled and resubmitted: about a minute
def test_a_killed_job_is_failed_and_a_queued_one_is_not_submitted_twice(tmp_path):
    out = tmp_path / "slow"
    grid = {"seed": [0, 1]}
    slow = {"train": {"steps": 4000}, "checkpoint_every": 50,
            "measure": {"every": 2000, "train_subset": 100, "test_subset": 100,
                        "metrics": ["loss"]}}
    rows = run_sweep(_spec(out, grid, **slow), slurm=RESOURCES, wait=False, verbose=False)
    assert list(rows.status) == ["queued", "queued"]
    # while held, a rerun submits nothing more and --status counts them
    again = run_sweep(_spec(out, grid, **slow), slurm=RESOURCES, wait=False, verbose=False)
    assert again.skipped.all()
    names = list(rows.run)
    _wait_until(lambda: set(slurm.queued(out).values()) == {"running"})
    counts = slurm.status_counts(out, names)
    assert counts == {"running": 2}
    # cancelled: no longer held, the runs' folders resumable
    assert slurm.cancel(out) == 2
    _wait_until(lambda: not slurm.queued(out))
    # the rerun waits, resubmits both (resuming from their checkpoints) and they finish
    fast = dict(slow, train={"steps": 4000})
    done = run_sweep(_spec(out, grid, **fast), slurm=RESOURCES, verbose=False)
    assert list(done.status) == ["done", "done"] and not done.skipped.any()


def test_what_the_cluster_cannot_run_is_refused_in_one_line_before_submitting(
        tmp_path, monkeypatch, capsys):
    """In process (``flatlab.cli.main``): the refusals need sbatch's answers, not a new Python."""
    monkeypatch.setenv("FLATLAB_MAX_STEPS", "2")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\nbase: {{data: {{name: digits}}, model: {{name: logistic}}, "
                    f"topology: {{name: ring, nodes: 4}}, train: {{steps: 2}}}}\n"
                    f"grid: {{seed: [0]}}\nout: {tmp_path / 'out'}\n")
    cmd = ["sweep", str(spec), "--engine", "slurm"]

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main([*cmd, *args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists(), err
        return err

    assert "--partition nowhere is unknown" in refused("--partition", "nowhere")
    # what this one-node cluster does not have, as sbatch --test-only says, before submitting
    for ask in (["--cpus", "512"], ["--mem", "100000"], ["--gpus", "1"]):
        err = refused(*ask)
        assert "the cluster cannot give what was asked" in err, err
        assert "accepted: at most what partition" in err and " CPUs and " in err
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", ":".join(p for p in path.split(":")
                                        if not (Path(p) / "sbatch").exists()))
    assert "needs SLURM's sbatch on the PATH" in refused()
    monkeypatch.setenv("PATH", path)
    # a scheduler that does not answer: said, with where its config is looked for; --cancel
    # and --status refuse rather than report nothing held
    (tmp_path / "lost.conf").write_text(  # the controller's port, wrong: nobody answers
        "SlurmctldPort=6999\nMessageTimeout=2\n" + conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "lost.conf"))
    assert "SLURM_CONF" in refused()
    (tmp_path / "out" / ".slurm").mkdir(parents=True)
    (tmp_path / "out" / ".slurm" / "jobs.json").write_text('{"seed=0": "123"}')
    capsys.readouterr()
    assert main([*cmd[:-2], "--cancel"]) == 2
    assert "squeue got no answer" in capsys.readouterr().err


def test_a_distributed_run_as_one_job_equals_the_same_run_under_torchrun(tmp_path, capsys):
    """``flatlab run --engine slurm --tasks-per-node 2``: two ranks from SLURM's environment.

    The two runs are processes of their own; the checks that submit nothing run in process.
    """
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "algorithm": {"name": "gradient-tracking"}}))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    here = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "flatlab", "run", str(config),
                           "backend=distributed", "--out", str(tmp_path / "here"),
                           "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert here.returncode == 0, here.stderr
    there = subprocess.run([sys.executable, "-m", "flatlab", "run", str(config), "--engine",
                            "slurm", "--tasks-per-node", "2", "--time", "5", "--out",
                            str(tmp_path / "there")], env=env, capture_output=True, text=True,
                           timeout=180)
    assert there.returncode == 0, there.stderr
    assert "submitted the run as SLURM job" in there.stdout and "done at step 12" in there.stdout
    st = json.loads((tmp_path / "there" / "status.json").read_text())
    assert st["processes"] == 2 and st["backend"] == "distributed"
    a = pd.read_parquet(tmp_path / "here" / "metrics.parquet")
    b = pd.read_parquet(tmp_path / "there" / "metrics.parquet")
    pd.testing.assert_frame_equal(a, b)  # bit for bit: the same machine, the same processes
    logs = sorted(p.name for p in (tmp_path / "there").glob("slurm.rank*.log"))
    assert logs == ["slurm.rank0.log", "slurm.rank1.log"]
    # finished: the same command submits nothing and says so
    args = there.args[3:]  # after "python -m flatlab"

    def cli(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(argv)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = cli(args)
    assert code == 0 and "finished before: nothing ran" in out and "submitted" not in out
    # the folder is checked before submitting, as a local run checks it: another config's run,
    # a folder of other files, a GPU device without GPUs
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine\n")
    for extra, folder, says in ((["optim.lr=0.2"], "there", "different config"),
                                ([], "notes", "holds no run but other files"),
                                (["device=cuda"], "gpu", "asks for a GPU")):
        code, out, err = cli([*args[:-1], str(tmp_path / folder), *extra])
        assert code == 2 and says in err, (extra, out, err)
        assert len(err.strip().splitlines()) == 1 and "submitted" not in out
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["notes.txt"]
    # a SLURM option without --engine slurm is refused, not ignored
    code, _, err = cli(["run", str(config), "--nodes", "2", "--out", str(tmp_path / "local")])
    assert code == 2 and "--nodes is an option of --engine slurm" in err
    # processes that cannot split the network: one line, nothing submitted
    code, _, err = cli([*args[:-1], str(tmp_path / "bad"), "--tasks-per-node", "3"])
    assert code == 2 and "3 processes cannot split topology.nodes = 4" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.slow  # about 3 minutes: 48 runs, half of them as jobs (make test-slow)
def test_a_study_on_the_cluster_writes_the_tables_it_writes_here(tmp_path):
    """Every tuning and final run of a study as array elements (``--engine slurm``)."""
    from flatlab.studies import faults, main

    assert main(faults.STUDY, ["--scale", "tiny", "--out", str(tmp_path / "here"),
                               "--jobs", "2"]) == 0
    assert main(faults.STUDY, ["--scale", "tiny", "--out", str(tmp_path / "there"),
                               "--engine", "slurm", "--time", "5"]) == 0
    for name in ("runs.csv", "verdicts.csv"):
        a = pd.read_csv(tmp_path / "here" / name)
        b = pd.read_csv(tmp_path / "there" / name)
        pd.testing.assert_frame_equal(a, b)
    # the final runs' array, recorded beside them (this study tunes nothing)
    assert (tmp_path / "there" / "runs" / "final" / ".slurm" / "jobs.json").is_file()
