"""The implicit-flatness study end to end at its tiny scale, and its committed report.

The tables are checked against independent recomputation: the chosen values are the tuning's
choice, every method trains at sgd's, the final runs use them, both convergence columns are
the evidence functions on each run's curves, the matched-loss λ_max is its interpolation,
verdicts are among :data:`~flatlab.experiment.evidence.VERDICTS` with the specification's
margins; and the committed ``results.md`` is what the committed tables give.
"""

import math
from pathlib import Path

import pandas as pd
import pytest

import flatlab
from flatlab.experiment.evidence import (
    VERDICTS,
    curves_convergence,
    curves_loss_plateau,
    robust_choice,
)
from flatlab.studies import implicit_flatness as study
from flatlab.studies import main
from flatlab.studies.pipeline import results_text

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["nodes", "method", "seed"]


def test_tiny_scale_tunes_lr_then_rho_trains_checks_and_judges(tmp_path):
    scale = study.SCALES["tiny"]
    methods = study.methods(scale)
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    curves = pd.read_csv(tmp_path / "curves.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    # tuning: sgd's learning rate, then ρ of each SAM method; the choice is robust_choice's
    assert set(tuning.loc[tuning["stage"] == "lr", "method"]) == {study.REFERENCE}
    assert set(tuning.loc[tuning["stage"] == "rho", "method"]) == {
        m for m, d in methods.items() if d["sam"]}
    assert (tuning["holdout_seeds"] == len(scale.tune_seeds)).all()
    chosen = {}
    for (stage, m), g in tuning.groupby(["stage", "method"]):
        c = robust_choice(g["value"].tolist(), g["holdout_accuracy"].tolist(),
                          g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())
        assert g["chosen"].sum() == 1 and float(g.loc[g["chosen"], "value"].iloc[0]) == c.chosen
        chosen[stage, m] = c.chosen
    common = chosen["lr", study.REFERENCE]
    # the grid phase: the other methods without SAM on the learning-rate grid, not used
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert set(grid.loc[~grid["tuned"], "method"]) == {
        m for m, d in methods.items() if not d["sam"] and m != study.REFERENCE}
    assert grid["holdout_hessian_top"].notna().all()
    tune_dir = next((tmp_path / "runs" / "tune").iterdir())
    assert flatlab.experiment.load_config(str(tune_dir / "config.yaml")).data.holdout == 0.1
    # final runs: every method at sgd's lr, each SAM method at its ρ, every seed
    done = runs[~runs["untrainable"]]
    assert len(done) == len(methods) * len(scale.seeds), runs[["method", "status"]]
    for r in done.itertuples():
        assert r.lr == common
        assert r.rho == (chosen["rho", r.method] if methods[r.method]["sam"] else 0)
        cfg = flatlab.experiment.load_config(str(
            tmp_path / "runs" / "final" / study.run_name(r._asdict(), r.seed) / "config.yaml"))
        assert cfg.data.holdout == 0.0 and cfg.data.partition == "iid"
        assert cfg.optim.sam_rho == r.rho and cfg.optim.lr == common
        assert cfg.topology.local_steps == methods[r.method]["local_steps"]
        assert cfg.algorithm.name == methods[r.method]["algorithm"]
    # both convergence criteria are the evidence functions on the committed curves
    acc = curves[curves["metric"] == "test_accuracy"].rename(columns={"value": "test_accuracy"})
    conv = curves_convergence(acc, KEYS).set_index(KEYS)
    loss = curves_loss_plateau(curves, KEYS).set_index(KEYS)
    for r in runs.itertuples():
        k = (r.nodes, r.method, r.seed)
        assert r.converged == conv.loc[k, "converged"]
        assert r.loss_converged == loss.loc[k, "loss_converged"]
    assert (runs.loc[runs["algorithm"] == "centralized", "consensus_distance"].abs()
            < 1e-10).all()
    # the matched-loss table: L* is the highest final training loss; η is the schedule's there
    matched = pd.read_csv(tmp_path / "matched.csv")
    assert matched["target"].iloc[0] == pytest.approx(runs["train_loss"].max())
    for r in matched.dropna(subset=["cross_step"]).itertuples():
        assert r.eta_cross == pytest.approx(study.step_at(r.cross_step, r.lr, scale))
        assert r.edge_cross == pytest.approx(r.eta_cross * r.hessian_top_matched / 2)
    # verdicts: the family over three metrics, four words, the specification's margins
    assert set(verdicts["metric"]) == {"hessian_top", "hessian_top_matched", "test_accuracy"}
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    assert (verdicts["adjustment"] == "holm").all()
    ref = done.groupby("method")["hessian_top"].mean()
    for v in verdicts.itertuples():
        if v.metric == "test_accuracy":
            assert v.margin == study.POINT
        elif v.metric == "hessian_top":
            assert v.margin == pytest.approx(study.FLAT * abs(ref[v.b]))
    text = (tmp_path / "summary.md").read_text()
    assert "η·λ_max/2" in text and "crossing step" in text and "Verdicts" in text
    assert (tmp_path / "implicit_flatness.png").stat().st_size > 10_000


def test_matched_loss_interpolates_in_log_loss_at_the_first_crossing():
    scale = study.SCALES["small"]
    runs = pd.DataFrame({"method": ["a", "b", "b"], "seed": [0, 0, 1], "lr": 0.3,
                         "status": ["done"] * 3, "train_loss": [0.1, 0.2, 0.3]})
    rows = []
    for method, seed, losses, tops in (("a", 0, [1.0, 0.5, 0.1], [10.0, 20.0, 30.0]),
                                       ("b", 0, [1.0, 0.2, 0.2], [5.0, 7.0, 9.0]),
                                       ("b", 1, [0.2, 0.3, 0.3], [1.0, 2.0, 3.0])):
        for step, (lo, to) in enumerate(zip(losses, tops, strict=True)):
            rows += [{"step": 200 * step, "metric": "train_loss", "value": lo,
                      "method": method, "seed": seed},
                     {"step": 200 * step, "metric": "hessian_top", "value": to,
                      "method": method, "seed": seed}]
    out = study.matched_loss(runs, pd.DataFrame(rows), scale)
    assert out["target"].iloc[0] == pytest.approx(0.3)
    s = math.log(0.5 / 0.3) / math.log(5)
    assert out["hessian_top_matched"][0] == pytest.approx(20 + 10 * s, rel=1e-12)
    assert out["cross_step"][0] == pytest.approx(200 + 200 * s, rel=1e-12)
    # cosine from 0.3 over 2000 steps, no warm-up
    step = round(200 + 200 * s)
    assert out["eta_cross"][0] == pytest.approx(0.15 * (1 + math.cos(math.pi * step / 2000)))
    assert out["hessian_top_matched"][1] == pytest.approx(
        5 + 2 * math.log(1 / 0.3) / math.log(5), rel=1e-12)
    assert math.isnan(out["hessian_top_matched"][2])  # starts below L*: nothing to interpolate


def test_committed_results_text_is_the_committed_tables():
    folder = ROOT / "results" / "implicit_flatness-small"
    tables = {name: pd.read_csv(folder / f"{name}.csv") for name in ("runs", "verdicts")}
    assert (folder / "results.md").read_text() == results_text(study.STUDY, tables)
    tuning = pd.read_csv(folder / "tuning.csv")
    assert (tuning["holdout_seeds"] == 3).all()  # re-run under the 3-seed rule
    assert "Tuning on one seed" not in (folder / "summary.md").read_text()
    # each committed choice is the robust rule's on the committed tuning table
    for _, g in tuning.groupby(["stage", "method"]):
        c = robust_choice(g["value"].tolist(), g["holdout_accuracy"].tolist(),
                          g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())
        assert float(g.loc[g["chosen"], "value"].iloc[0]) == c.chosen
    runs = pd.read_csv(folder / "runs.csv")
    chosen = tuning[tuning["chosen"]].set_index(["stage", "method"])["value"]
    assert (runs["lr"] == chosen["lr", study.REFERENCE]).all()
    for m in ("sam", "diffusion-sam-ring", "diffusion-sam-exponential"):
        assert (runs.loc[runs["method"] == m, "rho"] == chosen["rho", m]).all()
