"""The results store: one tidy DataFrame over a run directory or a whole sweep.

Over a sweep that ``flatlab sweep`` wrote::

    df = flatlab.results.load("runs/my-sweep")
    df[df.metric == "test_accuracy"].groupby("algorithm.name").value.last()

Columns: ``step, epoch, metric, scope, value`` (DESIGN.md §7), then ``run`` (the directory,
relative to the path loaded), ``status`` (``interrupted`` for a run whose status says running
but whose process is gone, see :mod:`flatlab.experiment.rundir`), and one column per config field,
dotted (``algorithm.name``, ``optim.lr``, ``topology.nodes``, ...), ready for seaborn's ``hue=``.

**Damaged runs.** A run directory given directly whose files cannot be read (a ``status.json``
that is not a JSON object with a known status and a step, a ``config.yaml`` that does not parse,
a damaged ``metrics.parquet``) is refused with one :class:`~flatlab.errors.RunDirError` line. In
a sweep, one such run does not hide the others: :func:`load` and :func:`summary` leave it out
with one :class:`~flatlab.errors.UnreadableRunWarning` naming its file and what is wrong
(``strict=True`` raises instead), and :func:`load_readable` / :func:`summary_readable` return the
table of the readable runs beside the list of those left out (what ``flatlab results`` and
``flatlab plot`` print).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pandas as pd

from flatlab.errors import FlatlabError, RunDirError, UnreadableRunWarning
from flatlab.experiment import rundir
from flatlab.experiment.io import read_parquet
from flatlab.experiment.rundir import METRIC_COLUMNS

__all__ = ["load", "find_runs", "flatten", "summary", "read_metrics", "run_line", "Unreadable",
           "Readout", "load_readable", "summary_readable"]

_T = TypeVar("_T")


class Unreadable(NamedTuple):
    """A run of a sweep that could not be read.

    Attributes:
        run: Its name, relative to the path loaded (as in the ``run`` column).
        message: One line naming the file and what is wrong with it.
    """

    run: str
    message: str


class Readout(NamedTuple):
    """The readable runs under a path as one table, and the runs that could not be read.

    Attributes:
        table: The table of the readable runs; ``None`` when not one could be read.
        unreadable: The runs left out, in the order of :func:`find_runs`.
    """

    table: pd.DataFrame | None
    unreadable: list[Unreadable]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b": value}``; lists become JSON text (hashable columns)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, dict):
            continue
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


#: Files that only a run writes: a folder holding one of them is a run directory.
_RUN_MARKS = ("status.json", "metrics.parquet", "checkpoint.pt")


def find_runs(path: str | Path) -> list[Path]:
    """Run directories at or under ``path``: folders holding a run's status, metrics or checkpoint.

    A run that lost one of its files (a deleted ``config.yaml``, say) is still found, so that
    reading it says what is missing instead of leaving it out without a word.
    """
    path = Path(path)
    if any((path / m).exists() for m in _RUN_MARKS):
        return [path]
    return sorted({p.parent for m in _RUN_MARKS for p in path.rglob(m)})


def _require_files(run: Path) -> None:
    """A run to read needs its ``config.yaml`` and ``status.json``; one line when one is gone."""
    for name in ("config.yaml", "status.json"):
        if not (run / name).exists():
            raise RunDirError(f"run directory {run} has no {name} (deleted?); its results "
                              "cannot be read without it: rerun its sweep or `flatlab run` its "
                              "config into it (a finished run is mended from its checkpoint), "
                              "or delete the run")


def _runs_or_fail(path: Path) -> list[Path]:
    """The runs under ``path``; a one-line error when there is nothing to load."""
    if not path.exists():
        raise FlatlabError(f"results path {path} does not exist")
    runs = find_runs(path)
    if not runs:
        raise FlatlabError(f"no run directory (a folder with status.json, metrics.parquet or "
                           f"checkpoint.pt) under {path}")
    return runs


def _run_name(run: Path, root: Path) -> str:
    """A run's name relative to the loaded path (its own name when the path is the run)."""
    return run.relative_to(root).as_posix() if run != root else run.name


