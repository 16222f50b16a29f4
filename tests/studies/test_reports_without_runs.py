"""Every committed study re-judged as if none of its runs had finished.

A study's report, appendix and figures must say "no verdict" and draw empty panels when every
final run diverged, not fail: the committed tables are copied with every run marked diverged,
every measurement blanked and the curves and phase tables emptied (columns kept), then
re-judged with figures (``flatlab.studies.pipeline.rejudge``).
"""

import importlib
import math
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[2]
#: committed folder -> (study, its scale)
COMMITTED = {name: (name, "small") for name in (
    "compression", "faults", "heterogeneity", "implicit_flatness", "large_batch", "mechanism",
    "primal_dual", "regime", "tradeoff")}


def _folder(name: str) -> Path:
    return ROOT / "results" / (name if "-" in name else f"{name}-small")


@pytest.mark.parametrize("folder", sorted(COMMITTED))
def test_a_study_without_a_finished_run_reports_no_verdict(tmp_path, folder):
    from flatlab.studies.pipeline import rejudge

    name, scale = COMMITTED[folder]
    study = importlib.import_module(f"flatlab.studies.{name}").STUDY
    src = _folder(folder)
    assert (src / "runs.csv").is_file(), src
    for p in sorted(src.glob("*.csv")):
        if not p.read_text().strip():
            continue
        t = pd.read_csv(p)
        if p.stem == "runs":
            t["status"] = "diverged"
            for col in study.measures:
                if col in t:
                    t[col] = math.nan
        elif p.stem not in ("tuning", "summary", "verdicts"):
            t = t.iloc[0:0]  # curves and the phases' tables: nothing measured
        t.to_csv(tmp_path / p.name, index=False)
    tables = rejudge(study, study.scales[scale], tmp_path, tmp_path / "fig")
    verdicts = tables["verdicts"]
    assert len(verdicts) and (verdicts["verdict"] == "no verdict").all()
    summary = (tmp_path / "summary.md").read_text()
    assert "nan" not in summary.lower()  # no number made of nothing
