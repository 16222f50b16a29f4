"""The heterogeneity study end to end at its tiny scale, its table logic and its figure."""

import math

import pandas as pd
import pytest

import flatlab
from tests.analysis import load_study


def study():
    return load_study("heterogeneity")


def test_tiny_scale_tunes_trains_checks_and_judges(tmp_path, capsys):
    h = study()
    grid = h.SCALES["tiny"]
    assert h.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "2"]) == 0
    lr = pd.read_csv(tmp_path / "lr.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    summary = pd.read_csv(tmp_path / "summary.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    groups = len(grid["methods"]) * len(grid["settings"])
    # tuning: one choice per method and setting, the best held-out accuracy, bracketed: the
    # initial grid is there, anything added is marked, and every chosen value is interior
    # (or its group ran out of extensions)
    assert lr["chosen"].sum() == groups
    for key, g in lr.groupby(["level", "method"]):
        assert bool(g.loc[g["holdout_accuracy"].idxmax(), "chosen"]), key
        first = set(grid["lrs"]["momentum" if key[1] in h.MOMENTUM else "plain"])
        assert set(g.loc[~g["extended"], "lr"]) == first
        assert g["interior"].all() or (g["extensions"] == grid["extensions"]).all()
    tune_cfg = flatlab.experiment.load_config(
        str(next((tmp_path / "runs" / "tune").iterdir()) / "config.yaml"))
    assert tune_cfg.data.holdout == 0.1
    # final: the chosen learning rate, on the full training set, every seed, measured often
    # enough for the convergence check
    chosen = lr[lr["chosen"]].set_index(["level", "method"])["lr"]
    for r in runs.itertuples():
        assert r.lr == chosen[(r.level, r.method)]
    assert len(runs) == groups * len(grid["seeds"])
    final_dir = next((tmp_path / "runs" / "final").iterdir())
    cfg = flatlab.experiment.load_config(str(final_dir / "config.yaml"))
    assert cfg.data.holdout == 0.0 and cfg.measure.every == grid["every"]
    assert set(runs["status"]) == {"done"} and runs["test_accuracy"].between(0, 1).all()
    for r in runs.itertuples():  # the convergence columns are the evidence rule's
        c = flatlab.experiment.evidence.run_convergence(
            tmp_path / "runs" / "final" / h._run_name(r.method, r.nodes, (r.partition, r.level),
                                                      r.lr, r.seed))
        assert (c.converged, c.change) == (r.converged, pytest.approx(r.change))
    assert (summary["seeds"] == len(grid["seeds"])).all()
    # verdicts: MT against DSGDm per setting, and the drop from k=10 to k=4
    assert list(verdicts["claim"]) == ["momentum-tracking beats dsgdm"] * 2 + [
        "momentum-tracking loses less than dsgdm"]
    assert set(verdicts["verdict"]) <= set(flatlab.experiment.evidence.VERDICTS)
    assert (verdicts["pairs"] == 2).all()
    text = (tmp_path / "summary.md").read_text()
    assert "| momentum-tracking |" in text and "Verdicts" in text
    assert (tmp_path / "heterogeneity.png").stat().st_size > 10_000
    assert (tmp_path / "heterogeneity_sensitivity.png").stat().st_size > 10_000
    # --report rebuilds from disk without training
    assert h.main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
    assert pd.read_csv(tmp_path / "runs.csv").equals(runs)
    assert "[1/" not in capsys.readouterr().out.split("final runs")[-1]


def test_report_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert study().main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs under" in err[0]


def test_summary_means_and_standard_errors_leave_out_diverged_runs():
    h = study()
    table = pd.DataFrame({
        "nodes": 8, "partition": "classes", "level": 2, "heterogeneity": "k=2",
        "method": ["dsgd"] * 4, "lr": 0.1, "seed": [0, 1, 2, 3],
        "status": ["done", "done", "done", "diverged"],
        "test_accuracy": [0.5, 0.6, 0.7, math.nan], "test_accuracy_nodes": [0.4, 0.4, 0.7, 0.1],
        "consensus_during": 0.1, "converged": [True, True, False, False],
        "change": [0.0, 0.001, 0.02, math.nan]})
    s = h.summarize(table).iloc[0]
    assert s["seeds"] == 3 and s["diverged"] == 1
    assert s["test_accuracy_mean"] == pytest.approx(0.6)
    assert s["test_accuracy_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert s["test_accuracy_nodes_mean"] == pytest.approx(0.5)
    assert s["converged"] == 2 and s["worst_change"] == pytest.approx(0.02)
    lr = pd.DataFrame({"nodes": 8, "partition": "classes", "level": 2, "method": "dsgd",
                       "lr": [0.03, 0.1, 0.3], "extended": [False, False, True],
                       "status": ["done", "done", "diverged"], "chosen": [False, True, False],
                       "holdout_accuracy": [0.5, 0.6, math.nan], "interior": True})
    text = h.markdown(h.summarize(table), lr, pd.DataFrame(), h.SCALES["tiny"])
    assert "| 60.0 ± 5.8 |" in text and "| 2/4 (not converged) |" in text
    assert "| 0.03, 0.1, 0.3*† | 0.1 | 60.0 | yes |" in text


def test_heterogeneity_figure_on_a_synthetic_table():
    rows = [{"nodes": n, "partition": p, "level": lv, "method": m, "seed": s, "status": "done",
             "test_accuracy": 0.5 + 0.01 * s, "test_accuracy_nodes": 0.4}
            for n in (8, 16) for p, levels in (("dirichlet", (10.0, 0.1)), ("classes", (10, 2)))
            for lv in levels for m in ("dsgd", "momentum-tracking") for s in range(3)]
    fig = flatlab.plots.heterogeneity(pd.DataFrame(rows))
    assert len(fig.axes) == 2 * 4
    assert fig.axes[0].get_xticklabels()[0].get_text() == "alpha=10"  # homogeneous first
    with pytest.raises(ValueError, match="lacks columns"):
        flatlab.plots.heterogeneity(pd.DataFrame({"nodes": [8]}))