def read_metrics(run: str | Path) -> pd.DataFrame:
    """A run's ``metrics.parquet`` (empty, with its columns, before the first checkpoint).

    Raises:
        RunDirError: The file is damaged or does not hold the metric columns.
    """
    mpath = Path(run) / "metrics.parquet"
    if not mpath.is_file():
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    try:
        df = read_parquet(mpath)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        first = (str(e).splitlines() or [""])[0][:120] or type(e).__name__
        raise RunDirError(f"metrics file {mpath} cannot be read ({first}); it is damaged: "
                          "rerun its sweep or `flatlab run` its config into it (a finished run "
                          "rewrites it from its checkpoint, an unfinished one at its next), or "
                          "delete the run") from None
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise RunDirError(f"metrics file {mpath} has no column {missing[0]!r}; it is not a "
                          f"flatlab metrics table (columns {', '.join(METRIC_COLUMNS)})")
    return df


def _run_frame(run: Path, root: Path) -> pd.DataFrame:
    _require_files(run)
    cfg = flatten(rundir.read_config(run) or {})
    status = rundir.shown_status(rundir.read_status(run))
    df = read_metrics(run)
    df["run"] = _run_name(run, root)
    df["status"] = status
    for k, v in cfg.items():
        df[k] = v
    return df


def _summary_row(run: Path, root: Path) -> dict[str, Any]:
    _require_files(run)
    st = rundir.read_status(run)
    if st is None:  # find_runs saw it: it went away since
        raise RunDirError(f"status file {run / 'status.json'} is gone (removed while reading?)")
    row = {"run": _run_name(run, root), "status": rundir.shown_status(st),
           "step": st.get("step"), "elapsed_s": st.get("elapsed_s")}
    m = read_metrics(run)
    if len(m):
        m = m[m.scope.isin(["avg", "network", "mean"])]
        last = m.sort_values("step").groupby(["metric", "scope"]).value.last()
        for (metric, scope), v in last.items():
            row[metric if scope != "mean" else f"{metric}[mean]"] = v
    return row


def _read_each(path: Path, read: Callable[[Path, Path], _T]) -> tuple[list[_T], list[Unreadable]]:
    """``read(run, path)`` for every run under ``path``; the runs it cannot read, apart.

    A run directory given directly is not a sweep: its problem is raised, as it is the answer.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
        RunDirError: ``path`` is itself a run directory and it cannot be read.
    """
    runs = _runs_or_fail(path)
    if runs == [path]:
        return [read(path, path)], []
    good: list[_T] = []
    bad: list[Unreadable] = []
    for r in runs:
        try:
            good.append(read(r, path))
        except RunDirError as e:
            bad.append(Unreadable(_run_name(r, path), str(e)))
        except OSError as e:  # a file that went away or turned unreadable while we looked
            where = e.filename if getattr(e, "filename", None) else r
            bad.append(Unreadable(_run_name(r, path),
                                  f"run directory {r}: {where} cannot be read: {e.strerror or e}"))
    return good, bad


def load_readable(path: str | Path) -> Readout:
    """All metrics of every readable run under ``path`` (:func:`load`'s table), and the others.

    Never raises for a run of a sweep that cannot be read: it is listed in ``unreadable``.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
        RunDirError: ``path`` is itself a run directory and it cannot be read.
    """
    path = Path(path)
    frames, bad = _read_each(path, _run_frame)
    if not frames:
        return Readout(None, bad)
    frames = [f for f in frames if len(f)] or frames[:1]
    return Readout(pd.concat(frames, ignore_index=True), bad)


def summary_readable(path: str | Path) -> Readout:
    """One row per readable run under ``path`` (:func:`summary`'s table), and the others.

    Never raises for a run of a sweep that cannot be read: it is listed in ``unreadable``.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
        RunDirError: ``path`` is itself a run directory and it cannot be read.
    """
    path = Path(path)
    rows, bad = _read_each(path, _summary_row)
    return Readout(pd.DataFrame(rows) if rows else None, bad)


