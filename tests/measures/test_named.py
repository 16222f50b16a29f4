"""Named measures scheduled by a run, against independent references.

- every named measure runs through the runner and writes finite rows, its settings
  (``measures.json``) and its tables; ``every`` thins a measure;
- ``hessian_top`` (and the smallest eigenvalue) at the run's final x̄ equal ``eigvalsh`` of the
  dense float64 Hessian of the same loss on the same curvature subset; ``hessian_top_nodes``
  equals node-by-node eigenvalues; ``hessian_trace`` is within 4 standard errors of the trace;
- on least squares (a quadratic): ``consensus_gap = ½ tr(H C)`` exactly, and ``loss_gap`` is 0
  at the known optimum and ``f(x̄) − f*`` elsewhere;
- the mechanism on least squares: ``disagreement`` is ``tr(HΣ)`` and its gap exactly ``½ tr(HΣ)``,
  ``disagreement_alignment`` the share of ``‖D‖²`` in ``eigh``'s top eigenvectors,
  ``edge_of_stability`` ``η λ_max / 2`` at x̄ and every node, ``hessian_trace_nodes`` the trace;
- bad settings are refused with one line naming the accepted ones.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flatlab.errors import ConfigError
from flatlab.experiment import load_config, run
from flatlab.experiment.runner import build, measure_run
from flatlab.measures import named

REPO = Path(__file__).resolve().parents[2]


def _cfg(**kw):
    base = {
        "name": "m", "seed": 0, "dtype": "float64", "init": "different",
        "data": {"name": "digits", "partition": "iid", "batch_size": 8},
        "model": {"name": "mlp", "options": {"hidden": [4]}},
        "topology": {"name": "ring", "nodes": 4},
        "algorithm": {"name": "dsgd"},
        "optim": {"lr": 0.05},
        "train": {"steps": 4},
        "measure": {"every": 2, "train_subset": 300, "test_subset": 100,
                    "curvature_subset": 128, "curvature_dtype": "float64",
                    "metrics": list(named.available())},
        "device": "cpu",
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


def _dense_hessian(built, x, buffers):
    from flatlab.measures import model_loss

    fn = model_loss(built.stack, *built.curvature_eval, buffers=buffers)
    return torch.autograd.functional.hessian(lambda v: fn(v), x.double())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("named") / "run"
    mopts = {"hessian_top": {"k": 2, "tol": 1e-9, "max_iter": 200, "smallest": True},
             "hessian_top_nodes": {"tol": 1e-9, "max_iter": 200},
             "hessian_trace": {"num_matvecs": 90, "every": 4},
             "spectral_density": {"lanczos_steps": 20, "num_runs": 2},
             "sharpness_average": {"samples": 10}, "landscape_1d": {"points": 5},
             "landscape_2d": {"points": 3}}
    metrics = [m for m in named.available() if m != "loss_gap"]
    cfg = load_config(_cfg(measure={"metrics": metrics, "options": mopts}))
    res = run(cfg, out, progress=False)
    assert res.status == "done"
    return cfg, out


def test_every_measure_writes_finite_rows_settings_and_tables(full_run):
    cfg, out = full_run
    df = pd.read_parquet(out / "metrics.parquet")
    assert np.isfinite(df.value).all()
    got = set(df.metric)
    for name in cfg.measure.metrics:
        optional = {"hessian_min", "disagreement_curvature_stderr"}  # on request only
        assert set(named.get(name).metrics) - optional <= got, name
    assert {"hessian_min", "hessian_top_2", "sharpness_worst", "consensus_gap",
            "barrier_to_average", "landscape_2d_max"} <= got
    # every: the trace at steps 0 and 4 only (every 4); the loss at 0, 2, 4
    trace = df[(df.metric == "hessian_trace") & (df.scope == "avg")]
    assert sorted(trace.step) == [0, 4]
    assert sorted(df[(df.metric == "train_loss") & (df.scope == "avg")].step) == [0, 2, 4]
    info = json.loads((out / "measures.json").read_text())
    assert info["measures"]["hessian_top"]["k"] == 2
    # the mechanism's curvature thins itself: every 10th measurement by default
    assert info["measures"]["disagreement"]["every"] == 20
    assert info["measures"]["hessian_trace_nodes"]["every"] == 20
    assert info["measures"]["consensus_gap"]["every"] is None
    assert sorted(df[df.metric == "disagreement_curvature"].step) == [0, 4]
    assert info["measures"]["sharpness_worst"]["rho"] == 0.05
    assert info["curvature_eval_size"] == 128 and info["curvature_dtype"] == "float64"
    dens = pd.read_parquet(out / "density.parquet")
    assert set(dens.step) == {0, 2, 4} and len(dens) == 3 * 2 * 20
    np.testing.assert_allclose(dens.groupby(["step", "run"]).weight.sum(), 1.0, atol=1e-10)
    land = pd.read_parquet(out / "landscape.parquet")
    assert set(land.kind) == {"slice_1d", "slice_2d"} and len(land) == 3 * (5 + 9)


def test_curvature_measures_equal_the_dense_hessian(full_run):
    cfg, out = full_run
    built = build(cfg)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    X = ck["state"]["x"]  # noqa: N806
    built.stack.load_buffers(ck["buffers"])
    H = _dense_hessian(built, X.mean(0), built.stack.average_buffers())  # noqa: N806
    ev = np.linalg.eigvalsh(H.numpy())
    df = pd.read_parquet(out / "metrics.parquet")
    last = df[df.step == 4].set_index(["metric", "scope"]).value
    assert last["hessian_top", "avg"] == pytest.approx(ev[-1], rel=1e-6)
    assert last["hessian_top_2", "avg"] == pytest.approx(ev[-2], rel=1e-6)
    assert last["hessian_min", "avg"] == pytest.approx(ev[0], rel=1e-6, abs=1e-9)
    assert last["hessian_top_converged", "avg"] == 1.0
    tr, se = last["hessian_trace", "avg"], last["hessian_trace_stderr", "avg"]
    assert abs(tr - ev.sum()) <= 4 * se + 1e-9 * abs(ev.sum())
    # every node's own Hessian (its own buffers), one at a time
    for i in range(4):
        Hi = _dense_hessian(built, X[i], {k: v[i] for k, v in built.stack.buffers.items()})  # noqa: N806
        top = np.linalg.eigvalsh(Hi.numpy())[-1]
        assert last["hessian_top", str(i)] == pytest.approx(top, rel=1e-6)


def _least_squares(measure=None, **kw):
    return load_config(_cfg(
        data={"name": "least-squares", "partition": "natural", "batch_size": 8,
              "options": {"dim": 5, "samples_per_node": 20}},
        model={"name": "logistic", "options": {}},
        measure={"every": 2, "train_subset": None, "curvature_subset": 10**6,
                 "metrics": ["consensus_gap", "loss_gap", "loss"], **(measure or {})}, **kw))


def test_consensus_gap_is_half_trace_hc_and_loss_gap_vanishes_at_the_optimum():
    cfg = _least_squares()
    built = build(cfg)
    torch.manual_seed(1)
    X = built.stack.initial_params() + 0.3 * torch.randn(4, built.stack.P, dtype=torch.float64)  # noqa: N806
    rows = {(m, s): v for m, s, v in measure_run(built, X, 0)}
    # a quadratic: f(x_i) - f(x̄) averages to ½ (x_i - x̄)ᵀ H (x_i - x̄) exactly (Σ (x_i - x̄) = 0)
    from flatlab.measures import model_loss

    fn = model_loss(built.stack, *built.train_eval)
    H = torch.autograd.functional.hessian(fn, X.mean(0))  # noqa: N806
    D = X - X.mean(0)  # noqa: N806
    C = D.T @ D / 4  # noqa: N806
    assert rows["consensus_gap", "network"] == pytest.approx(0.5 * float(torch.trace(H @ C)),
                                                             rel=1e-9)
    # loss_gap: f(x̄) − f* on the whole training set, 0 at the optimum
    ds = built.dataset
    fstar = ds.info["optimum_loss"]
    full = model_loss(built.stack, ds.x_train.double(), ds.y_train.double())
    assert rows["loss_gap", "avg"] == pytest.approx(float(full(X.mean(0))) - fstar, rel=1e-9)
    opt = built.stack.layout.flatten({k: v.double() for k, v in ds.optimum.items()})
    at_opt = {(m, s): v for m, s, v in measure_run(built, opt.expand(4, -1).clone(), 0)}
    assert abs(at_opt["loss_gap", "avg"]) < 1e-10
    assert at_opt["consensus_gap", "network"] == 0.0


def test_the_mechanism_measures_on_a_quadratic_equal_their_closed_forms():
    cfg = _least_squares(measure={"metrics": [
        "disagreement", "disagreement_alignment", "edge_of_stability", "hessian_trace_nodes",
        "hessian_top", "consensus_distance"],
        "options": {"disagreement_alignment": {"k": 2, "tol": 1e-10, "max_iter": 50},
                    "edge_of_stability": {"tol": 1e-10, "max_iter": 50, "nodes": True},
                    "hessian_top": {"k": 2, "tol": 1e-10, "max_iter": 50},
                    "hessian_trace_nodes": {"num_matvecs": 60}}})
    built = build(cfg)
    torch.manual_seed(2)
    X = built.stack.initial_params() + 0.3 * torch.randn(4, built.stack.P, dtype=torch.float64)  # noqa: N806
    rows = {(m, s): v for m, s, v in measure_run(built, X, 0)}
    from flatlab.measures import model_loss

    fn = model_loss(built.stack, *built.curvature_eval)
    H = torch.autograd.functional.hessian(fn, X.mean(0)).numpy()  # noqa: N806
    D = (X - X.mean(0)).numpy()  # noqa: N806
    trhs = float(np.trace(H @ (D.T @ D / 4)))
    assert rows["disagreement_curvature", "avg"] == pytest.approx(trhs, rel=1e-10)
    assert rows["disagreement_gap", "avg"] == pytest.approx(0.5 * trhs, rel=1e-9)
    assert rows["disagreement_gap_ratio", "avg"] == pytest.approx(1.0, abs=1e-9)
    xi2 = rows["consensus_distance", "network"]
    assert rows["disagreement_rayleigh", "avg"] == pytest.approx(trhs / xi2, rel=1e-10)
    h, V = np.linalg.eigh(H)  # noqa: N806
    top = V[:, -2:]
    share = float(((D @ top) ** 2).sum() / (D**2).sum())
    assert rows["disagreement_alignment", "avg"] == pytest.approx(share, rel=1e-6)
    assert rows["disagreement_alignment_1", "avg"] + rows["disagreement_alignment_2", "avg"] \
        == pytest.approx(share, rel=1e-6)
    assert rows["disagreement_alignment_chance", "avg"] == 2 / built.stack.P
    lr = rows["lr", "network"]
    assert lr > 0 and rows["edge_of_stability", "avg"] == pytest.approx(lr * h[-1] / 2, rel=1e-8)
    for scope in ("mean", "max", "min", "0", "3"):  # a quadratic: every node's Hessian is H
        assert rows["edge_of_stability", scope] == pytest.approx(lr * h[-1] / 2, rel=1e-8)
        assert rows["hessian_trace", scope] == pytest.approx(h.sum(), rel=1e-9)
    assert rows["edge_of_stability", "std"] == pytest.approx(0.0, abs=1e-8)
    assert rows["hessian_top_2", "avg"] == pytest.approx(h[-2], rel=1e-8)
    # per-node curvature on the head of the curvature subset: node 1's Hessian on 10 samples
    sub = build(_least_squares(measure={"metrics": ["hessian_top_nodes"], "options": {
        "hessian_top_nodes": {"subset": 10, "tol": 1e-10, "max_iter": 50, "every": 2}}}))
    few = {(m, s): v for m, s, v in measure_run(sub, X, 0)}
    x10, y10 = (t[:10] for t in sub.curvature_eval)
    H10 = torch.autograd.functional.hessian(model_loss(sub.stack, x10, y10), X[1]).numpy()  # noqa: N806
    assert few["hessian_top", "1"] == pytest.approx(np.linalg.eigvalsh(H10)[-1], rel=1e-8)
    assert abs(few["hessian_top", "1"] - h[-1]) > 1e-6 * h[-1]  # not the whole set's
    # no disagreement (every node at x̄): the ratio and the alignment are undefined, not NaN rows
    same = {(m, s): v for m, s, v in measure_run(built, X.mean(0).expand(4, -1).clone(), 0)}
    assert same["disagreement_curvature", "avg"] == 0.0 and same["disagreement_gap", "avg"] == 0
    assert ("disagreement_gap_ratio", "avg") not in same
    assert ("disagreement_alignment", "avg") not in same
    assert all(math.isfinite(v) for v in same.values())
    # nodes that agree up to rounding (a centralized run): no ratio or share of rounding noise
    ulp = 2 * torch.finfo(torch.float64).eps * torch.randint(0, 2, (4, built.stack.P),
                                                              dtype=torch.float64) - \
        torch.finfo(torch.float64).eps  # ±1 ulp of each coordinate
    tiny = X.mean(0) * (1 + ulp)
    noise = {(m, s): v for m, s, v in measure_run(built, tiny, 0)}
    assert 0 < noise["disagreement_curvature", "avg"] < 1e-28
    assert ("disagreement_gap_ratio", "avg") not in noise
    assert ("disagreement_alignment", "avg") not in noise


def test_one_eigensolve_at_xbar_serves_every_measure_that_wants_one(monkeypatch):
    """hessian_top, disagreement_alignment and edge_of_stability share the step's largest solve."""
    calls = []
    real = named.lanczos

    def counting(op, k=1, **kw):
        calls.append(k)
        return real(op, k, **kw)

    monkeypatch.setattr(named, "lanczos", counting)
    tight = {"tol": 1e-10, "max_iter": 50}
    built = build(_least_squares(measure={
        "metrics": ["hessian_top", "disagreement_alignment", "edge_of_stability"],
        "options": {"hessian_top": tight, "disagreement_alignment": {"k": 3, **tight},
                    "edge_of_stability": tight}}))
    torch.manual_seed(2)
    X = built.stack.initial_params() + 0.3 * torch.randn(4, built.stack.P, dtype=torch.float64)  # noqa: N806
    rows = {(m, s): v for m, s, v in measure_run(built, X, 0)}
    assert calls == [3]  # one solve for three pairs, not three solves
    from flatlab.measures import model_loss

    h = np.linalg.eigvalsh(torch.autograd.functional.hessian(
        model_loss(built.stack, *built.curvature_eval), X.mean(0)).numpy())
    assert rows["hessian_top", "avg"] == pytest.approx(h[-1], rel=1e-8)
    assert ("hessian_top_2", "avg") not in rows  # each gets the pairs it asked for
    assert rows["edge_of_stability", "avg"] == pytest.approx(rows["lr", "network"] * h[-1] / 2,
                                                             rel=1e-8)
    # without disagreement the alignment asks for nothing: the edge's one pair is solved for
    calls.clear()
    same = {(m, s): v for m, s, v in measure_run(built, X.mean(0).expand(4, -1).clone(), 0)}
    assert calls == [1] and ("disagreement_alignment_converged", "avg") not in same
    assert same["disagreement_alignment_chance", "avg"] == 3 / built.stack.P
    # other settings are another solve
    other = build(_least_squares(measure={
        "metrics": ["hessian_top", "edge_of_stability"],
        "options": {"hessian_top": tight, "edge_of_stability": {"tol": 1e-6}}}))
    calls.clear()
    measure_run(other, X, 0)
    assert sorted(calls) == [1, 1]


