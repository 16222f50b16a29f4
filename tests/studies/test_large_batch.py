"""The large-batch phenomenon search end to end at its tiny scale, and its ``found`` rule.

Checked against independent recomputation: every run's steps are the epochs over the training
set at its total batch, each batch's step size is the tuning's robust choice, the test set
keeps 1000 true labels whatever the label noise, and ``phenomenon.csv`` is the verdicts'
difference and Holm interval per setting, ``found`` only for a separable gap of 2 points.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import flatlab
from flatlab.experiment.evidence import VERDICTS, robust_choice
from flatlab.studies import large_batch as study
from flatlab.studies import main
from flatlab.studies.estimate import estimate, planned_runs
from flatlab.studies.spec import Scale
from tests.studies.committed import assert_rejudges_to


def test_tiny_scale_tunes_each_batch_runs_fixed_epochs_and_writes_the_search(tmp_path):
    scale = study.SCALES["tiny"]
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    ph = pd.read_csv(tmp_path / "phenomenon.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    # each batch tuned on its own, the choice robust_choice's
    keys = ["train", "model", "noise", "epochs", "large"]
    for (*setting, method), g in tuning.groupby([*keys, "method"]):
        c = robust_choice(g["value"].tolist(), g["holdout_accuracy"].tolist(),
                          g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())
        assert float(g.loc[g["chosen"], "value"].iloc[0]) == c.chosen
        sel = runs[(runs[keys] == setting).all(axis=1) & (runs["method"] == method)]
        assert (sel["lr"] == c.chosen).all() and len(sel) == len(scale.seeds)
    # a fixed budget of epochs: the large batch takes batch-ratio times fewer steps
    for r in runs.itertuples():
        batch = scale.options["small"] if r.method == "small" else r.large
        assert r.batch == batch and r.steps == math.ceil(r.epochs * r.train / batch)
        cfg = flatlab.experiment.load_config(
            str(tmp_path / "runs" / "final" / study.run_name(
                {"method": r.method, "train": r.train, "model": r.model, "noise": r.noise,
                 "epochs": r.epochs, "large": r.large, "lr": r.lr}, r.seed) / "config.yaml"))
        assert cfg.data.label_noise == r.noise and cfg.train.steps == r.steps
        assert cfg.algorithm.name == "centralized" and cfg.optim.weight_decay == 0.0
        assert cfg.data.batch_size * cfg.topology.nodes == batch
    built = flatlab.experiment.runner.build(cfg)
    assert built.dataset.num_test == study.TEST and built.dataset.num_train == cfg_train(cfg)
    # the search table: one row per setting, from the verdicts
    assert len(ph) == len(scale.settings) and set(ph["verdict"]) <= set(VERDICTS)
    for r in ph.itertuples():
        v = verdicts[verdicts["claim"] == f"small batch generalizes better ({r.setting})"].iloc[0]
        assert r.difference == pytest.approx(v["difference"]) and r.low == v["low_adj"]
        sel = runs[(runs["setting"] == r.setting) & (runs["status"] == "done")]
        small = sel.loc[sel["method"] == "small", "test_accuracy"].mean()
        assert r.acc_small == pytest.approx(small)
        settled = all(sel.loc[sel["method"] == m, "loss_converged"].all()
                      for m in ("small", "large"))
        gap = r.verdict == "better" and r.difference >= study.MARGIN
        fits = r.train_loss_small <= study.FIT and r.train_loss_large <= study.FIT
        assert r.found == (gap and settled and fits)
        assert r.gap_unsettled == (gap and not settled)
        assert r.gap_underfit == (gap and settled and not fits)
        assert r.cost_s == pytest.approx(runs.loc[runs["setting"] == r.setting, "seconds"].sum())
    assert "## The search (`phenomenon.csv`)" in (tmp_path / "summary.md").read_text()
    # re-judging from the committed tables alone rebuilds the same search table
    before = ph.copy()
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--rejudge"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "phenomenon.csv"), before)


def test_the_estimate_plans_the_runs_the_study_trains_and_prices_each_measured_step(
        tmp_path, capsys, monkeypatch):
    """``--estimate``: the planned runs are the study's own (its initial grids, its final
    configs and lengths), each priced by a step measured here; nothing is trained."""
    scale = study.SCALES["tiny"]
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    plan = planned_runs(study.STUDY, scale)
    tuned = {(r["method"], r["value"]) for r in plan if r["phase"] == "tune lr"}
    first = tuning[~tuning["extended"].astype(bool)]
    assert tuned == set(zip(first["method"], first["value"], strict=True))
    assert all(r["runs"] == len(scale.tune_seeds) for r in plan if r["phase"] == "tune lr")
    for r in (r for r in plan if r["phase"] == "final"):
        assert r["runs"] == len(scale.seeds)
        done = runs[runs["method"] == r["method"]].iloc[0]
        written = yaml.safe_load((tmp_path / "runs" / "final" / study.run_name(
            {**{k: done[k] for k in ("method", "train", "model", "noise", "epochs", "large")},
             "lr": done["lr"]}, int(done["seed"])) / "config.yaml").read_text())
        for key in ("data", "model", "topology", "algorithm", "train"):  # lr and seed aside
            want = {k: v for k, v in r["config"][key].items() if k != "seed"}
            assert {k: written[key][k] for k in want} == want, key
    table, device = estimate(study.STUDY, scale, steps=3, at_least=0.0)
    assert device.startswith("cpu") and (table["s_per_step"] >= 0).all()
    steps = runs.groupby("method")["steps"].first()
    assert (table["steps"] == table["method"].map(steps)).all()
    assert np.allclose(table["hours"], table["s_per_step"] * table["steps"] * table["runs"] / 3600)
    capsys.readouterr()
    out = tmp_path / "estimated"
    assert main(study.STUDY, ["--scale", "tiny", "--out", str(out), "--estimate"]) == 0
    text = capsys.readouterr().out
    assert "Total:" in text and "Not counted: measurements" in text and not out.exists()
    assert text.count("| tune lr |") + text.count("| final |") == len(plan)
    assert main(study.STUDY, ["--scale", "tiny", "--estimate", "--engine", "slurm"]) == 2
    assert "--estimate times steps on this machine" in capsys.readouterr().err
    # the GPU scale's data are not here: one line naming where they are looked for
    monkeypatch.delenv("FLATLAB_DATA", raising=False)
    assert main(study.STUDY, ["--scale", "full", "--estimate"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "FLATLAB_DATA" in err, err


def test_the_full_scale_is_cifar10_resnet20_at_the_papers_batches():
    """``--scale full`` (a GPU's): CIFAR-10 from a folder, ResNet-20 (GroupNorm), 128 against
    4096 for the same 100 epochs; its configs say so (no data are read here)."""
    scale = study.SCALES["full"]
    (s,) = scale.settings
    assert (s["data"], s["model"], s["train"], s["large"]) == ("cifar10", "resnet20", 50000, 4096)
    small = study.config({**s, "method": "small", "lr": 0.1}, scale, 0, 0.0)
    large = study.config({**s, "method": "large", "lr": 1.0}, scale, 0, 0.1)
    assert small["data"]["name"] == "cifar10" and "options" not in small["data"]
    assert small["data"]["batch_size"] * small["topology"]["nodes"] == 128
    assert large["data"]["batch_size"] * large["topology"]["nodes"] == 4096
    assert (small["train"]["steps"], large["train"]["steps"]) == (39063, 1221)
    assert large["data"]["holdout"] == 0.1 and small["model"]["name"] == "resnet20"
    assert study.run_name({**s, "method": "large", "lr": 1.0}, 2).startswith("large4096,cifar10,")


def cfg_train(cfg) -> int:
    return int(cfg.data.options["num_samples"] * cfg.data.options["train_split"])


def test_found_needs_a_separable_gap_of_two_points_with_both_batches_fitting():
    s1, s2, s3, s4, s5 = ({"train": 100, "model": "m", "noise": 0.0, "epochs": e, "large": 64}
                          for e in (1, 2, 3, 4, 5))
    scale = Scale(settings=(s1, s2, s3, s4, s5), methods=("small", "large"), seeds=(0, 1),
                  steps=1, every=1, options={"small": 32})
    runs = pd.DataFrame([{**s, "setting": study.label(s), "method": m, "seed": 0, "lr": 0.1,
                          "status": "done", "test_accuracy": 0.9,
                          "train_loss": 1.0 if (s["epochs"] == 5 and m == "large") else 0.01,
                          "loss_converged": s["epochs"] != 4 or m == "small", "seconds": 1.0}
                         for s in (s1, s2, s3, s4, s5) for m in ("small", "large")])
    verdicts = pd.DataFrame([
        {"claim": f"small batch generalizes better ({study.label(s)})", "difference": d,
         "low_adj": lo, "high_adj": hi, "pairs": 5, "verdict": v}
        for s, d, lo, hi, v in ((s1, 0.05, 0.01, 0.09, "better"),     # separable, 5 points
                                (s2, 0.015, 0.005, 0.025, "better"),  # separable, 1.5 points
                                (s3, 0.05, -0.01, 0.11, "inconclusive"),
                                (s4, 0.05, 0.01, 0.09, "better"),     # large batch unsettled
                                (s5, 0.05, 0.01, 0.09, "better"))])   # settled, underfit
    ph = study.phenomenon({"runs": runs, "verdicts": verdicts}, scale)
    assert ph["found"].tolist() == [True, False, False, False, False]
    assert ph["gap_unsettled"].tolist() == [False, False, False, True, False]
    assert ph["gap_underfit"].tolist() == [False, False, False, False, True]
    assert ph["fits_large"].tolist() == [True, True, True, True, False]
    assert ph["settled_large"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert ph["cost_s"].tolist() == [2.0] * 5
    text = study.appendix({"runs": runs, "verdicts": verdicts}, scale)
    assert "appears in 1 of 5 settings" in text and "gap, loss unsettled" in text
    assert "still moving" in text and "gap, underfit" in text and "underfit: optimization" in text


def test_a_large_batch_the_nodes_cannot_fill_is_refused_before_any_run():
    """2048 of 1000 samples: each of 16 nodes holds 56 while tuning, not 128."""
    bad = Scale(settings=({"train": 1000, "model": "cnn1d", "noise": 0.0, "epochs": 1,
                           "large": 2048},), methods=("small", "large"), seeds=(0,), steps=1,
                every=1, options={"small": 32})
    with pytest.raises(flatlab.errors.FlatlabError, match="needs 128 samples per node.*at most 56"):
        study.check_scale(bad)
    for scale in study.SCALES.values():
        study.check_scale(scale)


def test_the_committed_first_round_rejudges_to_its_tables_and_finds_no_regime(tmp_path):
    """results/large_batch-round1 (50 final runs, 5 settings): re-judging a copy of its tables
    reproduces every committed report and table, and no setting shows the regime (the two
    separable gaps are one of a large batch still optimizing and one settled underfit)."""
    committed = Path(__file__).resolve().parents[2] / "results" / "large_batch-round1"
    assert_rejudges_to(study.STUDY, study.SCALES["round1"], tmp_path, committed,
                       tables=("verdicts", "phenomenon"))
    ph = pd.read_csv(committed / "phenomenon.csv")
    assert len(ph) == 5 and not ph["found"].any() and (ph["seeds"] == 5).all()
    assert ph["gap_unsettled"].sum() == 1 and ph["gap_underfit"].sum() == 1


def test_rounds_joined_rejudge_as_one_scale_of_all_their_settings(tmp_path):
    """Round 1's tables split by setting into two "rounds" and joined again (join_rounds)
    re-judge to the committed round: joining changes nothing a scale of all the settings sees;
    a setting in two rounds, or a round without its tables, is refused in one line."""
    from flatlab.studies import pipeline

    committed = Path(__file__).resolve().parents[2] / "results" / "large_batch-round1"
    tables = {n: pd.read_csv(committed / f"{n}.csv") for n in study.ROUND_TABLES}
    settings = list(tables["runs"]["setting"].unique())
    keys = study.STUDY.setting_keys(study.SCALES["round1"])
    label = {tuple(r[k] for k in keys): r["setting"] for _, r in tables["runs"].iterrows()}
    for i, part in enumerate((settings[:2], settings[2:])):
        (tmp_path / f"r{i}").mkdir()
        for name, t in tables.items():
            of = t.apply(lambda r: label[tuple(r[k] for k in keys)], axis=1)
            t[of.isin(part)].to_csv(tmp_path / f"r{i}" / f"{name}.csv", index=False)
    study.join_rounds([tmp_path / "r0", tmp_path / "r1"], tmp_path / "all")
    pipeline.rejudge(study.STUDY, study.SCALES["round1"], tmp_path / "all", None)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "all" / "verdicts.csv"),
                                  pd.read_csv(committed / "verdicts.csv"))
    assert (tmp_path / "all" / "results.md").read_text() == (committed / "results.md").read_text()
    with pytest.raises(flatlab.errors.FlatlabError, match="is in both"):
        study.join_rounds([tmp_path / "r0", tmp_path / "r0"], tmp_path / "twice")
    with pytest.raises(flatlab.errors.FlatlabError, match="holds no runs.csv"):
        study.join_rounds([tmp_path / "nothing"], tmp_path / "none")
    # round 2 is the rest of the small scale, setting for setting
    small, r1, r2 = (study.SCALES[k].settings for k in ("small", "round1", "round2"))
    assert list(small) == list(r1) + list(r2)


def test_the_committed_search_joins_its_rounds_finds_two_settings_and_feeds_the_regime(tmp_path):
    """results/large_batch-small is round 1 and round 2 joined and re-judged together (Holm
    over all 7 settings): re-judging a join of the committed rounds reproduces it; the regime
    is found in the two 1000-sample CNN settings trained long enough for the large batch to
    fit, and those are the regime study's settings, its step grids centred on the search's
    choices."""
    from flatlab.studies import regime

    results = Path(__file__).resolve().parents[2] / "results"
    study.join_rounds([results / "large_batch-round1", results / "large_batch-round2"],
                      tmp_path)
    committed = results / "large_batch-small"
    assert_rejudges_to(study.STUDY, study.SCALES["small"], tmp_path, committed,
                       copy=False, tables=("verdicts", "phenomenon", "runs"))
    ph = pd.read_csv(committed / "phenomenon.csv")
    assert len(ph) == 7 and (ph["seeds"] == 5).all()
    found = ph[ph["found"]]
    assert set(found["epochs"]) == {400, 800}
    # found: separable after Holm, at least 2 points on average, every run settled, both fit
    assert (found["low"] > 0).all() and (found["difference"] >= study.MARGIN).all()
    assert (found[["settled_small", "settled_large"]] == 1.0).all().all()
    assert (found[["train_loss_small", "train_loss_large"]] <= study.FIT).all().all()
    keys = ("train", "model", "noise", "epochs", "large")
    for name, setting in (("small", regime.SETTING), ("second", regime.SECOND)):
        row = found[found["epochs"] == setting["epochs"]].iloc[0]
        assert {k: row[k] for k in keys} == setting
        assert regime.SCALES[name].options["setting"] == setting
        lrs = regime.SCALES[name].options["lrs"]
        assert lrs["small-batch"][1] == row["lr_small"]  # the search's choice, mid-grid
        assert lrs["large-batch"][1] == row["lr_large"]
