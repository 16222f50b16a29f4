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

    def flaky(cfg, path, progress=True, resume=True):
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
    # each line with the time so far (and what is left)
    assert [line.split(" (")[0] for line in out.out.splitlines()] == ["[1/2] a: done",
                                                                     "[2/2] b: failed"]
    assert "so far, about" in out.out.splitlines()[0]
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
    (tmp_path / "junk").mkdir()  # a checkpoint that passes the checks before the runs ...
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    damaged = dict(TINY, init_from=str(tmp_path / "junk"))  # ... and fails when the run starts
    rows = run_many([(tmp_path / "a", TINY), (tmp_path / "b", damaged)], 2)
    assert rows.status.tolist() == ["done", "failed"]
    assert "checkpoint" in rows.message[1]
    assert _status(tmp_path / "b")["status"] == "failed"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == ["[1/2] a: done", "[2/2] b: failed"]


def test_mean_and_se_counts_done_runs_only():
    t = pd.DataFrame({"m": ["a"] * 4 + ["b"], "status": ["done", "done", "done", "diverged",
                                                         "done"],
                      "acc": [0.1, 0.2, 0.6, math.nan, 0.5]})
    s = study.mean_and_se(t, ["m"], ["acc"]).set_index("m")
    assert s.loc["a", "seeds"] == 3 and s.loc["a", "diverged"] == 1
    assert s.loc["a", "acc_mean"] == pytest.approx(0.3)
    assert s.loc["a", "acc_se"] == pytest.approx(pd.Series([0.1, 0.2, 0.6]).std() / math.sqrt(3))
    assert s.loc["b", "acc_mean"] == 0.5 and math.isnan(s.loc["b", "acc_se"])
    assert "converged" not in s  # only counted when the runs were checked
    t["converged"] = [True, False, True, False, True]
    s = study.mean_and_se(t, ["m"], ["acc"]).set_index("m")
    assert s["converged"].to_dict() == {"a": 2, "b": 1}


def _fake_tuning(monkeypatch, score):
    """Replace running and reading back by ``score(method, lr) -> (accuracy, status)``."""
    calls = []
    monkeypatch.setattr(study, "run_many", lambda jobs, workers: calls.append(len(jobs)))

    def read(path, columns):
        method, lr = path.split("|")
        acc, status = score(method, float(lr))
        return {"status": status, "holdout_accuracy": acc}

    monkeypatch.setattr(study, "final_values", read)
    return calls


def _job(p):
    return f"{p['method']}|{p['lr']}", {}


def test_tune_bracketed_extends_an_edge_best_until_it_is_interior(monkeypatch):
    # a: peak at 0.0009 (below the grid: two extensions down); b: interior at 0.03;
    # c: best at the high edge, and the next value diverges
    peaks = {"a": 0.0009, "b": 0.03}

    def score(m, lr):
        if m == "c":
            return (math.nan, "diverged") if lr > 0.1 else (lr, "done")
        return 1 - abs(math.log(lr / peaks[m])), "done"

    calls = _fake_tuning(monkeypatch, score)
    pts = [{"method": m, "lr": lr} for m in "abc" for lr in (0.003, 0.01, 0.03, 0.1)]
    t = study.tune_bracketed(pts, _job, 2, ["method"], "lr")
    assert calls == [12, 2, 1]  # initial grid, then a and c, then a again
    a = t[t.method == "a"]
    assert a.lr.tolist() == [0.00027, 0.0009, 0.003, 0.01, 0.03, 0.1]  # ratio 10/3, 3 digits
    assert a.extended.tolist() == [True, True, False, False, False, False]
    assert a.loc[a.chosen, "lr"].item() == 0.0009 and a.interior.all()
    assert (a.extensions == 2).all()
    b = t[t.method == "b"]
    assert len(b) == 4 and not b.extended.any() and b.loc[b.chosen, "lr"].item() == 0.03
    c = t[t.method == "c"]
    assert c.lr.max() == 0.333 and c.status.iloc[-1] == "diverged"
    assert c.loc[c.chosen, "lr"].item() == 0.1 and c.interior.all()  # a diverged neighbour bounds


