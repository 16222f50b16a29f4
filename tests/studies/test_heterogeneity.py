"""The heterogeneity study end to end at its tiny scale, its claims, and its committed report."""

import math
from pathlib import Path

import pandas as pd
import pytest

import flatlab
from flatlab.experiment.evidence import VERDICTS, curves_convergence, curves_loss_plateau
from flatlab.studies import heterogeneity as h
from flatlab.studies import main
from flatlab.studies.pipeline import results_text

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_scale_tunes_on_seeds_trains_checks_and_judges(tmp_path, capsys):
    scale = h.SCALES["tiny"]
    assert main(h.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    curves = pd.read_csv(tmp_path / "curves.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    groups = len(scale.methods) * len(scale.settings)
    # tuning: every value on every tuning seed, the mean decides, one choice per group
    assert (tuning["holdout_seeds"] + tuning["diverged_seeds"] == len(scale.tune_seeds)).all()
    assert tuning["chosen"].sum() == groups and set(tuning["stage"]) == {"lr"}
    for key, g in tuning.groupby(["level", "method"]):
        first = set(scale.options["lrs"]["momentum" if key[1] in h.MOMENTUM else "plain"])
        assert set(g.loc[~g["extended"], "value"]) == first
        best = g["holdout_accuracy"].max()
        pick = g[g["chosen"]].iloc[0]
        # the choice ties with the best mean within one standard error
        se = g.loc[g["holdout_accuracy"].idxmax(), "holdout_se"]
        assert pick["holdout_accuracy"] >= best - (0 if math.isnan(se) else se) - 1e-12
    per_seed = tmp_path / "runs" / "tune"
    assert len(list(per_seed.iterdir())) == len(tuning) * len(scale.tune_seeds)
    cfg = flatlab.experiment.load_config(str(next(per_seed.iterdir()) / "config.yaml"))
    assert cfg.data.holdout == 0.1
    # final: the chosen rate on every seed, or no runs for a group untrainable at its grid
    chosen = tuning[tuning["chosen"]].set_index(["level", "method"])
    for r in runs.itertuples():
        assert r.lr == chosen.loc[(r.level, r.method), "value"]
        assert (r.status == "untrainable") == bool(chosen.loc[(r.level, r.method),
                                                                 "untrainable"])
    assert len(runs) == groups * len(scale.seeds)
    # both convergence criteria are the evidence rules on the kept curves
    keys = ["nodes", "partition", "level", "method", "seed"]
    acc = curves[curves.metric == "test_accuracy"].rename(columns={"value": "test_accuracy"})
    want = curves_convergence(acc, keys, threshold=0.01).set_index(keys)
    loss = curves_loss_plateau(curves, keys, threshold=0.1).set_index(keys)
    for r in runs[runs.status == "done"].itertuples():
        k = (r.nodes, r.partition, r.level, r.method, r.seed)
        assert r.converged == want.loc[k, "converged"]
        assert r.loss_converged == loss.loc[k, "loss_converged"]
        assert r.at_chance == (r.test_accuracy <= 0.2)
    # verdicts: four words (or none), every claim with its margin, adjusted over the family
    assert set(verdicts["verdict"]) <= set(VERDICTS)
    assert (verdicts["margin"] == h.POINT).all() and (verdicts["adjustment"] == "holm").all()
    assert list(verdicts["claim"][:2]) == ["momentum-tracking beats dsgdm"] * 2
    assert verdicts["claim"].iloc[2].startswith("momentum-tracking loses less than dsgdm")
    text = (tmp_path / "summary.md").read_text()
    assert "Tuning (2 seed(s)" in text and "| momentum-tracking |" in text
    assert (tmp_path / "results.md").read_text() == results_text(
        h.STUDY, {"runs": runs, "verdicts": verdicts})
    assert (tmp_path / "heterogeneity.png").stat().st_size > 10_000
    assert (tmp_path / "heterogeneity_sensitivity.png").stat().st_size > 10_000
    # --report rebuilds from disk without training; --rejudge from the tables alone
    capsys.readouterr()
    assert main(h.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
    assert "[1/" not in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "runs.csv"), runs)
    assert main(h.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--rejudge"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "verdicts.csv"), verdicts)


def test_bad_command_lines_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(h.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 2
    assert main(h.STUDY, ["--scale", "tiny", "--out", str(tmp_path), "--rejudge"]) == 2
    assert main(h.STUDY, ["--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no runs under" in err[0] and "no runs.csv" in err[1]
    assert err[2] == "error: --jobs must be >= 1 (got 0)"
    assert main(h.STUDY, ["--scale", "huge"]) == 2


def test_committed_results_prose_is_generated_from_the_committed_tables():
    out = ROOT / "results" / "heterogeneity-small"
    runs = pd.read_csv(out / "runs.csv")
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert (out / "results.md").read_text() == results_text(
        h.STUDY, {"runs": runs, "verdicts": verdicts})


def test_claims_state_their_margins_and_the_change_table_pairs_seeds():
    scale = h.SCALES["small"]
    claims = h.claims(scale)
    plain = [c for c in claims if not isinstance(c, tuple)]
    change = [c for c in claims if isinstance(c, tuple)]
    assert len(plain) == 2 * 6 and len(change) == 3
    assert all(c.margin == 0.01 and c.why for c in plain)
    rows = [{"nodes": 8, "partition": "classes", "level": lv, "method": m, "seed": s,
             "status": "done", "test_accuracy": 0.9 - (0.1 if lv == 2 else 0) * (m == "a"),
             "converged": True} for lv in (10, 2) for m in ("a", "b") for s in range(3)]
    got = h.derived(pd.DataFrame(rows), scale)["change"]
    a = got[got.method == "a"].test_accuracy.to_numpy()
    assert a == pytest.approx([-0.1] * 3) and (got[got.method == "b"].test_accuracy == 0).all()
