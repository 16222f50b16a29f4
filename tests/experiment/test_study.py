"""The study helpers shared by analysis/ and paper_figs/ (flatlab.experiment.study)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flatlab.experiment import study  # noqa: E402


def test_choose_best_takes_the_highest_score_ties_to_the_smaller_value_and_skips_nan_groups():
    t = pd.DataFrame({"method": ["a", "a", "a", "b", "b", "c"],
                      "lr": [0.3, 0.1, 0.03, 0.1, 0.3, 0.1],
                      "acc": [0.8, 0.8, 0.5, 0.2, math.nan, math.nan]})
    chosen = study.choose_best(t, ["method"], "acc", "lr")
    assert t[chosen][["method", "lr"]].values.tolist() == [["a", 0.1], ["b", 0.1]]


def test_mean_and_se_counts_done_runs_only():
    t = pd.DataFrame({"m": ["a"] * 4 + ["b"], "status": ["done", "done", "done", "diverged",
                                                         "done"],
                      "acc": [0.1, 0.2, 0.6, math.nan, 0.5]})
    s = study.mean_and_se(t, ["m"], ["acc"]).set_index("m")
    assert s.loc["a", "seeds"] == 3 and s.loc["a", "diverged"] == 1
    assert s.loc["a", "acc_mean"] == pytest.approx(0.3)
    assert s.loc["a", "acc_se"] == pytest.approx(pd.Series([0.1, 0.2, 0.6]).std() / math.sqrt(3))
    assert s.loc["b", "acc_mean"] == 0.5 and math.isnan(s.loc["b", "acc_se"])


def test_study_args_defaults_and_one_line_refusals(tmp_path, capsys):
    a = study.study_args([], "doc", ["small", "tiny"], "demo", tmp_path)
    assert a.out == tmp_path / "results" / "demo-small" and a.workers == 2
    assert a.fig == tmp_path / "paper_figs" / "out" / "demo" and a.runs == a.out / "runs"
    tiny = study.study_args(["--scale", "tiny", "--out", str(tmp_path / "o")], "doc",
                            ["small", "tiny"], "demo", tmp_path)
    assert tiny.fig == tmp_path / "o" / "demo"
    assert study.study_args(["--jobs", "0"], "doc", ["small"], "demo", tmp_path) == 2
    assert study.study_args(["--report"], "doc", ["small"], "demo", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --jobs must be >= 1 (got 0)",
                   f"error: no runs under {tmp_path / 'results' / 'demo-small' / 'runs'}; run "
                   "without --report first"]


def test_redraw_prefers_the_full_scale_and_refuses_without_results(tmp_path, capsys):
    def draw(table):
        fig, ax = plt.subplots()
        ax.plot(table["x"], table["y"])
        return fig

    assert study.redraw(tmp_path, "demo", ["t.csv"], draw) == 2
    assert "no demo results" in capsys.readouterr().err
    for scale in ("small", "full"):
        d = tmp_path / "results" / f"demo-{scale}"
        d.mkdir(parents=True)
        pd.DataFrame({"x": [0, 1], "y": [1, 0]}).to_csv(d / "t.csv", index=False)
    assert study.committed_results(tmp_path, "demo", "t.csv").name == "demo-full"
    assert study.redraw(tmp_path, "demo", ["t.csv"], draw) == 0
    out = tmp_path / "paper_figs" / "out"
    assert (out / "demo.pdf").is_file() and (out / "demo.png").stat().st_size > 1000
