"""The study scripts' shared command line and figure files (analysis/common.py)."""

import matplotlib

matplotlib.use("Agg")

import common  # noqa: E402 - analysis/ is on sys.path (tests/analysis/__init__.py)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def test_study_args_defaults_and_one_line_refusals(tmp_path, capsys):
    a = common.study_args([], "doc", ["small", "tiny"], "demo", tmp_path)
    assert a.out == tmp_path / "results" / "demo-small" and a.workers == 2
    assert a.fig == tmp_path / "paper_figs" / "out" / "demo" and a.runs == a.out / "runs"
    tiny = common.study_args(["--scale", "tiny", "--out", str(tmp_path / "o")], "doc",
                            ["small", "tiny"], "demo", tmp_path)
    assert tiny.fig == tmp_path / "o" / "demo"
    assert common.study_args(["--jobs", "0"], "doc", ["small"], "demo", tmp_path) == 2
    assert common.study_args(["--report"], "doc", ["small"], "demo", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --jobs must be >= 1 (got 0)",
                   f"error: no runs under {tmp_path / 'results' / 'demo-small' / 'runs'}; run "
                   "without --report first"]


def test_redraw_prefers_the_full_scale_and_refuses_without_results(tmp_path, capsys):
    def draw(table):
        fig, ax = plt.subplots()
        ax.plot(table["x"], table["y"])
        return fig

    assert common.redraw(tmp_path, "demo", ["t.csv"], draw) == 2
    assert "no demo results" in capsys.readouterr().err
    for scale in ("small", "full"):
        d = tmp_path / "results" / f"demo-{scale}"
        d.mkdir(parents=True)
        pd.DataFrame({"x": [0, 1], "y": [1, 0]}).to_csv(d / "t.csv", index=False)
    assert common.committed_results(tmp_path, "demo", "t.csv").name == "demo-full"
    assert common.redraw(tmp_path, "demo", ["t.csv"], draw) == 0
    out = tmp_path / "paper_figs" / "out"
    assert (out / "demo.pdf").is_file() and (out / "demo.png").stat().st_size > 1000