def test_equal_float32_nodes_average_to_themselves_and_measure_no_disagreement():
    """x̄ is accumulated in float64: 12 equal float32 rows average to the row, bit for bit."""
    built = build(load_config(_cfg(
        dtype="float32", init="same", topology={"name": "ring", "nodes": 12},
        measure={"curvature_dtype": "float32", "metrics": [
            "disagreement", "disagreement_alignment", "hessian_trace_nodes",
            "hessian_top_nodes"]})))
    X = built.stack.initial_params()  # noqa: N806
    assert X.dtype == torch.float32 and bool((X == X[:1]).all())
    # (a float32 mean of 12 equal rows may be off by rounding: 3v is not exact in float32)
    rows = {(m, s): v for m, s, v in measure_run(built, X, 0)}
    assert rows["disagreement_curvature", "avg"] == 0.0
    assert rows["disagreement_gap", "avg"] == 0.0
    assert ("disagreement_alignment", "avg") not in rows
    for metric in ("hessian_trace", "hessian_top"):  # one computation for every node
        assert rows[metric, "max"] == rows[metric, "min"] == rows[metric, "0"] == rows[metric, "11"]


def test_node_models_are_evaluated_on_a_fixed_subset_and_the_average_on_the_whole_set():
    def rows(node_subset):
        opts = {m: {"node_subset": node_subset} for m in ("loss", "accuracy")}
        built = build(load_config(_cfg(measure={"metrics": ["loss", "accuracy"],
                                                "options": opts})))
        X = built.stack.initial_params()  # noqa: N806 - "different": every node its own model
        return built, {(m, s): v for m, s, v in measure_run(built, X, 0)}

    built, whole = rows(None)
    _, same = rows(300)  # the whole training set (300 samples): nothing changes there
    _, sub = rows(50)
    assert same["train_loss", "2"] == whole["train_loss", "2"]
    for key in (("train_loss", "avg"), ("test_accuracy", "avg"), ("test_loss", "avg")):
        assert sub[key] == whole[key]  # x̄ on the whole evaluation sets
    for i in range(4):  # a node on 50 samples: another value, a multiple of 1/50
        assert sub["train_loss", str(i)] != whole["train_loss", str(i)]
        assert sub["train_accuracy", str(i)] * 50 == pytest.approx(
            round(sub["train_accuracy", str(i)] * 50), abs=1e-9)
    assert rows(50)[1] == sub  # the same subset every time


