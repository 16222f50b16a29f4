"""What makes a study's conclusion earned: convergence, bracketed tuning, paired intervals.

Free functions over plain arrays and tables, so that every study applies the same rules:

- :func:`convergence`: a run has converged when its held-out metric changed by less than a
  threshold (default one accuracy point, 0.01) over the last 20% of its steps; a run still
  improving is reported ``not converged``, never silently compared.
- :func:`grid_check` and :func:`bracket`: a tuned value must be interior to its grid. When the
  best value sits at an edge, the grid is extended by its own ratio until the best is interior
  or the next value diverges (a diverged neighbour bounds the best as well as a worse one does);
  the extension is recorded.
- :func:`sensitivity`: the held-out metric against the tuned value per method, with the
  divergence boundary (the smallest value that diverged).
- :func:`paired_difference` and :func:`verdict`: a comparison is the seed-paired difference with
  a 95% Student-t interval; the verdict says ``supported``, ``contradicted`` or
  ``not separable`` (an interval that straddles zero, or fewer than two seeds: one seed decides
  nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flatlab.errors import FlatlabError

__all__ = ["Convergence", "convergence", "run_convergence", "curves_convergence",
           "with_convergence", "GridCheck",
           "grid_check", "extension", "bracket", "sensitivity", "Paired", "paired_difference",
           "verdict", "VERDICTS", "Claim", "judge", "change_between", "verdict_markdown"]

#: The three verdicts on a claim.
VERDICTS = ("supported", "contradicted", "not separable")


@dataclass(frozen=True)
class Convergence:
    """Whether a curve has settled.

    Attributes:
        converged: ``|change| < threshold`` over the window (False with fewer than two points).
        change: Last value minus the value at the window's first step (positive: still rising).
        start: The window's first step.
        end: The last step.
        threshold: The threshold used.
    """

    converged: bool
    change: float
    start: int
    end: int
    threshold: float

    @property
    def label(self) -> str:
        """``converged`` or ``not converged`` (as tables and figures show it)."""
        return "converged" if self.converged else "not converged"


def convergence(steps: Sequence[int], values: Sequence[float], *, last: float = 0.2,
                threshold: float = 0.01) -> Convergence:
    """Whether a metric changed by less than ``threshold`` over the last ``last`` of the steps.

    Args:
        steps: Measurement steps, increasing (the run starts at ``steps[0]``).
        values: The held-out metric at those steps (accuracy as a fraction: 0.01 is one point).
        last: The window, a fraction of the run's steps.
        threshold: The largest change accepted.

    Raises:
        FlatlabError: Mismatched lengths, decreasing steps, or ``last`` outside (0, 1].
    """
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if s.shape != v.shape or s.ndim != 1 or not s.size:
        raise FlatlabError(f"convergence needs equally long, non-empty steps and values; got "
                           f"{s.shape} and {v.shape}")
    if np.any(np.diff(s) <= 0):
        raise FlatlabError("convergence needs increasing steps")
    if not 0 < last <= 1:
        raise FlatlabError(f"last must be in (0, 1], got {last}")
    begin = s[-1] - last * (s[-1] - s[0])
    window = np.flatnonzero(s >= begin - 1e-9)
    first, end = int(window[0]), len(s) - 1
    change = float(v[end] - v[first]) if len(window) > 1 else math.nan
    ok = len(window) > 1 and math.isfinite(change) and abs(change) < threshold
    return Convergence(ok, change, int(s[first]), int(s[end]), threshold)


def run_convergence(path: str | Path, metric: str = "test_accuracy", scope: str = "avg", *,
                    last: float = 0.2, threshold: float = 0.01) -> Convergence:
    """:func:`convergence` of one metric of a run directory (its ``metrics.parquet``).

    Raises:
        FlatlabError: The run has no such metric, or too few measurements of it.
        RunDirError: Its metrics file is damaged.
    """
    from flatlab.experiment.results import read_metrics

    m = read_metrics(path)
    curve = m[(m.metric == metric) & (m.scope == scope)].sort_values("step")
    if curve.empty:
        raise FlatlabError(f"run {path} has no metric {metric!r} at scope {scope!r}")
    return convergence(curve.step.to_numpy(), curve.value.to_numpy(), last=last,
                       threshold=threshold)


def curves_convergence(curves: pd.DataFrame, keys: Sequence[str], *, value: str = "test_accuracy",
                       step: str = "step", last: float = 0.2, threshold: float = 0.01
                       ) -> pd.DataFrame:
    """:func:`convergence` of every run of a long curves table (a study's ``curves.csv``).

    Args:
        curves: One row per run and measured step: ``keys``, ``step`` and ``value``.
        keys: Columns that identify a run (setting, method, seed).
        value: The held-out metric's column.
        step: The step column.
        last: As :func:`convergence`.
        threshold: As :func:`convergence`.

    Returns:
        One row per run: ``keys``, ``converged``, ``change``, ``start`` and ``end`` (the window).
    """
    rows = []
    for k, g in curves.dropna(subset=[value]).groupby(list(keys), sort=False):
        g = g.sort_values(step).drop_duplicates(step, keep="last")
        c = convergence(g[step].to_numpy(), g[value].to_numpy(), last=last, threshold=threshold)
        rows.append(dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
                    | {"converged": c.converged, "change": c.change, "start": c.start,
                       "end": c.end})
    return pd.DataFrame(rows, columns=[*keys, "converged", "change", "start", "end"])


def with_convergence(table: pd.DataFrame, curves: pd.DataFrame, keys: Sequence[str], *,
                     metric: str = "test_accuracy") -> pd.DataFrame:
    """``table`` (one row per run) with each run's convergence check from a long curves table.

    :func:`curves_convergence` on the rows of ``curves`` whose ``metric`` column is ``metric``
    (``value`` its values), joined on ``keys``; replaces any ``converged`` and ``change`` columns
    ``table`` had. A run without a curve is ``converged = False`` with ``change`` NaN: it is never
    counted as settled. This is how a study checks committed tables without the run directories.
    """
    curve = curves[curves["metric"] == metric].rename(columns={"value": metric})
    conv = curves_convergence(curve, keys, value=metric)[[*keys, "converged", "change"]]
    out = table.drop(columns=["converged", "change"], errors="ignore").merge(
        conv, on=list(keys), how="left")
    out["converged"] = out["converged"].fillna(False).astype(bool)
    return out


@dataclass(frozen=True)
class GridCheck:
    """Where the best value of a tuned grid sits.

    Attributes:
        best: The best value (``nan`` when every point diverged or failed).
        interior: The best has a neighbour on both sides (worse, or diverged).
        edge: ``"low"`` or ``"high"`` when the best is at that edge without a neighbour beyond.
        next_value: The value to try next (the edge times or divided by the grid's ratio), or
            ``None`` when the best is interior.
        ratio: The grid's own ratio (its two values nearest the open edge).
    """

    best: float
    interior: bool
    edge: str | None
    next_value: float | None
    ratio: float


def grid_check(values: Sequence[float], scores: Sequence[float],
               diverged: Sequence[bool] | None = None, *, higher_is_better: bool = True
               ) -> GridCheck:
    """Check that the best of a geometric grid is interior; say which value to add if not.

    Args:
        values: The tuned values (positive; any order).
        scores: Their held-out scores (NaN for a run that diverged or failed).
        diverged: Whether each value diverged (a diverged value bounds the grid on its side).
        higher_is_better: Accuracy (True) or a loss (False).

    An edge value that ties an interior one counts as interior: the optimum is flat there, and
    extending would only add more of the same (a grid of equal scores is not extended).

    Raises:
        FlatlabError: Fewer than two values, non-positive values, or mismatched lengths.
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(scores, dtype=float)
    bad = np.zeros(x.shape, bool) if diverged is None else np.asarray(diverged, dtype=bool)
    if x.ndim != 1 or x.size < 2 or y.shape != x.shape or bad.shape != x.shape:
        raise FlatlabError(f"grid_check needs two or more values with one score each; got "
                           f"{x.shape}, {y.shape}, {bad.shape}")
    if np.any(x <= 0):
        raise FlatlabError("grid_check needs positive values (a geometric grid)")
    order = np.argsort(x)
    x, y, bad = x[order], y[order], bad[order]
    ok = np.isfinite(y) & ~bad
    if not ok.any():
        return GridCheck(math.nan, False, None, None, float(x[1] / x[0]))
    score = np.where(ok, y if higher_is_better else -y, -np.inf)
    ties = np.flatnonzero(ok & (score == score.max()))
    inner = ties[(ties > 0) & (ties < len(x) - 1)]
    i = int(inner[0] if len(inner) else ties[0])  # a tie with an interior value is bracketed
    if 0 < i < len(x) - 1:
        return GridCheck(float(x[i]), True, None, None, float(x[i + 1] / x[i]))
    if i == 0:
        ratio = float(x[1] / x[0])
        return GridCheck(float(x[0]), False, "low", float(x[0] / ratio), ratio)
    ratio = float(x[-1] / x[-2])
    return GridCheck(float(x[-1]), False, "high", float(x[-1] * ratio), ratio)


def extension(values: Sequence[float], scores: Sequence[float],
              diverged: Sequence[bool] | None = None, *,
              limits: tuple[float, float] = (0.0, math.inf),
              higher_is_better: bool = True) -> float | None:
    """The value a tuned grid needs next, or None when its best is bracketed.

    :func:`grid_check`'s ``next_value`` rounded to 3 significant digits (so that it names a run
    folder cleanly) and clipped to the hyper-parameter's ``limits`` (CHOCO-SGD's ``γ <= 1``,
    say): an edge beyond a limit tries the limit itself, and a best value already at its limit
    needs nothing more (None).
    """
    check = grid_check(values, scores, diverged, higher_is_better=higher_is_better)
    if check.next_value is None:
        return None
    value = min(max(float(f"{check.next_value:.3g}"), limits[0]), limits[1])
    return None if value in {float(v) for v in values} else value


def bracket(values: Sequence[float], evaluate: Callable[[float], tuple[float, bool]], *,
            higher_is_better: bool = True, max_extensions: int = 4) -> pd.DataFrame:
    """Evaluate a grid and extend it by its own ratio until its best value is interior.

    The sequential form of :func:`flatlab.experiment.study.tune_bracketed` (which runs the
    values of many groups in parallel rounds); both add the values :func:`extension` names.

    Args:
        values: The initial grid (positive, geometric).
        evaluate: ``value -> (score, diverged)``; a study runs the held-out job of that value.
        higher_is_better: As :func:`grid_check`.
        max_extensions: Values added at most (the table says when the limit stopped it).

    Returns:
        One row per value in increasing order: ``value``, ``score``, ``diverged``, ``extended``
        (added beyond the initial grid), ``best``; ``DataFrame.attrs["interior"]`` and
        ``attrs["extensions"]`` record the outcome.
    """
    points = {float(v): evaluate(float(v)) for v in values}
    added: list[float] = []
    while len(added) < max_extensions:
        xs = sorted(points)
        value = extension(xs, [points[v][0] for v in xs], [points[v][1] for v in xs],
                          higher_is_better=higher_is_better)
        if value is None:
            break
        added.append(value)
        points[value] = evaluate(value)
    xs = sorted(points)
    check = grid_check(xs, [points[v][0] for v in xs], [points[v][1] for v in xs],
                       higher_is_better=higher_is_better)
    table = pd.DataFrame({"value": xs, "score": [points[v][0] for v in xs],
                          "diverged": [bool(points[v][1]) for v in xs],
                          "extended": [v in added for v in xs],
                          "best": [v == check.best for v in xs]})
    table.attrs.update(interior=check.interior, extensions=added)
    return table


def sensitivity(table: pd.DataFrame, keys: list[str], hparam: str, score: str) -> pd.DataFrame:
    """The held-out metric against a tuned value, per group of ``keys`` (a method, a setting).

    Args:
        table: One row per run: ``keys``, ``hparam``, ``score`` and ``status`` (``diverged``
            marks the divergence boundary).
        keys: Columns that define one curve.
        hparam: The tuned column.
        score: The held-out metric's column.

    Returns:
        Per group and value: ``score_mean``, ``score_se`` (over seeds), ``runs``, ``diverged``
        (runs that diverged) and ``boundary`` (the group's smallest value at which a run
        diverged; NaN when none did).
    """
    rows = []
    for k, g in table.groupby(keys, sort=False):
        key = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        div = g.loc[g["status"] == "diverged", hparam]
        boundary = float(div.min()) if len(div) else math.nan
        for v, h in g.groupby(hparam, sort=True):
            s = h.loc[h["status"] == "done", score].astype(float).dropna()
            rows.append({**key, hparam: v, "score_mean": s.mean() if len(s) else math.nan,
                         "score_se": s.std(ddof=1) / math.sqrt(len(s)) if len(s) > 1
                         else math.nan, "runs": len(h),
                         "diverged": int((h["status"] == "diverged").sum()),
                         "boundary": boundary})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Paired:
    """A seed-paired difference ``a - b``: its mean, 95% interval, standard error and seeds."""

    mean: float
    low: float
    high: float
    se: float
    n: int


def paired_difference(a: pd.Series, b: pd.Series, *, level: float = 0.95) -> Paired:
    """The mean of ``a - b`` over the seeds both have, with a Student-t interval.

    Args:
        a: A metric per seed (indexed by seed; seeds missing or NaN in either are dropped).
        b: The same metric of the method compared against, per seed.
        level: The interval's coverage.
    """
    from scipy import stats

    d = (a.astype(float) - b.astype(float)).dropna()
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n == 1:
        return Paired(mean, -math.inf, math.inf, math.nan, 1)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return Paired(mean, mean - half, mean + half, se, n)


def verdict(p: Paired, claim: str = "greater", *, margin: float = 0.0) -> str:
    """The verdict on a claim about a paired difference ``a - b``.

    ``claim="greater"``: ``a`` beats ``b`` by more than ``margin``. Supported when the whole
    interval lies above ``margin``, contradicted when it lies below it (the advantage is
    surely smaller than claimed; with ``margin = 0``: ``b`` is surely better), not separable
    otherwise. ``"less"`` mirrors it (``a`` below ``b`` by more than ``margin``).

    Raises:
        FlatlabError: An unknown claim.
    """
    if claim not in ("greater", "less"):
        raise FlatlabError(f"claim {claim!r} is unknown; accepted: greater, less")
    low, high = (p.low, p.high) if claim == "greater" else (-p.high, -p.low)
    if p.n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "not separable"
    if low > margin:
        return "supported"
    if high < margin:
        return "contradicted"
    return "not separable"


@dataclass(frozen=True)
class Claim:
    """A claim that method ``a`` beats (or trails) method ``b`` where ``where`` holds.

    Attributes:
        text: The claim in plain words, as the verdict table shows it.
        a: The value of the label column (a method) on the left of ``a - b``.
        b: The method compared against.
        claim: ``"greater"`` (``a`` better) or ``"less"`` (``a`` worse), as :func:`verdict`.
        where: Column values that select the rows (a setting); empty selects all.
        margin: As :func:`verdict`.
    """

    text: str
    a: str
    b: str
    claim: str = "greater"
    where: Mapping[str, object] = field(default_factory=dict)
    margin: float = 0.0


def judge(table: pd.DataFrame, claims: Sequence[Claim], *, label: str = "method",
          value: str = "test_accuracy", pair: str = "seed",
          converged: str | None = "converged") -> pd.DataFrame:
    """The verdict on each claim, with the seed-paired difference and its 95% interval.

    Whether the runs behind each comparison converged is reported beside it. Only runs whose
    ``status`` is ``done`` are paired (a diverged run has no accuracy to pair); a comparison
    that rests on a run not converged, or that lost runs to divergence, keeps its verdict but
    says so in ``converged`` (False) and ``note``: a verdict on runs still moving is
    provisional.

    Args:
        table: One row per run: ``label``, ``pair``, ``value``, ``status``, the ``where``
            columns, and ``converged`` (unless ``converged`` is None).
        claims: What to judge.
        label: The column naming the method.
        value: The compared metric.
        pair: The column that pairs runs (the seed: same initialization, data and minibatches).
        converged: The convergence column, or None when ``value`` is not a training curve's
            end (a difference between settings, say, judged on runs checked elsewhere).

    Returns:
        One row per claim: ``claim`` (its text), the ``where`` values, ``a``, ``b``,
        ``difference``, ``low``, ``high``, ``pairs``, ``verdict``, ``converged`` and ``note``.

    Raises:
        FlatlabError: A method with more than one run per seed where a claim selects.
    """
    rows = []
    for c in claims:
        sel = table
        for k, v in c.where.items():
            sel = sel[sel[k] == v]
        side = {name: sel[sel[label] == name] for name in (c.a, c.b)}
        for name, g in side.items():
            if g[pair].duplicated().any():
                raise FlatlabError(f"claim {c.text!r}: {name} has more than one run per {pair}; "
                                   f"select one with where={{...}}")
        ok = {k: g[g["status"] == "done"].set_index(pair)[value] for k, g in side.items()}
        p = paired_difference(ok[c.a], ok[c.b])
        runs = pd.concat([side[c.a], side[c.b]])
        done = runs[runs["status"] == "done"]
        unsettled = 0 if converged is None else int((~done[converged].astype(bool)).sum())
        failed = int((runs["status"] != "done").sum())
        settled = bool(len(runs)) and unsettled == 0 and failed == 0
        notes = ([f"{unsettled} of {len(runs)} runs not converged"] if unsettled else []) + (
            [f"{failed} of {len(runs)} runs diverged or failed"] if failed else []) + (
            [f"{p.n} paired seed(s)"] if p.n < 2 else [])
        note = "; ".join(notes)
        rows.append({"claim": c.text, **dict(c.where), "a": c.a, "b": c.b,
                     "difference": p.mean, "low": p.low, "high": p.high, "pairs": p.n,
                     "verdict": verdict(p, c.claim, margin=c.margin), "converged": settled,
                     "note": note})
    return pd.DataFrame(rows)


def change_between(table: pd.DataFrame, column: str, before: object, after: object, *,
                   keys: Sequence[str], pair: str = "seed", value: str = "test_accuracy"
                   ) -> pd.DataFrame:
    """Per method and seed, ``value`` at ``column == after`` minus at ``column == before``.

    The robustness claims of these papers are about such changes ("accuracy drops less under
    heterogeneity"); the result is judged by :func:`judge` like any metric, with
    ``converged=None`` (or its ``converged`` column, both ends converged). Rows whose run is not
    ``done`` at either end are dropped.

    Returns:
        One row per ``keys`` and ``pair``: ``value`` (the change), ``status`` (``done``) and
        ``converged``, when ``table`` has it.
    """
    done = table[table["status"] == "done"]
    cols = [value] + (["converged"] if "converged" in table else [])
    a = done[done[column] == before].set_index([*keys, pair])[cols]
    b = done[done[column] == after].set_index([*keys, pair])[cols]
    both = a.add_suffix("_before").join(b.add_suffix("_after"), how="inner")
    out = pd.DataFrame({value: both[f"{value}_after"] - both[f"{value}_before"],
                        "status": "done"}, index=both.index)
    if "converged" in table:
        out["converged"] = both["converged_before"].astype(bool) & both[
            "converged_after"].astype(bool)
    return out.reset_index()


def verdict_markdown(verdicts: pd.DataFrame, *, scale: float = 100.0, unit: str = "points"
                     ) -> str:
    """:func:`judge`'s table as Markdown.

    Columns: setting (when it has one), claim, ``a − b`` and its interval (times ``scale``, in
    ``unit``), paired seeds, and the verdict with its note (runs not converged).
    """
    setting = "setting" in verdicts
    lines = [("| setting " if setting else "") + f"| claim | a − b ({unit}) | 95% interval | "
             "seeds | verdict |", ("|---" if setting else "") + "|---|---|---|---|---|"]
    for r in verdicts.itertuples():
        interval = (f"[{scale * r.low:+.1f}, {scale * r.high:+.1f}]"
                    if math.isfinite(r.low) and math.isfinite(r.high) else "–")
        diff = f"{scale * r.difference:+.1f}" if math.isfinite(r.difference) else "–"
        word = r.verdict + (f" ({r.note})" if r.note else "")
        lines.append((f"| {r.setting} " if setting else "")
                     + f"| {r.claim} | {diff} | {interval} | {r.pairs} | {word} |")
    return "\n".join(lines) + "\n"
