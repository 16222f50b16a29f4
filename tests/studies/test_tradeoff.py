"""The flatness-versus-optimization study through the pipeline at its tiny scale (it cannot rot).

Every table is checked against an independent recomputation: the fixed step of each run, both
convergence criteria from the run's curves, the claims' margins, η·λ_max/2, the theory overlay;
and the committed ``results.md`` against :func:`flatlab.studies.pipeline.results_text` on the
committed tables, so that the prose cannot drift from them.
"""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

import flatlab.studies
from flatlab.experiment import evidence
from flatlab.studies.pipeline import results_text
from flatlab.studies.tradeoff import CENTRALIZED, SCALES, STUDY
from flatlab.theory import predicted_consensus_distance

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["regime", "batch", "topology", "lr", "method", "seed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tradeoff")
    assert flatlab.studies.main(STUDY, ["--scale", "tiny", "--out", str(out), "--jobs", "1"]) == 0
    return out, {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}


def test_runs_are_the_old_scripts_with_their_fixed_step(tiny):
    out, t = tiny
    scale = SCALES["tiny"]
    runs = t["runs"]
    assert (runs["status"] == "done").all()
    pairs = [(s, m) for s in scale.settings for m in scale.methods if STUDY.runs(s, m, scale)]
    assert len(runs) == len(pairs) * len(scale.seeds)
    # per regime: centralized on all-reduce, consensus and diffusion on 2 graphs, and both
    # at the extra step on the ring (small batch)
    assert len(pairs) == (1 + 2 * 2 + 2) + (1 + 2 * 2)
    # centralized once per regime and step, on all-reduce; the others per topology
    assert set(runs.loc[runs["method"] == CENTRALIZED, "topology"]) == {"all-reduce"}
    assert len(t["tuning"]) == 0  # nothing tuned: the step is fixed
    for r in runs.itertuples():
        cfg = yaml.safe_load((out / "runs" / "final" / STUDY.folder(r._asdict(), r.seed)
                              / "config.yaml").read_text())
        assert (cfg["optim"]["lr"], cfg["optim"]["schedule"]) == (r.lr, "constant")
        assert cfg["algorithm"]["name"] == r.method and cfg["data"]["batch_size"] == r.batch
    for col in ("hessian_top", "hessian_trace", "sharpness", "hessian_top_start"):
        assert runs[col].notna().all(), col
    assert runs[runs["method"] != CENTRALIZED][["sigma2", "zeta2", "rho"]].notna().all().all()
    assert runs["hessian_top_start"].nunique() == 1  # one initialization per seed


def test_convergence_columns_are_the_evidence_functions_on_each_curve(tiny):
    _, t = tiny
    curves = t["curves"]
    for r in t["runs"].itertuples():
        c = curves
        for k in KEYS:
            c = c[c[k] == getattr(r, k)]
        acc = c[c["metric"] == "test_accuracy"].sort_values("step")
        loss = c[c["metric"] == "train_loss"].sort_values("step")
        a = evidence.convergence(acc["step"], acc["value"], threshold=0.01)
        b = evidence.loss_plateau(loss["step"], loss["value"], threshold=0.1)
        assert (r.converged, r.loss_converged) == (a.converged, b.converged)
        assert r.change == pytest.approx(a.change, nan_ok=True)
        assert r.loss_change == pytest.approx(b.change, nan_ok=True)
        assert r.at_chance == evidence.at_chance(r.test_accuracy)


def test_verdicts_carry_their_margins_and_lambda_its_step(tiny):
    _, t = tiny
    runs, verdicts, summary = t["runs"], t["verdicts"], t["summary"]
    assert set(verdicts["verdict"]) <= set(evidence.VERDICTS)
    assert len(verdicts) == len(STUDY.claims(SCALES["tiny"]))
    assert all(c.why for _, c in STUDY.claims(SCALES["tiny"]))
    main = runs[runs["lr"] == SCALES["tiny"].options["lr"]]
    for v in verdicts.itertuples():
        regime, top = v.setting.split(", ")
        b = main[(main["regime"] == regime) & (main["method"] == v.b)
                 & (main["topology"] == ("all-reduce" if v.b == CENTRALIZED else top))]
        if v.metric == "test_accuracy":
            assert v.margin == pytest.approx(0.01)
        elif v.metric == "hessian_top":
            assert v.margin == pytest.approx(0.1 * abs(b["hessian_top"].mean()))
        else:
            assert v.margin == pytest.approx(0.1 * abs(1000 * b["train_loss"].mean()))
    for r in summary.itertuples():
        assert r.edge == pytest.approx(r.lr * r.hessian_top_mean / 2)


def test_phases_overlay_escape_and_draw(tiny):
    out, t = tiny
    steady = t["steady"]
    r = steady.iloc[0]
    p = predicted_consensus_distance(r["lr"], rho=r["rho"], sigma2=r["sigma2"],
                                     zeta2=r["zeta2"], form=r["method"])
    assert r["predicted"] == pytest.approx(p.total, rel=1e-12)
    assert (t["bound"]["bound_total"] > 0).all() and set(t["bound"]["T"]) == {2, 4, 6}
    esc, runs = t["escape"], t["runs"]
    start = esc[(esc["step"] == 0) & (esc["metric"] == "train_loss")]["value"]
    lb = runs[(runs["regime"] == "large-batch") & (runs["method"] == CENTRALIZED)]
    assert start.nunique() == 1
    assert math.isclose(start.iloc[0], lb["train_loss"].iloc[0], rel_tol=1e-5)
    for name in ("scatter", "accuracy", "consensus", "escape", "bound"):
        assert (out / f"tradeoff_{name}.png").stat().st_size > 10_000
    # --rejudge from the tables alone gives the same verdicts
    before = (out / "verdicts.csv").read_text()
    assert flatlab.studies.main(STUDY, ["--scale", "tiny", "--out", str(out), "--rejudge"]) == 0
    assert (out / "verdicts.csv").read_text() == before


def test_committed_results_prose_is_the_committed_tables():
    src = ROOT / "results" / "tradeoff-small"
    tables = {t: pd.read_csv(src / f"{t}.csv") for t in ("runs", "verdicts")}
    assert (src / "results.md").read_text() == results_text(STUDY, tables)