def test_tune_bracketed_stops_at_the_extension_limit_and_says_so(monkeypatch):
    _fake_tuning(monkeypatch, lambda m, lr: (lr, "done"))  # ever better upward
    t = study.tune_bracketed([{"method": "a", "lr": v} for v in (1.0, 2.0)], _job, 1,
                             ["method"], "lr", max_extensions=3)
    assert t.lr.tolist() == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert not t.interior.any() and (t.extensions == 3).all()


def test_final_convergence_reads_a_run_and_never_counts_a_missing_curve(tmp_path):
    cfg = dict(TINY, train={"steps": 8})
    run_many([(tmp_path / "r", cfg)], 1, verbose=False)
    got = study.final_convergence(tmp_path / "r")
    m = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    acc = m[(m.metric == "test_accuracy") & (m.scope == "avg")].sort_values("step")
    # the window is the last 20% of 8 steps: from step 6.4, so the measurements at 8 only ->
    # fewer than two points: not converged
    assert acc.step.tolist() == [0, 2, 4, 6, 8]
    assert got["converged"] is False and math.isnan(got["change"])
    loose = study.final_convergence(tmp_path / "r", last=0.25, threshold=2.0)
    assert loose["converged"] is True
    assert loose["change"] == pytest.approx(acc.value.iloc[-1] - acc.value.iloc[-2])
    missing = study.final_convergence(tmp_path / "nothing")
    assert missing["converged"] is False and math.isnan(missing["change"])


def test_tune_bracketed_stops_at_the_hyperparameters_own_limit(monkeypatch):
    # choco's gamma lives in (0, 1]: an edge best at 0.5 tries 1.0 (not 1.5), and a best at 1.0
    # is reported at its limit, not extended
    _fake_tuning(monkeypatch, lambda m, lr: (lr, "done"))
    t = study.tune_bracketed([{"method": "a", "lr": v} for v in (0.167, 0.5)], _job, 1,
                             ["method"], "lr", limits=lambda key: (0.0, 1.0))
    assert t.lr.tolist() == [0.167, 0.5, 1.0] and t.extended.tolist() == [False, False, True]
    assert t.at_limit.all() and not t.interior.any() and (t.extensions == 1).all()


def test_tune_bracketed_chooses_on_the_mean_over_seeds(monkeypatch):
    # seed noise of +-0.01 on a flat top: the per-seed best flips between 0.1 and 0.3, the mean
    # over three seeds ties them within one standard error, and the tie goes to the centre
    calls = []
    monkeypatch.setattr(study, "run_many", lambda jobs, workers: calls.append(len(jobs)))
    top = {0.01: 0.80, 0.03: 0.90, 0.1: 0.950, 0.3: 0.951, 0.9: 0.70}

    def read(path, columns):
        lr, seed = path.split("|")
        return {"status": "done",
                "holdout_accuracy": top[float(lr)] + 0.01 * (-1) ** int(seed) * (float(lr) > 0.05)}

    monkeypatch.setattr(study, "final_values", read)
    t = study.tune_bracketed([{"method": "a", "lr": v} for v in top], lambda p: (
        f"{p['lr']}|{p['seed']}", {}), 1, ["method"], "lr", seeds=(0, 1, 2), classes=10)
    assert calls == [15] and (t.holdout_seeds == 3).all()
    assert t.loc[t.chosen, "lr"].item() == 0.1 and t.interior.all()
    assert t.tied.tolist() == [False, False, True, True, False]
    assert not t.untrainable.any() and len(t.attrs["per_seed"]) == 15
    # a method whose best is at chance is untrainable
    monkeypatch.setattr(study, "final_values", lambda path, columns: {
        "status": "done", "holdout_accuracy": 0.1})
    t = study.tune_bracketed([{"method": "a", "lr": v} for v in (0.1, 0.3, 0.9)], lambda p: (
        f"{p['lr']}|{p['seed']}", {}), 1, ["method"], "lr", seeds=(0, 1, 2), classes=10)
    assert t.untrainable.all()
