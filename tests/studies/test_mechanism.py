"""The mechanism study end to end at its tiny scale, its tables recomputed independently.

The late means and the accumulated tr(HΣ) are recomputed from ``curves.csv``; centralized SGD
has no disagreement and a zero prediction; Local SGD measured right after an averaging reads
zero and is predicted zero (the theory's phase); every claim gets one of the verdicts.
"""

import math

import numpy as np
import pandas as pd

from flatlab.experiment.evidence import VERDICTS
from flatlab.studies import main
from flatlab.studies import mechanism as study


def test_tiny_scale_measures_predicts_and_judges_the_mechanism(tmp_path):
    scale = study.SCALES["tiny"]
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    curves = pd.read_csv(tmp_path / "curves.csv")
    pred = pd.read_csv(tmp_path / "prediction.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert len(runs) == len(scale.methods) * len(scale.seeds) * len(scale.settings)
    assert (runs["status"] == "done").all()
    for r in runs.itertuples():  # the late means and the integral, from the curves
        c = curves[(curves["method"] == r.method) & (curves["seed"] == r.seed)]
        t = c[c["metric"] == "disagreement_curvature"].sort_values("step")
        late = t[t["step"] >= (1 - study.LATE) * scale.steps]["value"]
        assert r.trhs_late == (late.mean() if len(late) else math.nan) or (
            math.isnan(r.trhs_late) and late.empty)
        steps, v = t["step"].to_numpy(float), t["value"].to_numpy(float)
        assert r.trhs_integral == np.sum((v[1:] + v[:-1]) * np.diff(steps)) / 2
    sgd = runs[runs["method"] == "sgd"]
    assert (sgd["trhs_late"] == 0).all() and (sgd["trhs_integral"] == 0).all()
    assert (pred.loc[pred["method"] == "sgd", "trhs_predicted"] == 0).all()
    # Local SGD (H = 3) measured at step 30, right after an averaging: zero, predicted zero
    local = pred[pred["method"] == "local-sgd-H3"]
    assert (local["trhs_late"] == 0).all() and (local["trhs_predicted"] == 0).all()
    ring = pred[pred["method"] == "diffusion-ring"]
    assert (ring["trhs_predicted"] > 0).all() and (ring["trhs_late"] > 0).all()
    # 4 decentralized methods x 3 claims, and the consensus-vs-diffusion pair on the ring x 2
    assert len(verdicts) == 4 * 3 + 2
    assert set(verdicts["verdict"].str.split(" (", regex=False).str[0]) <= set(VERDICTS)
    assert set(verdicts.loc[verdicts["claim"].str.contains("linear theory"), "table"]) == {
        "prediction"}
    phases = pd.read_csv(tmp_path / "phases.csv")
    assert set(phases["phase"]) == {"early", "middle", "late"}
    assert "sgd" not in set(phases["method"])
    assert "By phase of training" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "mechanism.png").is_file() and (tmp_path / "mechanism.pdf").is_file()


def test_committed_results_prose_is_the_tables():
    from pathlib import Path

    from flatlab.studies.pipeline import results_text

    committed = Path(__file__).resolve().parents[2] / "results" / "mechanism-small"
    t = {name: pd.read_csv(committed / f"{name}.csv") for name in ("runs", "verdicts")}
    assert (committed / "results.md").read_text() == results_text(study.STUDY, t)
    v = t["verdicts"]
    assert len(v) == 52 and set(v["verdict"].str.split(" (", regex=False).str[0]) <= set(
        VERDICTS)
    pred = pd.read_csv(committed / "prediction.csv")
    assert (pred.loc[pred["method"] == "sgd", "trhs_predicted"] == 0).all()
    assert (pred.loc[pred["method"] != "sgd", "trhs_predicted"] > 0).all()
