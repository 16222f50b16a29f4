"""The claims-inside-the-regime study end to end at its tiny scale.

Checked against independent recomputation: only centralized SGD is tuned and every method of a
batch trains at its choice (the tuning's robust choice), every run's steps are the epoch budget
over the training set at its batch, centralized SGD's disagreement is exactly zero (its nodes
never differ) and the decentralized methods' is positive, and the claims carry the study's
margins, per batch and graph.
"""

import math

import numpy as np
import pandas as pd
import torch

from flatlab.experiment.evidence import VERDICTS, robust_choice
from flatlab.studies import main, run_study
from flatlab.studies import regime as study
from flatlab.studies.estimate import planned_runs
from flatlab.studies.spec import Scale


def test_tiny_scale_shares_centralized_sgds_step_per_batch_and_judges_the_ordering(tmp_path):
    scale = study.SCALES["tiny"]
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert set(tuning["method"]) == {study.REFERENCE}
    setting = scale.options["setting"]
    for regime, g in tuning.groupby("regime"):
        c = robust_choice(g["value"].tolist(), g["holdout_accuracy"].tolist(),
                          g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())
        sel = runs[runs["regime"] == regime]
        assert set(sel["method"]) == set(scale.methods) and (sel["lr"] == c.chosen).all()
        assert len(sel) == len(scale.methods) * len(scale.seeds)
        batch = int(sel["batch"].iloc[0])
        want = math.ceil(setting["epochs"] * setting["train"] / batch)
        assert study.steps_of({"batch": batch}, scale) == want
    assert (runs["status"] == "done").all()
    central = runs[runs["method"] == study.REFERENCE]
    assert (central[["disagreement_curvature", "disagreement_gap"]] == 0).all().all()
    assert (runs.loc[runs["method"] != study.REFERENCE, "consensus_distance"] > 0).all()
    assert runs["hessian_trace"].notna().all() and runs["sharpness"].notna().all()
    # six claims per batch and graph, each with its margin; verdicts one of the four
    assert len(verdicts) == 6 * len(scale.settings) * len(scale.options["topologies"])
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    assert all(c.why for c in study.claims(scale))
    text = (tmp_path / "summary.md").read_text()
    assert "## The premise in these runs" in text and "## The mechanism at the end" in text
    # the escape: every method from large-batch centralized SGD's final x̄, at its step
    esc = pd.read_csv(tmp_path / "escape.csv")
    large = runs[(runs["regime"] == "large-batch") & (runs["method"] == study.REFERENCE)]
    assert set(esc["method"]) == set(scale.methods)
    assert set(esc["lr"]) == set(large["lr"]) and set(esc["seed"]) == set(
        scale.options["escape_seeds"])
    start = esc[(esc["step"] == 0) & (esc["metric"] == "train_loss")]
    # one start for every method, the same x̄ (its copies averaged over 16 nodes: float32
    # rounding of the average, a few ulps)
    eps = float(torch.finfo(torch.float32).eps)
    assert np.ptp(start["value"]) <= 16 * eps * start["value"].abs().max()
    assert "## Escape from centralized SGD's large-batch minimum" in text
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--rejudge"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "verdicts.csv"), verdicts)


def test_the_estimate_plans_every_method_at_the_step_it_shares():
    """Methods the stage does not tune take the reference's step in the plan as in the runs."""
    scale = study.SCALES["small"]
    plan = planned_runs(study.STUDY, scale)
    tune = [r for r in plan if r["phase"] == "tune lr"]
    assert {r["method"] for r in tune} == {study.REFERENCE} and len(tune) == 2 * 3
    finals = [r for r in plan if r["phase"] == "final"]
    assert len(finals) == len(scale.methods) * len(scale.settings)
    for r in finals:
        regime = "small-batch" if "small" in r["setting"] else "large-batch"
        assert r["config"]["optim"]["lr"] == scale.options["lrs"][regime][0]
        assert r["runs"] == len(scale.seeds)


def test_a_method_sharing_an_untrainable_references_step_is_untrainable_not_a_crash(tmp_path):
    """Centralized SGD diverging at every grid value: the methods that take its step get no
    final runs (untrainable at this grid), and the study still writes its tables."""
    scale = study.SCALES["tiny"]
    grid = {"small-batch": (1e6, 3e6), "large-batch": (1e6, 3e6)}  # every run diverges
    at_chance = Scale(settings=scale.settings, methods=scale.methods, seeds=scale.seeds,
                      tune_seeds=scale.tune_seeds, steps=scale.steps, every=scale.every,
                      options={**scale.options, "lrs": grid, "extensions": 0})
    stage = study.STAGES[0]
    assert math.isnan(stage.fixed({"method": "diffusion-ring"}, {study.REFERENCE: math.nan}))
    tables = run_study(study.STUDY, at_chance, tmp_path, None, 1)
    runs = tables["runs"]
    assert runs["untrainable"].all() and (runs["status"] == "untrainable").all()