@pytest.mark.parametrize("measure_cfg, needle", [
    ({"metrics": ["hessian_tops"]}, "measure.metrics[0]"),
    ({"options": {"hessian_top": {"kk": 2}}}, "accepted: every, k, tol"),
    ({"options": {"hessian_top": {"method": "arnoldi"}}}, "accepted: lanczos, power"),
    ({"options": {"hessian_top": {"k": 1.5}}}, "an integer"),
    ({"options": {"hessian_trace": {"every": 3}}}, "a multiple of measure.every = 2"),
    ({"curvature_dtype": "float16"}, "float32, float64"),
    ({"options": {"disagreement": {"probes": 1}}}, "accepted: 0 (exact) or >= 2"),
    ({"options": {"disagreement_alignment": {"k": 8, "max_iter": 4}}}, "max_iter >= k"),
])
def test_bad_measure_settings_are_refused_naming_what_is_accepted(measure_cfg, needle):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(measure={"every": 2, **measure_cfg}))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_every_measure_declares_typed_settings_whose_defaults_pass_their_own_checks():
    import dataclasses

    from flatlab.measures.settings import Settings

    for name in named.available():
        cls = named.get(name).settings
        assert issubclass(cls, Settings) and cls.__dataclass_params__.frozen, name
        fields = dataclasses.fields(cls)
        assert fields[0].name == "every"
        defaults = {f.name: f.default for f in fields}
        assert named.resolve(name) == defaults == dataclasses.asdict(cls())
        assert named.get(name).defaults == {k: v for k, v in defaults.items() if k != "every"}
        for f in fields:  # a limit or choices sit next to the field they constrain
            if "choices" in f.metadata:
                assert f.default in f.metadata["choices"], (name, f.name)


