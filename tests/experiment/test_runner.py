"""Runs: determinism, resume identity (stopped and killed), divergence, results, sweeps."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import flatlab.results
from flatlab.errors import ConfigError, RunDirError
from flatlab.experiment import load_config, run
from flatlab.experiment.sweep import load_sweep, run_sweep
from tests.precision import assert_close

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny",
    "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "batch_size": 8},
    "model": {"name": "mlp", "options": {"hidden": [16], "dropout": 0.2}},
    "topology": {"name": "ring", "nodes": 6},
    "algorithm": {"name": "diffusion"},
    "optim": {"lr": 0.1, "schedule": "cosine", "warmup": 3, "weight_decay": 1e-4},
    "train": {"steps": 40},
    "measure": {"every": 10, "train_subset": 300},
    "checkpoint_every": 7,
    "device": "cpu",
}


def metrics(path):
    return pd.read_parquet(Path(path) / "metrics.parquet")


def test_run_directory_contents_and_tidy_results(tmp_path):
    res = run(load_config(TINY), tmp_path / "a", progress=False)
    assert res.status == "done" and res.step == 40
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.yaml", "status.json", "metrics.parquet", "checkpoint.pt"} <= files
    st = json.loads((tmp_path / "a" / "status.json").read_text())
    assert st["status"] == "done" and st["step"] == 40 and st["device"].startswith("cpu")
    assert set(st["versions"]) >= {"flatlab", "torch"}
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["name"] == "tiny"
    m = metrics(tmp_path / "a")
    assert list(m.columns) == ["step", "epoch", "metric", "scope", "value"]
    assert sorted(m.step.unique()) == [0, 10, 20, 30, 40]
    names = set(m.metric)
    assert {"train_loss", "test_loss", "train_accuracy", "test_accuracy", "consensus_distance",
            "grad_norm", "lr", "batch_loss", "comm_bytes"} <= names
    assert set(m[m.metric == "test_accuracy"].scope) == {"avg", "mean"} | {str(i)
                                                                          for i in range(6)}
    # the node mean equals the mean of the per-node rows
    ta = m[(m.metric == "test_accuracy") & (m.step == 40)].set_index("scope").value
    assert ta["mean"] == pytest.approx(ta[[str(i) for i in range(6)]].mean(), abs=1e-12)
    df = flatlab.results.load(tmp_path / "a")
    assert {"run", "status", "algorithm.name", "optim.lr", "topology.nodes"} <= set(df.columns)
    assert (df["algorithm.name"] == "diffusion").all() and (df.status == "done").all()
    # a finished run is not run again
    assert run(load_config(TINY), tmp_path / "a", progress=False).status == "done"
    with pytest.raises(RunDirError, match=r"different config \(it differs in optim.lr\); choose "
                                          r"another output directory or start over with "
                                          r"--restart"):
        run(load_config(TINY, ["optim.lr=0.2"]), tmp_path / "a", progress=False)
    # a sweep folder is not a run directory
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.yaml").write_text("name: s\n")
    with pytest.raises(RunDirError, match="is a sweep folder .* accepted: a run directory"):
        run(load_config(TINY), tmp_path / "sw", progress=False)
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["sweep.yaml"]


def test_status_records_threads_and_where_the_time_went(tmp_path):
    saved = torch.get_num_threads()
    cfg = load_config(TINY, ["measure.metrics=[loss,accuracy,hessian_top]",
                             "measure.options.hessian_top.every=20"])
    run(cfg, tmp_path / "a", progress=False, stop_after=13)
    first = json.loads((tmp_path / "a" / "status.json").read_text())["timings_s"]
    assert torch.get_num_threads() == saved  # the run's thread count is restored after it
    run(cfg, tmp_path / "a", progress=False)
    st = json.loads((tmp_path / "a" / "status.json").read_text())
    assert st["threads"] == 1  # threads: auto is one thread
    t = st["timings_s"]
    assert t["total"] == pytest.approx(st["elapsed_s"], abs=1e-3)
    # the parts add up to the total: train is what measures and checkpoints leave
    parts = t["train"] + t["measures"]["sum"] + t["checkpoint"]
    assert parts == pytest.approx(t["total"], abs=5e-3)
    assert t["measures"]["sum"] == pytest.approx(
        sum(v for k, v in t["measures"].items() if k != "sum"), abs=5e-3)
    assert {"loss", "accuracy", "hessian_top"} <= set(t["measures"])
    # a resumed run carries the time of its first start: each measure's time only grows
    assert all(t["measures"][k] >= v for k, v in first["measures"].items())
    assert t["checkpoint"] >= first["checkpoint"] > 0
    # threads is an execution setting: a run resumes (or is skipped) under another count
    assert run(load_config(TINY | {"threads": 2}, ["measure.metrics=[loss,accuracy,hessian_top]",
                                                   "measure.options.hessian_top.every=20"]),
               tmp_path / "a", progress=False).status == "done"


def test_a_folder_of_other_files_is_not_taken_for_a_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds no run but other files \(notes.txt\); "
                                          r"accepted: a new or empty folder"):
        run(load_config(TINY), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
    (tmp_path / "empty").mkdir()  # an empty folder, or one a run started in, is accepted
    assert run(load_config(TINY, ["train.steps=2"]), tmp_path / "empty",
               progress=False).status == "done"


def test_whole_runs_are_deterministic(tmp_path):
    run(load_config(TINY), tmp_path / "a", progress=False)
    run(load_config(TINY), tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(metrics(tmp_path / "a"), metrics(tmp_path / "b"))
    run(load_config(TINY, ["seed=1"]), tmp_path / "c", progress=False)
    assert not metrics(tmp_path / "a").value.equals(metrics(tmp_path / "c").value)


@pytest.mark.parametrize("stop,algo", [(1, "diffusion"), (7, "diffusion"), (13, "diffusion"),
                                       (30, "diffusion"), (39, "diffusion"),
                                       (1, "momentum-tracking"), (13, "qg-dsgdm"),
                                       (7, "gradient-tracking"), (13, "exact-diffusion")])
def test_resume_ends_with_exactly_the_uninterrupted_metrics(tmp_path, stop, algo):
    cfg = load_config(TINY, [f"algorithm.name={algo}"])
    run(cfg, tmp_path / "full", progress=False)
    part = run(cfg, tmp_path / "cut", progress=False, stop_after=stop)
    assert part.status == "running"
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "running"
    # another process would start with a fresh global RNG
    torch.manual_seed(12345)
    assert run(cfg, tmp_path / "cut", progress=False).status == "done"
    pd.testing.assert_frame_equal(metrics(tmp_path / "full"), metrics(tmp_path / "cut"))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["state"]["x"], b["state"]["x"])


def test_resume_after_sigkill(tmp_path):
    """A real kill at an arbitrary moment, in a subprocess, then resume in another one."""
    cfg = dict(TINY, train={"steps": 400}, checkpoint_every=13)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "flatlab.cli", "run", str(tmp_path / "c.yaml"), "--out",
           str(tmp_path / "killed"), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = json.loads((tmp_path / "killed" / "status.json").read_text())
    assert st["status"] == "running" and st["step"] < 400, "kill came too late to test"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run(load_config(cfg), tmp_path / "full", progress=False)
    pd.testing.assert_frame_equal(metrics(tmp_path / "full"), metrics(tmp_path / "killed"))


def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = load_config(TINY, ["optim.lr=1e6", "optim.schedule=constant", "optim.warmup=0",
                             "algorithm.name=consensus"])
    res = run(cfg, tmp_path / "d", progress=False)
    assert res.status == "diverged" and 0 < res.step < 40
    st = json.loads((tmp_path / "d" / "status.json").read_text())
    assert st["status"] == "diverged" and "non-finite" in st["message"]
    m = metrics(tmp_path / "d")
    assert (m.metric == "diverged").any() and m.step.max() == res.step
    assert run(cfg, tmp_path / "d", progress=False).status == "diverged"  # recorded, not rerun


def test_sweep_runs_grid_records_failures_and_resumes(tmp_path, monkeypatch):
    spec = {
        "name": "s",
        "base": dict(TINY, train={"steps": 10}, measure={"every": 5, "train_subset": 200}),
        "out": str(tmp_path / "sweep"),
        "grid": {"algorithm.name": ["centralized", "consensus"],
                 "optim.lr": [0.05, 1e6]},
        "overrides": {"optim.schedule": "constant", "optim.warmup": 0},
    }
    df = run_sweep(load_sweep(spec), progress=False, verbose=False)
    assert len(df) == 4
    status = dict(zip(df.run, df.status, strict=True))
    assert status["algorithm.name=centralized,optim.lr=0.05"] == "done"
    assert status["algorithm.name=consensus,optim.lr=1000000.0"] == "diverged"
    res = flatlab.results.load(tmp_path / "sweep")
    assert set(res.run) == set(df.run)
    assert set(res["algorithm.name"]) == {"centralized", "consensus"}
    # a run that crashes is marked failed and the sweep goes on; a rerun skips finished runs
    import flatlab.experiment.many as many_mod

    calls = []

    def flaky(cfg, path, progress=True, resume=True):
        calls.append(cfg.name)
        raise RuntimeError("boom")

    spec["grid"]["optim.lr"].append(0.02)
    monkeypatch.setattr(many_mod, "run", flaky)
    df2 = run_sweep(load_sweep(spec), progress=False, verbose=False)
    assert len(calls) == 2 and all("optim.lr=0.02" in c for c in calls)
    new = df2.run.str.contains("optim.lr=0.02")
    assert (df2[new].status == "failed").all() and df2[~new].skipped.all()
    failed = json.loads((tmp_path / "sweep" / calls[0] / "status.json").read_text())
    assert failed["status"] == "failed" and "boom" in failed["message"]
    monkeypatch.undo()
    df3 = run_sweep(load_sweep(spec), progress=False, verbose=False)  # failed runs are retried
    assert set(df3[~df3.skipped].run) == set(calls)


def test_sweep_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="sweep field colour is unknown"):
        load_sweep({"colour": 1})
    with pytest.raises(ConfigError, match="grid"):
        load_sweep({"grid": {"seed": 3}})
    with pytest.raises(ConfigError, match=r"sweep point optim.lr=-1: config field optim.lr"):
        run_sweep(load_sweep({"base": TINY, "grid": {"optim.lr": [-1]},
                              "out": str(tmp_path / "x")}), progress=False)
    assert not (tmp_path / "x" / "optim.lr=-1").exists()  # nothing runs before all validate


@pytest.mark.kernels  # a float32 mean against a float64 one: make test-kernels
def test_init_from_starts_every_node_at_the_source_average(tmp_path):
    """The escape experiment's start: every node at the source run's final x̄ (checkpoint)."""
    from flatlab.experiment import average_model, build

    run(load_config(TINY), tmp_path / "src", progress=False)
    ck = torch.load(tmp_path / "src" / "checkpoint.pt", weights_only=True)
    xbar = ck["state"]["x"].double().mean(0)
    x, _ = average_model(tmp_path / "src")
    assert_close(x, xbar.float(), what="x̄ read back (float32 mean against the float64 one)")
    cfg = load_config({**TINY, "init_from": str(tmp_path / "src"), "seed": 5})
    x0 = build(cfg).stack.initial_params()
    assert x0.shape[0] == 6
    assert_close(x0, xbar.float().expand(6, -1), what="every node starts at x̄")
    # its first measurement is the source's last one (same evaluation sets: same data.seed)
    res = run(cfg, tmp_path / "esc", progress=False)
    assert res.status == "done"
    a, b = metrics(tmp_path / "src"), metrics(tmp_path / "esc")

    def at(m, step):
        return m[(m.metric == "train_loss") & (m.scope == "avg") & (m.step == step)].value.item()

    assert at(b, 0) == pytest.approx(at(a, 40), rel=1e-5)


def test_init_from_errors_are_one_line(tmp_path):
    from flatlab.experiment import build

    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        build(load_config({**TINY, "init_from": str(tmp_path / "none")}))
    run(load_config(TINY), tmp_path / "src", progress=False)
    other = {**TINY, "model": {"name": "mlp", "options": {"hidden": [8]}},
             "init_from": str(tmp_path / "src")}
    with pytest.raises(ConfigError, match="same model") as e:
        build(load_config(other))
    assert "\n" not in str(e.value)
