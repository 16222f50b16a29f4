"""What the study scripts in ``analysis/`` share as a library: read back, tune, summarize.

A study runs its ``(run directory, config)`` jobs with :func:`~flatlab.experiment.many.run_many`
(resumable: finished runs are skipped, interrupted ones resume from their checkpoints, a failure
is recorded and the rest goes on), reads them back with :func:`final_values`, tunes with
:func:`tune_bracketed` (``max_extensions=0`` keeps a fixed grid),
checks the final runs with :func:`final_convergence` and summarizes over seeds with
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

__all__ = ["final_values", "choose_best", "mean_and_se", "tune_bracketed", "final_convergence"]


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


def tune_bracketed(points: Sequence[dict[str, Any]],
                   job: Callable[[dict[str, Any]], tuple[str | Path, dict[str, Any]]],
                   workers: int, group: list[str], hparam: str, *, max_extensions: int = 4,
                   limits: Callable[[dict[str, Any]], tuple[float, float]] | None = None
                   ) -> pd.DataFrame:
    """Run one held-out job per grid point; extend the grid until each group's best is interior.

    Each job evaluates on a held-out split, so its final ``test_accuracy`` is the held-out
    accuracy; the best value of ``hparam`` per group is ``chosen``. The extension rule is
    :func:`flatlab.experiment.evidence.grid_check`: after each round of runs (run in parallel by
    :func:`~flatlab.experiment.many.run_many`), a group whose best value sits at an edge gets
    the next value beyond it, the edge times or divided by the grid's own ratio
    (rounded to 3 significant digits), until the best has a worse or diverged neighbour on both
    sides or ``max_extensions`` values were added to that group. Rounds are resumable like
    everything else: finished runs are skipped, so a rerun replays the same decisions.

    Args:
        points: The initial grid: dicts of the setting's keys and the tuned ``hparam``.
        job: ``point -> (run directory, config)``, evaluated on a held-out split.
        workers: As :func:`~flatlab.experiment.many.run_many` (0 reads what is on disk and
            extends nothing that has not been run).
        group: Keys of a point that define one choice (setting and method).
        hparam: The tuned key (positive; ties go to its smaller value).
        max_extensions: Values added at most per group.
        limits: ``group keys -> (low, high)``, the values the hyper-parameter may take there
            (CHOCO-SGD's ``γ <= 1``, say). An extension beyond a limit tries the limit itself;
            a best value at its limit is reported ``at_limit`` rather than extended.

    Returns:
        One row per point run: its keys, ``status``, ``holdout_accuracy`` (NaN unless done),
        ``extended`` (added beyond the initial grid), ``chosen``, and per group ``interior``
        (its best is bracketed), ``at_limit`` (its best sits at an edge that is the
        hyper-parameter's own limit) and ``extensions`` (values added).
    """
    from flatlab.experiment.evidence import extension, grid_check

    def bounds(key: tuple) -> tuple[float, float]:
        return limits(dict(zip(group, key, strict=True))) if limits else (0.0, math.inf)

    def groups(table: pd.DataFrame):
        for key, g in table.groupby(group, sort=False):
            yield (key if isinstance(key, tuple) else (key,)), g

    def scored(g: pd.DataFrame) -> tuple[list, list, list]:
        return (g[hparam].tolist(), g["holdout_accuracy"].tolist(),
                (g["status"] == "diverged").tolist())

    todo = [dict(p) for p in points]
    done: list[dict[str, Any]] = []
    while todo:
        jobs = [job(p) for p in todo]
        run_many(jobs, workers)
        for p, (path, _) in zip(todo, jobs, strict=True):
            r = final_values(path, {"holdout_accuracy": "test_accuracy"})
            if r["status"] != "done":
                r["holdout_accuracy"] = math.nan
            done.append({"extended": False, **p, **r})
        todo = []
        for key, g in groups(pd.DataFrame(done)):
            if (g["status"].isin(["running", "interrupted", "failed"]).any() or len(g) < 2
                    or g["extended"].sum() >= max_extensions):
                continue  # unfinished runs decide nothing yet; or the group's budget is spent
            value = extension(*scored(g), limits=bounds(key))
            if value is not None:
                todo.append({**dict(zip(group, key, strict=True)), hparam: value,
                             "extended": True})
    table = pd.DataFrame(done)
    table["chosen"] = choose_best(table, group, "holdout_accuracy", hparam)
    table["interior"], table["at_limit"], table["extensions"] = False, False, 0
    for key, g in groups(table):
        if len(g) < 2:
            continue
        check = grid_check(*scored(g))
        table.loc[g.index, "interior"] = check.interior
        table.loc[g.index, "at_limit"] = (check.edge is not None and extension(
            *scored(g), limits=bounds(key)) is None)
        table.loc[g.index, "extensions"] = int(g["extended"].sum())
    return table.sort_values([*group, hparam], kind="stable").reset_index(drop=True)


def final_convergence(path: str | Path, metric: str = "test_accuracy", *, last: float = 0.2,
                      threshold: float = 0.01) -> dict[str, Any]:
    """The convergence check of a final run, as table columns (``converged``, ``change``).

    :func:`flatlab.experiment.evidence.run_convergence` on the run's held-out curve; a run
    without such a curve (failed, diverged early, measured once) is ``converged = False`` with
    ``change`` NaN: it is never counted as settled.
    """
    from flatlab.errors import FlatlabError
    from flatlab.experiment.evidence import run_convergence

    try:
        c = run_convergence(path, metric, last=last, threshold=threshold)
    except (FlatlabError, OSError):
        return {"converged": False, "change": math.nan}
    return {"converged": c.converged, "change": c.change}


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

    Columns ``seeds`` (runs that finished), ``diverged``, ``converged`` (runs that passed the
    convergence check, when the table has the ``converged`` column of
    :func:`final_convergence`), and ``<col>_mean``, ``<col>_se`` (NaN with fewer than two runs)
    for each of ``columns``.
    """
    rows = []
    for k, g in table.groupby(keys, sort=False):
        ok = g[g["status"] == "done"]
        row: dict[str, Any] = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        row |= {"seeds": len(ok), "diverged": int((g["status"] == "diverged").sum())}
        if "converged" in g:
            row["converged"] = int(g["converged"].astype(bool).sum())
        for col in columns:
            v = ok[col].astype(float).dropna()
            row[f"{col}_mean"] = v.mean() if len(v) else math.nan
            row[f"{col}_se"] = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
