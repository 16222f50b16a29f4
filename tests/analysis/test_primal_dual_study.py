"""The primal-dual study end to end at its tiny scale (so the script cannot rot)."""

import pandas as pd

from tests.analysis import load_study


def test_tiny_scale_tunes_trains_times_and_writes_tables_and_figure(tmp_path):
    mod = load_study("primal_dual")
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["method"]) == list(mod.METHODS)
    timing = pd.read_csv(tmp_path / "timing.csv").set_index("method")
    assert timing.loc["dsgd", "vs_dsgd"] == 1.0 and (timing["ms_per_step"] > 0).all()
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (runs["steps_to_low"] == 0).all()  # target 0: reached at the first measurement
    assert runs["steps_to_high"].isna().all()  # target 100%: not reached
    assert {"converged", "change"} <= set(runs.columns) and (runs["seed"].nunique() == 2)
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert set(verdicts["metric"]) == {"test_accuracy", "steps_to_low"}
    assert len(verdicts) == 2 * 2 * 4 and set(verdicts["a"]) == {"ngpd", "ngpd-damping0.01"}
    lr = pd.read_csv(tmp_path / "lr.csv")
    assert lr.groupby("method")["chosen"].sum().eq(1).all() and "interior" in lr
    assert (tmp_path / "primal_dual.png").stat().st_size > 10_000
    assert (tmp_path / "primal_dual_sensitivity.png").stat().st_size > 10_000
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
