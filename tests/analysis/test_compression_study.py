"""The compression study end to end at its tiny scale (so the script cannot rot)."""

import pandas as pd

from tests.analysis import load_study


def test_tiny_scale_tunes_trains_pairs_and_writes_tables_and_figure(tmp_path):
    mod = load_study("compression")
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]) == 0
    gammas = pd.read_csv(tmp_path / "gamma.csv")
    assert gammas.groupby("method")["chosen"].sum().to_dict() == {"adagossip": 1, "choco": 1}
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs["method"]) == {"dsgdm", "choco", "adagossip"}
    assert (runs["status"] == "done").all()
    # compressed traffic is counted at its encoded size: top-k 10% with indices is ~20%
    mb = runs.groupby("method")["mb_per_node"].mean()
    assert 0.15 < mb["choco"] / mb["dsgdm"] < 0.25
    assert mb["choco"] == mb["adagossip"]
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert len(verdicts) == 1 and verdicts["pairs"].iloc[0] == 2
    assert verdicts["claim"].iloc[0] == "adagossip beats choco, top-k 90%"
    assert {"converged", "change"} <= set(runs.columns)
    # gamma lives in (0, 1]: an edge best is extended up to 1, never beyond
    assert gammas["gamma"].max() <= 1.0
    assert (gammas["interior"] | gammas["at_limit"]).all()
    assert (tmp_path / "compression_sensitivity.png").stat().st_size > 10_000
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert set(curves["step"]) <= set(range(0, 11, 2)) and 10 in set(curves["step"])
    assert (tmp_path / "compression.png").stat().st_size > 10_000
    assert "AdaGossip − CHOCO" in (tmp_path / "summary.md").read_text()
    assert "within 2 points" in (tmp_path / "summary.md").read_text()
    assert mod.main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
