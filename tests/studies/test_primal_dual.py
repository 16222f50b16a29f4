"""The primal-dual study at its tiny scale, checked against independent recomputation."""

import math
from pathlib import Path

import pandas as pd
import pytest

from flatlab.experiment.evidence import VERDICTS, curves_convergence, curves_loss_plateau
from flatlab.studies import main
from flatlab.studies.pipeline import results_text
from flatlab.studies.primal_dual import SCALES, STUDY, claims

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "primal_dual-small"
KEYS = ["variant", "nodes", "alpha", "method", "seed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("primal_dual")
    assert main(STUDY, ["--scale", "tiny", "--out", str(out), "--jobs", "1"]) == 0
    return out, {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}


def test_final_runs_use_the_tuned_lr_and_damping(tiny):
    out, t = tiny
    tuning, runs = t["tuning"], t["runs"]
    chosen = tuning[tuning["chosen"]]
    assert (chosen.groupby(["stage", "method"]).size() == 1).all()
    assert set(tuning.loc[tuning["stage"] == "damping", "method"]) == {"ngpd"}
    for r in runs.itertuples():
        pick = chosen[chosen["method"] == r.method].set_index("stage")["value"]
        assert r.lr == pick["lr"]
        if r.method == "ngpd":
            assert r.damping == pick["damping"]
        else:
            assert math.isnan(r.damping)
    # NGPD's learning rate is tuned at damping 1; its names and configs carry the damping
    names = {p.name for p in (out / "runs" / "tune").glob("*,ngpd,*")}
    stage = tuning[tuning["method"] == "ngpd"]
    assert all(f"cnn,n=4,alpha=1,ngpd,lr={lr:g},damping=1,seed=0" in names
               for lr in stage.loc[stage["stage"] == "lr", "value"])
    lr = chosen.set_index(["stage", "method"]).loc[("lr", "ngpd"), "value"]
    assert all(f"cnn,n=4,alpha=1,ngpd,lr={lr:g},damping={d:g},seed=1" in names
               for d in stage.loc[stage["stage"] == "damping", "value"])
    assert not any("damping" in p.name for p in (out / "runs" / "tune").glob("*,dsgd,*"))


def test_convergence_targets_timing_and_verdicts_recomputed(tiny):
    out, t = tiny
    runs, curves = t["runs"], t["curves"]
    acc = curves[curves["metric"] == "test_accuracy"].rename(columns={"value": "test_accuracy"})
    conv = curves_convergence(acc, KEYS, threshold=0.01)[[*KEYS, "converged"]]
    loss = curves_loss_plateau(curves, KEYS, threshold=0.1)[[*KEYS, "loss_converged"]]
    both = runs.merge(conv, on=KEYS, suffixes=("", "_re")).merge(loss, on=KEYS,
                                                                 suffixes=("", "_re"))
    assert len(both) == len(runs) == 4
    assert (both["converged"] == both["converged_re"]).all()
    assert (both["loss_converged"] == both["loss_converged_re"]).all()
    assert (runs["steps_to_low"] == 0).all()  # target 0: reached at the first measurement
    assert runs["steps_to_high"].isna().all()  # target 100%: never
    timing = t["timing"].set_index("method")
    assert timing.loc["dsgd", "vs_dsgd"] == 1.0 and (timing["ms_per_step"] > 0).all()
    v = t["verdicts"]
    assert set(v["verdict"]) <= set(VERDICTS) and len(v) == 2
    margins = v.set_index("metric")["margin"]
    assert margins["test_accuracy"] == 0.01
    assert margins["steps_to_low"] == SCALES["tiny"].every  # one measurement interval
    assert all(c.why for c in claims(SCALES["tiny"]))
    summary = (out / "summary.md").read_text()
    assert "≤ 10" in summary and "| damping |" in summary
    assert (out / "results.md").read_text() == results_text(STUDY, t)
    for suffix in ("", "_sensitivity", "_damping"):
        assert (out / f"primal_dual{suffix}.png").stat().st_size > 10_000


def test_committed_results_prose_is_the_tables():
    t = {name: pd.read_csv(COMMITTED / f"{name}.csv") for name in ("runs", "verdicts")}
    assert (COMMITTED / "results.md").read_text() == results_text(STUDY, t)
    v = t["verdicts"]
    assert set(v["verdict"]) <= set(VERDICTS)
    # NGPD diverged on a final seed of the deep MLP at alpha = 1: untrainable there, no verdict
    mlp1 = v["setting"] == "deep-mlp, n=8, alpha=1"
    assert mlp1.sum() == 8 and (v.loc[mlp1, "verdict"] == "no verdict").all()
    summary = (COMMITTED / "summary.md").read_text()
    assert "Tuning (3 seed(s)" in summary
    tuning = pd.read_csv(COMMITTED / "tuning.csv")
    damping = tuning[tuning["stage"] == "damping"]
    # the damping is a bracketed stage: one interior choice per setting, on 3 seeds
    assert set(damping["method"]) == {"ngpd"} and damping["interior"].all()
    chosen = damping[damping["chosen"]]
    assert len(chosen) == 4 and (chosen["holdout_seeds"] == 3).all()