def test_loss_gap_without_a_known_optimum_and_the_listing_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match="loss_gap needs a task with a known optimum"):
        build(load_config(_cfg(measure={"metrics": ["loss_gap"]})))
    env = {"PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-m", "flatlab", "run", str(REPO / "configs" /
                          "ring16.yaml"), "measure.metrics=[loss,hessian_tops]", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "hessian_top_nodes" in bad.stderr and not (tmp_path / "x" / "status.json").exists()
    listing = subprocess.run([sys.executable, "-m", "flatlab", "measures", "--json"],
                             capture_output=True, text=True, env=env, check=True)
    names = [m["name"] for m in json.loads(listing.stdout)]
    assert names == named.available() and "sharpness_worst" in names


def test_tables_survive_resumption(tmp_path):
    cfg = load_config(_cfg(checkpoint_every=2, measure={
        "metrics": ["loss", "spectral_density", "landscape_1d"],
        "options": {"spectral_density": {"lanczos_steps": 8, "num_runs": 2},
                    "landscape_1d": {"points": 3}}}))
    assert run(cfg, tmp_path / "whole", progress=False).status == "done"
    assert run(cfg, tmp_path / "part", progress=False, stop_after=3).status == "running"
    assert run(cfg, tmp_path / "part", progress=False).status == "done"
    for table in ("density", "landscape", "metrics"):
        a, b = (pd.read_parquet(tmp_path / d / f"{table}.parquet") for d in ("whole", "part"))
        pd.testing.assert_frame_equal(a, b)
