"""The committed results of a study against what the pipeline writes from their tables."""

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from flatlab.studies import pipeline
from flatlab.studies.spec import Scale, Study


def assert_rejudges_to(study: Study, scale: Scale, out: Path, committed: Path, *,
                       copy: bool = True,
                       tables: Sequence[str] = ("verdicts", "runs", "summary")) -> None:
    """Re-judge the tables in ``out`` and assert every report and table equals ``committed``'s.

    ``copy``: copy ``committed``'s ``*.csv`` tables into ``out`` first (``False``: ``out``
    already holds them, e.g. joined rounds).
    """
    if copy:
        for p in committed.glob("*.csv"):
            shutil.copy(p, out / p.name)
    pipeline.rejudge(study, scale, out, None)
    for name in ("summary.md", "results.md"):
        assert (out / name).read_text() == (committed / name).read_text(), name
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"),
                                      pd.read_csv(committed / f"{name}.csv"))
