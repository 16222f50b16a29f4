"""The heterogeneity study end to end at its tiny scale, its table logic and its figure."""

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

import flatlab

ROOT = Path(__file__).resolve().parents[2]


def study():
    spec = importlib.util.spec_from_file_location("heterogeneity",
                                                  ROOT / "analysis" / "heterogeneity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_scale_tunes_trains_and_writes_tables_and_figure(tmp_path, capsys):
    h = study()
    assert h.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    lr = pd.read_csv(tmp_path / "lr.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    summary = pd.read_csv(tmp_path / "summary.csv")
    # tuning: every method x learning rate on a held-out split, one chosen per method
    assert len(lr) == 2 * len(h.METHODS) and lr["chosen"].sum() == len(h.METHODS)
    for m, g in lr.groupby("method"):
        best = g.loc[g["holdout_accuracy"].idxmax()]
        assert bool(best["chosen"]), m
        assert set(g["lr"]) == set(h.SCALES["tiny"]["lrs"]["momentum" if m in h.MOMENTUM
                                                          else "plain"])
    tune_cfg = flatlab.experiment.load_config(
        str(next((tmp_path / "runs" / "tune").iterdir()) / "config.yaml"))
    assert tune_cfg.data.holdout == 0.1
    # final: the chosen learning rate, on the full training set, the real test set
    chosen = lr[lr["chosen"]].set_index("method")["lr"]
    assert dict(zip(runs["method"], runs["lr"], strict=True)) == chosen.to_dict()
    final_dir = next((tmp_path / "runs" / "final").iterdir())
    assert flatlab.experiment.load_config(str(final_dir / "config.yaml")).data.holdout == 0.0
    assert set(runs["status"]) == {"done"} and runs["test_accuracy"].between(0, 1).all()
    assert list(summary["method"]) == list(h.METHODS) and (summary["seeds"] == 1).all()
    assert (tmp_path / "heterogeneity.png").stat().st_size > 10_000
    assert "| momentum-tracking |" in (tmp_path / "summary.md").read_text()
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
        "test_accuracy": [0.5, 0.6, 0.7, math.nan], "test_accuracy_nodes": [0.4, 0.4, 0.7, 0.1]})
    s = h.summarize(table).iloc[0]
    assert s["seeds"] == 3 and s["diverged"] == 1
    assert s["test_accuracy_mean"] == pytest.approx(0.6)
    assert s["test_accuracy_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert s["test_accuracy_nodes_mean"] == pytest.approx(0.5)
    assert "60.0 ± 5.8" in h.markdown(h.summarize(table))


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
