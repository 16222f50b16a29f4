"""What the study scripts in ``analysis/`` share as a library: read back, tune, summarize.

A study runs its ``(run directory, config)`` jobs with :func:`~flatlab.experiment.many.run_many`
(resumable: finished runs are skipped, interrupted ones resume from their checkpoints, a failure
is recorded and the rest goes on), reads them back with :func:`final_values`, tunes with
:func:`tune_on_holdout` and :func:`choose_best` and summarizes over seeds with
:func:`mean_and_se`. The scripts' command line and figure files are theirs
(``analysis/common.py``). The rules that decide whether a conclusion is earned (converged runs,
grids that bracket their optimum, seed-paired intervals and verdicts) are
:mod:`flatlab.experiment.evidence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.experiment.many import run_many

__all__ = ["final_values", "choose_best", "mean_and_se", "tune_on_holdout"]


def final_values(path: str | Path, columns: dict[str, str]) -> dict[str, Any]:
    """A run's status and the last value of some metrics, NaN where it failed before any.

    Args:
        path: The run directory.
        columns: ``{output name: metric column of flatlab.results.summary}`` (for example
            ``{"test_accuracy_nodes": "test_accuracy[mean]"}``).
    """
    from flatlab.experiment.results import summary
    from flatlab.experiment.rundir import read_status

    path = Path(path)
    st = read_status(path)
    out: dict[str, Any] = {"status": "failed" if st is None else st["status"]}
    if st is None or not (path / "metrics.parquet").is_file():
        return out | {k: math.nan for k in columns}
    s = summary(path).iloc[0]
    return out | {k: s.get(c, math.nan) for k, c in columns.items()}


def tune_on_holdout(points: Sequence[dict[str, Any]],
                    job: Callable[[dict[str, Any]], tuple[str | Path, dict[str, Any]]],
                    workers: int, group: list[str], hparam: str) -> pd.DataFrame:
    """Run one held-out job per grid point and mark the best value of ``hparam`` per group.

    Args:
        points: Grid points, each a dict of the setting's keys and the tuned ``hparam``.
        job: ``point -> (run directory, config)``; the config evaluates on a held-out split, so
            the run's final ``test_accuracy`` is the held-out accuracy.
        workers: As :func:`~flatlab.experiment.many.run_many` (0 reads what is on disk).
        group: Keys of a point that define one choice (setting and method).
        hparam: The tuned key (ties go to its smaller value).

    Returns:
        One row per point: its keys, ``status``, ``holdout_accuracy`` (NaN unless done) and
        ``chosen``.
    """
    jobs = [job(p) for p in points]
    run_many(jobs, workers)
    rows = []
    for p, (path, _) in zip(points, jobs, strict=True):
        r = final_values(path, {"holdout_accuracy": "test_accuracy"})
        if r["status"] != "done":
            r["holdout_accuracy"] = math.nan
        rows.append({**p, **r})
    table = pd.DataFrame(rows)
    table["chosen"] = choose_best(table, group, "holdout_accuracy", hparam)
    return table


def choose_best(table: pd.DataFrame, keys: list[str], score: str, tie: str) -> pd.Series:
    """Mask of the best row per group of ``keys``: the highest finite ``score``.

    Ties go to the smaller ``tie`` (e.g. the learning rate); a group whose scores are all NaN
    chooses nothing.
    """
    ranked = (table.dropna(subset=[score])
              .sort_values([score, tie], ascending=[False, True])
              .drop_duplicates(keys))
    return pd.Series(table.index.isin(ranked.index), index=table.index)


def mean_and_se(table: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean and standard error over the ``done`` runs of each group, with run counts.

    Columns ``seeds`` (runs that finished), ``diverged``, and ``<col>_mean``, ``<col>_se`` (NaN
    with fewer than two runs) for each of ``columns``.
    """
    rows = []
    for k, g in table.groupby(keys, sort=False):
        ok = g[g["status"] == "done"]
        row: dict[str, Any] = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        row |= {"seeds": len(ok), "diverged": int((g["status"] == "diverged").sum())}
        for col in columns:
            v = ok[col].astype(float).dropna()
            row[f"{col}_mean"] = v.mean() if len(v) else math.nan
            row[f"{col}_se"] = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
