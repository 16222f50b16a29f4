"""Pieces shared by the study scripts in ``analysis/``: run many configs, tune, summarize.

A study is a list of ``(run directory, config)`` jobs run by
:func:`~flatlab.experiment.many.run_many` (in parallel processes of one thread each,
resumable: finished runs are skipped, interrupted ones resume from their checkpoints, a failure
is recorded and the rest goes on), read back with
:func:`final_values`, tuned with :func:`choose_best` and summarized over seeds with
:func:`mean_and_se`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["run_jobs", "final_values", "choose_best", "mean_and_se", "StudyArgs", "study_args",
           "save_figure", "committed_results", "redraw", "tune_on_holdout"]


def run_jobs(jobs: Sequence[tuple[str | Path, dict[str, Any]]], workers: int) -> pd.DataFrame:
    """Run ``(directory, config)`` jobs with :func:`~flatlab.experiment.many.run_many`."""
    from flatlab.experiment.many import run_many

    return run_many(jobs, workers)


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
        workers: As :func:`run_jobs` (0 reads what is on disk).
        group: Keys of a point that define one choice (setting and method).
        hparam: The tuned key (ties go to its smaller value).

    Returns:
        One row per point: its keys, ``status``, ``holdout_accuracy`` (NaN unless done) and
        ``chosen``.
    """
    jobs = [job(p) for p in points]
    run_jobs(jobs, workers)
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


@dataclass(frozen=True)
class StudyArgs:
    """A study script's parsed command line.

    Attributes:
        scale: The chosen scale (a key of the script's ``SCALES``).
        out: Study directory (runs under ``out/runs``, tables next to them).
        fig: Figure path without suffix.
        workers: Runs in parallel; 0 with ``--report`` (read what is on disk, run nothing).
        report: Only rebuild tables and figures.
    """

    scale: str
    out: Path
    fig: Path
    workers: int
    report: bool

    @property
    def runs(self) -> Path:
        """Where the runs live."""
        return self.out / "runs"


def study_args(argv: list[str] | None, doc: str, scales: Sequence[str], name: str,
               root: Path) -> StudyArgs | int:
    """The command line every study script shares, or an exit status (2) after one line.

    ``--scale`` (default ``small``), ``--out`` (default ``results/<name>-<scale>``), ``--fig``
    (default ``paper_figs/out/<name>``; at ``tiny`` scale ``<out>/<name>``), ``--jobs`` and
    ``--report`` (which needs runs on disk).
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(scales), default="small")
    p.add_argument("--out", type=Path, default=None,
                   help=f"study directory (default results/{name}-<scale>)")
    p.add_argument("--fig", type=Path, default=None,
                   help=f"figure path without suffix (default paper_figs/out/{name}; tiny: "
                        f"<out>/{name})")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--report", action="store_true",
                   help="only rebuild tables and figure from the runs on disk")
    a = p.parse_args(argv)
    if a.jobs < 1:
        print(f"error: --jobs must be >= 1 (got {a.jobs})", file=sys.stderr)
        return 2
    out = a.out or root / "results" / f"{name}-{a.scale}"
    fig = a.fig or (out / name if a.scale == "tiny" else root / "paper_figs" / "out" / name)
    args = StudyArgs(a.scale, out, fig, 0 if a.report else a.jobs, a.report)
    if a.report and not args.runs.is_dir():
        print(f"error: no runs under {args.runs}; run without --report first", file=sys.stderr)
        return 2
    return args


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as ``path.pdf`` and ``path.png`` (200 dpi), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("pdf", "png"):
        fig.savefig(path.with_suffix(f".{ext}"), dpi=200)


def committed_results(root: Path, name: str, needs: str) -> Path | None:
    """``results/<name>-full`` if it holds ``needs``, else ``results/<name>-small``, else None."""
    for scale in ("full", "small"):
        d = root / "results" / f"{name}-{scale}"
        if (d / needs).is_file():
            return d
    return None


def redraw(root: Path, name: str, tables: Sequence[str],
           draw: Callable[..., Any]) -> int:
    """Redraw ``paper_figs/out/<name>.{pdf,png}`` from a study's committed tables.

    ``draw`` gets the tables (read with pandas, in the order of ``tables``) of
    :func:`committed_results`; returns 0, or 2 after one line when the study has not been run.
    """
    src = committed_results(root, name, tables[0])
    if src is None:
        print(f"error: no {name} results; run python analysis/{name}.py first", file=sys.stderr)
        return 2
    out = root / "paper_figs" / "out" / name
    save_figure(draw(*(pd.read_csv(src / t) for t in tables)), out)
    print(f"wrote {out}.pdf and .png from {src.relative_to(root)}")
    return 0
