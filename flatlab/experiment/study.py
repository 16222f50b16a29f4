"""Run directories read back, tuned and summarized: what the study pipeline applies the rules to.

A study runs its ``(run directory, config)`` jobs with :func:`~flatlab.experiment.many.run_many`
(resumable: finished runs are skipped, interrupted ones resume from their checkpoints, a failure
is recorded and the rest goes on), reads them back with :func:`final_values`, tunes with
:func:`tune_bracketed` (every value on several seeds, the mean decides, ties within one standard
error go toward the grid's centre, an edge best is extended; ``max_extensions=0`` keeps a fixed
grid), checks final runs with :func:`final_convergence` and summarizes over seeds with
:func:`mean_and_se`. The pipeline that strings these together for a study specification is
:mod:`flatlab.studies`; the rules that decide whether a conclusion is earned are
:mod:`flatlab.experiment.evidence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError
from flatlab.experiment.evidence import (
    RobustChoice,
    at_chance,
    next_value,
    robust_choice,
    run_convergence,
)
from flatlab.experiment.many import run_many
from flatlab.experiment.results import summary
from flatlab.experiment.rundir import read_status

__all__ = ["final_values", "mean_and_se", "tune_bracketed", "final_convergence"]


def final_values(path: str | Path, columns: dict[str, str]) -> dict[str, Any]:
    """A run's status and the last value of some metrics, NaN where it failed before any.

    Args:
        path: The run directory.
        columns: ``{output name: metric column of flatlab.results.summary}`` (for example
            ``{"test_accuracy_nodes": "test_accuracy[mean]"}``).
    """
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
                   limits: Callable[[dict[str, Any]], tuple[float, float]] | None = None,
                   seeds: Sequence[int] = (0,), classes: int | None = None,
                   score: str = "test_accuracy") -> pd.DataFrame:
    """Run held-out jobs per grid point and seed; extend each grid until its choice is interior.

    Each job evaluates on a held-out split, so its final ``score`` is the held-out accuracy.
    Per group and value, the mean and standard error over ``seeds`` decide
    (:func:`flatlab.experiment.evidence.robust_choice`): values within one standard error of
    the best mean tie, and a tie goes toward the grid's centre; a value that diverged on any
    seed bounds the grid. After each round of runs (in parallel,
    :func:`~flatlab.experiment.many.run_many`) a group whose best mean sits at an edge, with no
    interior value tied, gets the next value beyond it (the edge times or divided by the grid's
    own ratio, 3 significant digits) until ``max_extensions`` values were added. Rounds are
    resumable: finished runs are skipped, so a rerun replays the same decisions.

    Args:
        points: The initial grid: dicts of the setting's keys and the tuned ``hparam``.
        job: ``point -> (run directory, config)``; the point carries ``seed`` (one of
            ``seeds``), which the job must use for initialization, data and minibatches.
        workers: As :func:`~flatlab.experiment.many.run_many` (0 reads what is on disk).
        group: Keys of a point that define one choice (setting and method).
        hparam: The tuned key (positive).
        max_extensions: Values added at most per group.
        limits: ``group keys -> (low, high)``, the values the hyper-parameter may take there
            (CHOCO-SGD's ``γ <= 1``, say); a best value at its limit is ``at_limit``.
        seeds: The tuning seeds (at least 3 for a choice one sample cannot flip).
        classes: With it, a group whose chosen mean is at chance
            (:func:`~flatlab.experiment.evidence.at_chance`) or that trained at no value is
            ``untrainable``.
        score: The run's final metric that is the held-out score.

    Returns:
        One row per value tried: the keys, ``status`` (``diverged`` when any seed diverged),
        ``holdout_accuracy`` (mean over the seeds that finished), ``holdout_se``,
        ``holdout_seeds``, ``diverged_seeds``, ``extended``, ``tied`` (within one standard
        error of the group's best mean), ``chosen``; per group ``interior``, ``at_limit``,
        ``extensions`` and ``untrainable``. ``attrs["per_seed"]`` holds one row per run and
        ``attrs["rule"]`` the tie rule.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("tune_bracketed needs at least one seed")

    def bounds(key: tuple) -> tuple[float, float]:
        return limits(dict(zip(group, key, strict=True))) if limits else (0.0, math.inf)

    def aggregate(per_seed: list[dict[str, Any]]) -> pd.DataFrame:
        rows = []
        t = pd.DataFrame(per_seed)
        for key, g in t.groupby([*group, hparam], sort=False):
            ok = g.loc[g["status"] == "done", "holdout_accuracy"].astype(float).dropna()
            states = set(g["status"])
            status = ("diverged" if "diverged" in states else "done" if states == {"done"}
                      else sorted(states - {"done"})[0])
            rows.append(dict(zip([*group, hparam], key, strict=True)) | {
                "extended": bool(g["extended"].any()), "status": status,
                "holdout_accuracy": ok.mean() if len(ok) == len(g) else math.nan,
                "holdout_se": ok.std(ddof=1) / math.sqrt(len(ok)) if len(ok) > 1 else math.nan,
                "holdout_seeds": len(ok), "diverged_seeds": int((g["status"] == "diverged").sum())})
        return pd.DataFrame(rows)

    def choice(g: pd.DataFrame) -> RobustChoice:
        return robust_choice(g[hparam].tolist(), g["holdout_accuracy"].tolist(),
                             g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())

    def clipped(c: RobustChoice, key: tuple, tried: set[float]) -> float | None:
        return next_value(c.next_value, tried, limits=bounds(key))

    todo = [dict(p) for p in points]
    per_seed: list[dict[str, Any]] = []
    while todo:
        runs = [(p, seed) for p in todo for seed in seeds]
        jobs = [job({**{k: v for k, v in p.items() if k != "extended"}, "seed": seed})
                for p, seed in runs]
        run_many(jobs, workers)
        for (p, seed), (path, _) in zip(runs, jobs, strict=True):
            r = final_values(path, {"holdout_accuracy": score})
            if r["status"] != "done":
                r["holdout_accuracy"] = math.nan
            per_seed.append({"extended": False, **p, "seed": seed, **r})
        todo = []
        for key, g in aggregate(per_seed).groupby(group, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            if (g["status"].isin(["running", "interrupted", "failed"]).any() or len(g) < 2
                    or g["extended"].sum() >= max_extensions):
                continue  # unfinished runs decide nothing yet; or the group's budget is spent
            value = clipped(choice(g), key, set(g[hparam].astype(float)))
            if value is not None:
                todo.append({**dict(zip(group, key, strict=True)), hparam: value,
                             "extended": True})
    table = aggregate(per_seed)
    for col, v in (("tied", False), ("chosen", False), ("interior", False),
                   ("at_limit", False), ("extensions", 0), ("untrainable", False)):
        table[col] = v
    rule = RobustChoice.rule
    for key, g in table.groupby(group, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        table.loc[g.index, "extensions"] = int(g["extended"].sum())
        if len(g) < 2:
            c = None
            ok = g[(g["status"] == "done") & g["holdout_accuracy"].notna()]
            chosen = float(ok[hparam].iloc[0]) if len(ok) else math.nan
        else:
            c = choice(g)
            chosen = c.chosen
            table.loc[g.index, "interior"] = c.interior
            table.loc[g.index, "tied"] = g[hparam].astype(float).isin(c.ties).to_numpy()
            table.loc[g.index, "at_limit"] = (c.next_value is not None and clipped(
                c, key, set(g[hparam].astype(float))) is None)
        pick = g[hparam].astype(float) == chosen
        table.loc[g.index, "chosen"] = pick.to_numpy()
        mean = g.loc[pick, "holdout_accuracy"]
        table.loc[g.index, "untrainable"] = bool(classes) and (
            not pick.any() or bool(at_chance(float(mean.iloc[0]), classes)))
    table = table.sort_values([*group, hparam], kind="stable").reset_index(drop=True)
    table.attrs["per_seed"] = pd.DataFrame(per_seed)
    table.attrs["rule"] = rule
    return table


def final_convergence(path: str | Path, metric: str = "test_accuracy", *, last: float = 0.2,
                      threshold: float = 0.01) -> dict[str, Any]:
    """The convergence check of a final run, as table columns (``converged``, ``change``).

    :func:`flatlab.experiment.evidence.run_convergence` on the run's held-out curve; a run
    without such a curve (failed, diverged early, measured once) is ``converged = False`` with
    ``change`` NaN: it is never counted as settled.
    """
    try:
        c = run_convergence(path, metric, last=last, threshold=threshold)
    except (FlatlabError, OSError):
        return {"converged": False, "change": math.nan}
    return {"converged": c.converged, "change": c.change}


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
