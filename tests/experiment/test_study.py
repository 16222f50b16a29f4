"""What studies, sweeps and the demo share: running many configs (flatlab.experiment.many) and
tuning and summarizing them (flatlab.experiment.study)."""

import json
import math
import os
import socket

import pandas as pd
import pytest
import torch

import flatlab.experiment.many as many_mod
from flatlab.errors import ConfigError
from flatlab.experiment import load_config, run_many, study, to_dict
from flatlab.experiment.rundir import _process_start

TINY = {"name": "tiny", "device": "cpu",
        "data": {"name": "digits", "partition": "iid", "batch_size": 8},
        "model": {"name": "mlp", "options": {"hidden": [8]}},
        "topology": {"name": "ring", "nodes": 4}, "algorithm": {"name": "diffusion"},
        "optim": {"lr": 0.1}, "train": {"steps": 4},
        "measure": {"every": 2, "train_subset": 100, "test_subset": 100}}


def _status(path):
    return json.loads((path / "status.json").read_text())


def test_run_many_refuses_every_job_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(many_mod, "run", lambda *a, **k: pytest.fail("nothing may run"))
    bad = dict(TINY, optim={"lr": -1})
    with pytest.raises(ConfigError, match=r"^run b: config field optim.lr: -1"):
        run_many([(tmp_path / "a", TINY), (tmp_path / "b", bad)], 1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "status.json").write_text(json.dumps({"status": "done", "step": 4}))
    (other / "config.yaml").write_text(json.dumps(to_dict(load_config(bad | {"optim": {}}))))
    with pytest.raises(ConfigError, match=r"^sweep point other: run directory .* different"):
        run_many([(tmp_path / "a", TINY), (other, TINY)], 2, label="sweep point")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # nothing written
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        run_many([(tmp_path / "a", TINY)], -1)
    assert run_many([(tmp_path / "a", bad)], 0).empty  # 0 workers: nothing is read or run


def test_run_many_in_process_marks_failures_skips_finished_and_restores_threads(
        tmp_path, monkeypatch, capsys):
    real, seen = many_mod.run, []

    def flaky(cfg, path, progress=True):
        seen.append((path.name, torch.get_num_threads()))
        if path.name == "b":
            raise RuntimeError("boom\nsecond line")
        return real(cfg, path, progress=progress)

    monkeypatch.setattr(many_mod, "run", flaky)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        rows = run_many([(tmp_path / "a", TINY), (tmp_path / "b", TINY)], 1)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert seen == [("a", 1), ("b", 1)]  # one thread each, restored afterwards
    assert list(rows.columns) == ["run", "status", "step", "message", "skipped"]
    assert rows.to_dict("records")[1] == {"run": "b", "status": "failed", "step": 0,
                                          "message": "RuntimeError: boom", "skipped": False}
    assert rows.status[0] == "done" and not rows.skipped.any()
    assert _status(tmp_path / "b")["status"] == "failed"
    out = capsys.readouterr()
    assert out.out.splitlines() == ["[1/2] a: done", "[2/2] b: failed"]
    assert "boom" in out.err  # the traceback of an unexpected error
    again = run_many([(tmp_path / "a", TINY), (tmp_path / "b", TINY)], 1, verbose=False)
    assert again.skipped.tolist() == [True, False] and seen[-1] == ("b", 1)  # failed: retried
    assert capsys.readouterr().out == ""


def test_run_many_leaves_a_run_alive_in_another_process_to_it(tmp_path, monkeypatch):
    monkeypatch.setattr(many_mod, "run", lambda *a, **k: pytest.fail("nothing may run"))
    path = tmp_path / "a"
    path.mkdir()
    pid = os.getppid()  # alive, and not this process
    (path / "status.json").write_text(json.dumps(
        {"status": "running", "step": 2, "pid": pid, "host": socket.gethostname(),
         "pid_start": _process_start(pid)}))
    rows = run_many([(path, TINY)], 1)
    assert rows.to_dict("records") == [{
        "run": "a", "status": "running", "step": 2, "skipped": True,
        "message": f"running in process {pid} on {socket.gethostname()}"}]


def test_run_many_in_worker_processes(tmp_path, capsys):
    missing = dict(TINY, init_from=str(tmp_path / "none"))  # valid, fails when it starts
    rows = run_many([(tmp_path / "a", TINY), (tmp_path / "b", missing)], 2)
    assert rows.status.tolist() == ["done", "failed"]
    assert rows.message[1].startswith("ConfigError: init_from")
    assert _status(tmp_path / "b")["status"] == "failed"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == ["[1/2] a: done", "[2/2] b: failed"]


def test_choose_best_takes_the_highest_score_ties_to_the_smaller_value_and_skips_nan_groups():
    t = pd.DataFrame({"method": ["a", "a", "a", "b", "b", "c"],
                      "lr": [0.3, 0.1, 0.03, 0.1, 0.3, 0.1],
                      "acc": [0.8, 0.8, 0.5, 0.2, math.nan, math.nan]})
    chosen = study.choose_best(t, ["method"], "acc", "lr")
    assert t[chosen][["method", "lr"]].values.tolist() == [["a", 0.1], ["b", 0.1]]


def test_mean_and_se_counts_done_runs_only():
    t = pd.DataFrame({"m": ["a"] * 4 + ["b"], "status": ["done", "done", "done", "diverged",
                                                         "done"],
                      "acc": [0.1, 0.2, 0.6, math.nan, 0.5]})
    s = study.mean_and_se(t, ["m"], ["acc"]).set_index("m")
    assert s.loc["a", "seeds"] == 3 and s.loc["a", "diverged"] == 1
    assert s.loc["a", "acc_mean"] == pytest.approx(0.3)
    assert s.loc["a", "acc_se"] == pytest.approx(pd.Series([0.1, 0.2, 0.6]).std() / math.sqrt(3))
    assert s.loc["b", "acc_mean"] == 0.5 and math.isnan(s.loc["b", "acc_se"])
