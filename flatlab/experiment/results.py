"""The results store: one tidy DataFrame over a run directory or a whole sweep.

>>> df = flatlab.results.load("runs/my-sweep")            # doctest: +SKIP
>>> df[df.metric == "test_accuracy"].groupby("algorithm.name").value.last()  # doctest: +SKIP

Columns: ``step, epoch, metric, scope, value`` (DESIGN.md §7), then ``run`` (the directory,
relative to the path loaded), ``status`` (``interrupted`` for a run whose status says running
but whose process is gone, see :mod:`flatlab.experiment.rundir`), and one column per config field,
dotted (``algorithm.name``, ``optim.lr``, ``topology.nodes``, ...), ready for seaborn's ``hue=``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError, RunDirError
from flatlab.experiment import rundir
from flatlab.experiment.rundir import METRIC_COLUMNS

__all__ = ["load", "find_runs", "flatten", "summary", "read_metrics", "run_line"]


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


def find_runs(path: str | Path) -> list[Path]:
    """Run directories (with ``config.yaml`` and ``status.json``) at or under ``path``."""
    path = Path(path)
    if (path / "config.yaml").is_file() and (path / "status.json").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("status.json") if (p.parent / "config.yaml")
                  .is_file())


def _runs_or_fail(path: Path) -> list[Path]:
    """The runs under ``path``; a one-line error when there is nothing to load."""
    if not path.exists():
        raise FlatlabError(f"results path {path} does not exist")
    runs = find_runs(path)
    if not runs:
        raise FlatlabError(f"no run directory (config.yaml + status.json) under {path}")
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
        df = pd.read_parquet(mpath)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        first = (str(e).splitlines() or [""])[0][:120] or type(e).__name__
        raise RunDirError(f"metrics file {mpath} cannot be read ({first}); it is damaged: "
                          "resume the run to rewrite it at its next checkpoint, or delete the "
                          "run") from None
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise RunDirError(f"metrics file {mpath} has no column {missing[0]!r}; it is not a "
                          f"flatlab metrics table (columns {', '.join(METRIC_COLUMNS)})")
    return df


def _run_frame(run: Path, root: Path) -> pd.DataFrame:
    cfg = flatten(rundir.read_config(run) or {})
    status = rundir.shown_status(rundir.read_status(run))
    df = read_metrics(run)
    df["run"] = _run_name(run, root)
    df["status"] = status
    for k, v in cfg.items():
        df[k] = v
    return df


def load(path: str | Path) -> pd.DataFrame:
    """All metrics of the run, or of every run under a sweep directory, as one long DataFrame.

    Raises:
        FlatlabError: ``path`` does not exist or holds no run.
    """
    path = Path(path)
    runs = _runs_or_fail(path)
    frames = [_run_frame(r, path) for r in runs]
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)


def summary(path: str | Path) -> pd.DataFrame:
    """One row per run: its status, step and the last value of each ``avg``/``network`` metric."""
    path = Path(path)
    runs = _runs_or_fail(path)
    rows = []
    for r in runs:
        st = rundir.read_status(r)
        row = {"run": _run_name(r, path),
               "status": rundir.shown_status(st), "step": st.get("step"),
               "elapsed_s": st.get("elapsed_s")}
        m = read_metrics(r)
        if len(m):
            m = m[m.scope.isin(["avg", "network", "mean"])]
            last = m.sort_values("step").groupby(["metric", "scope"]).value.last()
            for (metric, scope), v in last.items():
                row[metric if scope != "mean" else f"{metric}[mean]"] = v
        rows.append(row)
    return pd.DataFrame(rows)


#: The metrics :func:`run_line` shows when the run has them (the averaged model's).
LINE_METRICS = (("train_loss", "loss"), ("test_accuracy", "test acc"),
                ("hessian_top", "lambda_max"), ("consensus_distance", "consensus"))


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