def _settled(readout: Readout, path: str | Path, strict: bool) -> pd.DataFrame:
    """The table of a :class:`Readout`, one warning per run left out (or the error)."""
    table, bad = readout
    if table is None and len(bad) > 1:
        raise RunDirError(f"none of the {len(bad)} runs under {path} can be read; the first: "
                          f"{bad[0].message}")
    if table is None or (bad and strict):
        raise RunDirError(bad[0].message)
    for u in bad:
        warnings.warn(f"run {u.run} left out: {u.message}", UnreadableRunWarning, stacklevel=3)
    return table


def load(path: str | Path, *, strict: bool = False) -> pd.DataFrame:
    """All metrics of the run, or of every run under a sweep directory, as one long DataFrame.

    A run of a sweep whose files cannot be read is left out with one
    :class:`~flatlab.errors.UnreadableRunWarning` naming its file (see :func:`load_readable`).

    Args:
        path: A run directory or a folder of runs (a sweep).
        strict: Raise for a run of a sweep that cannot be read instead of leaving it out.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
        RunDirError: ``path`` is a run directory that cannot be read, no run under it can be read,
            or (``strict``) one cannot.
    """
    return _settled(load_readable(path), path, strict)


def summary(path: str | Path, *, strict: bool = False) -> pd.DataFrame:
    """One row per run: its status, step and the last value of each ``avg``/``network`` metric.

    A run of a sweep whose files cannot be read is left out with one
    :class:`~flatlab.errors.UnreadableRunWarning` naming its file (see :func:`summary_readable`).

    Args:
        path: A run directory or a folder of runs (a sweep).
        strict: Raise for a run of a sweep that cannot be read instead of leaving it out.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
        RunDirError: ``path`` is a run directory that cannot be read, no run under it can be read,
            or (``strict``) one cannot.
    """
    return _settled(summary_readable(path), path, strict)


#: The metrics :func:`run_line` shows when the run has them (the averaged model's).
LINE_METRICS = (("train_loss", "loss"), ("test_accuracy", "test acc"),
                ("hessian_top", "lambda_max"), ("consensus_distance", "consensus"),
                ("sim_time", "simulated s"))


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{int(s) // 60} min {int(s) % 60} s"


def run_line(run: str | Path) -> str:
    """One line on a finished run: its last loss, accuracy, λ_max, wall time and its split.

    For example ``loss 0.412, test acc 0.871, lambda_max 23.4; 41.2 s: train 30.1 s,
    measures 9.8 s (hessian_top 7.9 s, loss 1.2 s, ...), checkpoints 1.3 s``. The time split
    is that of ``status.json``'s ``timings_s`` (absent for runs of older versions).
    """
    run = Path(run)
    m = read_metrics(run)
    parts = []
    if len(m):
        last = m[m.scope.isin(["avg", "network"])].sort_values("step").groupby(
            "metric").value.last()
        parts = [f"{label} {last[k]:.4g}" for k, label in LINE_METRICS if k in last]
    st = rundir.read_status(run) or {}
    t = st.get("timings_s")
    if isinstance(t, dict) and isinstance(t.get("measures"), dict):
        each = sorted(((k, v) for k, v in t["measures"].items() if k != "sum"),
                      key=lambda kv: -kv[1])
        inner = ", ".join(f"{k} {_seconds(v)}" for k, v in each)
        timing = (f"{_seconds(t['total'])}: train {_seconds(t['train'])}, measures "
                  f"{_seconds(t['measures'].get('sum', 0.0))}" + (f" ({inner})" if inner else "")
                  + f", checkpoints {_seconds(t['checkpoint'])}")
    else:
        timing = _seconds(float(st.get("elapsed_s", 0.0)))
    return (", ".join(parts) + "; " if parts else "") + timing
