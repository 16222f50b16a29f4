"""What makes a study's conclusion earned: convergence, robust tuning, four verdicts, a family.

Free functions over plain arrays and tables, so that every study applies the same rules
(:mod:`flatlab.studies` applies them all):

- :func:`convergence` (the held-out metric moved by less than a point over the last 20% of
  steps) and :func:`loss_plateau` (the smoothed training loss, what is optimized, changed by
  less than 10% there): both are reported; :func:`at_chance` flags a run that has not learned,
  apart from a run still moving.
- :func:`robust_choice` and :func:`grid_check`: a tuned value is chosen on the mean over
  seeds; values within one standard error of the best tie and the tie goes toward the grid's
  centre; a best value at an edge is extended by the grid's own ratio (:func:`extension`,
  :func:`bracket`); a diverged neighbour bounds the best as well as a worse one does.
- :func:`sensitivity`: the held-out metric against the tuned value, with the divergence
  boundary.
- :func:`paired_test`, :func:`tost`, :func:`judge` and :func:`family`: a claim is the
  seed-paired difference ``a - b`` with a margin ``m`` fixed in advance; the paired t-test of
  ``a - b = 0`` and the two one-sided tests of ``|a - b| >= m``, adjusted over the study's
  family (:func:`holm`, Shaffer-capped; :func:`benjamini_hochberg` as an option), give
  ``better``, ``worse``, ``equivalent`` (within ±m) or ``inconclusive``: an interval that
  includes zero is never "the same". A method untrainable at its grid gets ``no verdict``.
- :func:`edge_of_stability` (``η·λ_max/2``) and :func:`time_to_target_label` (``≤ first``):
  a flatness beside its step, a time at its resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from flatlab.errors import FlatlabError
from flatlab.experiment.results import read_metrics

__all__ = ["Convergence", "convergence", "run_convergence", "curves_convergence",
           "with_convergence", "loss_plateau", "curves_loss_plateau", "at_chance",
           "GridCheck", "grid_check", "next_value", "extension", "bracket", "robust_choice",
           "sensitivity", "Paired", "paired_difference", "t_interval", "verdict", "PairedTest",
           "paired_test", "tost",
           "holm", "benjamini_hochberg", "adjust", "ADJUSTMENTS", "RobustChoice", "VERDICTS",
           "Claim", "judge", "family", "change_between", "verdict_markdown", "edge_of_stability",
           "time_to_target_label"]

#: The four verdicts on a claim, and the word for a claim that gets none (:func:`family`).
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "no verdict")


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


def _curve(name: str, steps: Sequence[int], values: Sequence[float], last: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked arrays of a curve and the indices of its last ``last`` of the steps.

    Raises:
        FlatlabError: Mismatched lengths, decreasing steps, or ``last`` outside (0, 1].
    """
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if s.shape != v.shape or s.ndim != 1 or not s.size:
        raise FlatlabError(f"{name} needs equally long, non-empty steps and values; got "
                           f"{s.shape} and {v.shape}")
    if np.any(np.diff(s) <= 0):
        raise FlatlabError(f"{name} needs increasing steps")
    if not 0 < last <= 1:
        raise FlatlabError(f"last must be in (0, 1], got {last}")
    begin = s[-1] - last * (s[-1] - s[0])
    return s, v, np.flatnonzero(s >= begin - 1e-9)


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
    s, v, window = _curve("convergence", steps, values, last)
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
                     metric: str = "test_accuracy", threshold: float = 0.01) -> pd.DataFrame:
    """``table`` (one row per run) with each run's convergence check from a long curves table.

    :func:`curves_convergence` on the rows of ``curves`` whose ``metric`` column is ``metric``
    (``value`` its values), joined on ``keys``; replaces any ``converged`` and ``change`` columns
    ``table`` had. A run without a curve is ``converged = False`` with ``change`` NaN: it is never
    counted as settled. This is how a study checks committed tables without the run directories.
    """
    curve = curves[curves["metric"] == metric].rename(columns={"value": metric})
    conv = curves_convergence(curve, keys, value=metric, threshold=threshold)[
        [*keys, "converged", "change"]]
    out = table.drop(columns=["converged", "change"], errors="ignore").merge(
        conv, on=list(keys), how="left")
    out["converged"] = out["converged"].fillna(False).astype(bool)
    return out


def loss_plateau(steps: Sequence[int], losses: Sequence[float], *, last: float = 0.2,
                 threshold: float = 0.1, smooth: int = 3) -> Convergence:
    """Whether the training loss (what is optimized) has plateaued over the last ``last``.

    The loss is smoothed by a trailing mean over ``smooth`` measurements (minibatch noise and
    the measurement subset make single points jump); the relative change of the smoothed loss
    from the window's first step to the last, ``(L_end - L_start) / L_start``, must be below
    ``threshold`` in size. A loss still falling 1.5x over the window (change -0.33) is not
    converged, whatever the held-out accuracy does; a cosine schedule cannot pass this by
    construction as it passes a held-out check, because the loss keeps falling while the step
    shrinks if the run is still optimizing. A non-finite loss never plateaus.

    Args:
        steps: Measurement steps, increasing.
        losses: The training loss there (positive).
        last: The window, a fraction of the run's steps.
        threshold: The largest relative change accepted (default 10%).
        smooth: Measurements in the trailing mean (1: none).

    Returns:
        A :class:`Convergence` whose ``change`` is the relative change.

    Raises:
        FlatlabError: Mismatched lengths, decreasing steps, ``last`` outside (0, 1] or
            ``smooth < 1``.
    """
    if smooth < 1:
        raise FlatlabError(f"smooth must be >= 1, got {smooth}")
    s, v, window = _curve("loss_plateau", steps, losses, last)
    kernel = np.ones(smooth) / smooth
    smoothed = np.array([v[max(0, i - smooth + 1):i + 1].mean() if i + 1 < smooth
                         else float(np.dot(v[i - smooth + 1:i + 1], kernel))
                         for i in range(len(v))])
    first, end = int(window[0]), len(s) - 1
    start_value = smoothed[first]
    change = (float((smoothed[end] - start_value) / start_value)
              if len(window) > 1 and start_value > 0 else math.nan)
    ok = len(window) > 1 and math.isfinite(change) and abs(change) < threshold
    return Convergence(ok, change, int(s[first]), int(s[end]), threshold)


def curves_loss_plateau(curves: pd.DataFrame, keys: Sequence[str], *, metric: str = "train_loss",
                        last: float = 0.2, threshold: float = 0.1, smooth: int = 3
                        ) -> pd.DataFrame:
    """:func:`loss_plateau` of every run of a long curves table (``step, metric, value``).

    Returns:
        One row per run: ``keys``, ``loss_converged`` and ``loss_change`` (relative).
    """
    rows = []
    sel = curves[curves["metric"] == metric].dropna(subset=["value"])
    for k, g in sel.groupby(list(keys), sort=False):
        g = g.sort_values("step").drop_duplicates("step", keep="last")
        c = loss_plateau(g["step"].to_numpy(), g["value"].to_numpy(), last=last,
                         threshold=threshold, smooth=smooth)
        rows.append(dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
                    | {"loss_converged": c.converged, "loss_change": c.change})
    return pd.DataFrame(rows, columns=[*keys, "loss_converged", "loss_change"])


def at_chance(accuracy: float | Sequence[float] | pd.Series, classes: int = 10, *,
              within: float = 0.1) -> np.ndarray | bool:
    """Whether an accuracy is at chance: at most ``1/classes + within`` (default 10 points).

    A run stuck there has not learned, whether or not its curve is flat: it is flagged apart
    from a run still moving (:func:`convergence` would call a flat 9% "converged"). NaN (a
    diverged run) is not at chance; it is diverged.
    """
    a = np.asarray(accuracy, dtype=float)
    out = np.isfinite(a) & (a <= 1.0 / classes + within)
    return bool(out) if out.ndim == 0 else out


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

    The one-seed case of :func:`robust_choice` (no standard error: only exact ties tie). An edge
    value that ties an interior one counts as interior: the optimum is flat there, and extending
    would only add more of the same (a grid of equal scores is not extended).

    Raises:
        FlatlabError: Fewer than two values, non-positive values, or mismatched lengths.
    """
    x = np.asarray(values, dtype=float)
    c = robust_choice(x, scores, np.full(x.shape, math.nan), diverged,
                      higher_is_better=higher_is_better)
    edge = None if c.next_value is None else ("low" if c.next_value < x.min() else "high")
    return GridCheck(c.chosen, c.interior, edge, c.next_value, c.ratio)


def next_value(value: float | None, tried: Sequence[float], *,
               limits: tuple[float, float] = (0.0, math.inf)) -> float | None:
    """A grid's next value as a run is named: 3 significant digits, clipped to ``limits``.

    An edge beyond a limit tries the limit itself (CHOCO-SGD's ``γ <= 1``, say); a value already
    tried (a best value at its limit) needs nothing more: None, as for ``value=None``.
    """
    if value is None:
        return None
    v = min(max(float(f"{value:.3g}"), limits[0]), limits[1])
    return None if v in {float(t) for t in tried} else v


def extension(values: Sequence[float], scores: Sequence[float],
              diverged: Sequence[bool] | None = None, *,
              limits: tuple[float, float] = (0.0, math.inf),
              higher_is_better: bool = True) -> float | None:
    """The value a tuned grid needs next, or None when its best is bracketed.

    :func:`grid_check`'s ``next_value`` as :func:`next_value` rounds and clips it.
    """
    check = grid_check(values, scores, diverged, higher_is_better=higher_is_better)
    return next_value(check.next_value, values, limits=limits)


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


@dataclass(frozen=True)
class RobustChoice:
    """The value a multi-seed tuning chooses, and how.

    Attributes:
        chosen: The chosen value (NaN when no value trained on every seed).
        best: The value with the best mean (what the choice was tied with).
        ties: The values whose mean lies within one standard error of the best mean.
        interior: ``chosen`` has a grid value on each side.
        next_value: The value to add (the best sits at an edge with no interior value tied with
            it), or None.
        ratio: The grid's ratio at the edge that needs extending (or at ``chosen``).
        rule: The tie-breaking rule, as the table states it.
    """

    chosen: float
    best: float
    ties: tuple[float, ...]
    interior: bool
    next_value: float | None
    ratio: float
    rule: str = ("best mean over seeds; values within one standard error of it tie, and a tie "
                 "goes to the value nearest the grid's centre (log scale), then the higher mean")


def robust_choice(values: Sequence[float], means: Sequence[float], ses: Sequence[float],
                  diverged: Sequence[bool] | None = None, *, higher_is_better: bool = True
                  ) -> RobustChoice:
    """Choose a tuned value from its mean over seeds, so that one held-out sample cannot flip it.

    A value that diverged on any seed is out (it bounds the grid on its side). The best mean
    defines a tolerance, its standard error over seeds: every value whose mean lies within it
    ties with the best, and the tie goes toward the grid's interior (the value nearest the
    centre of the grid in log scale; then the higher mean, then the smaller value). The grid
    needs extending only when the best mean sits at an edge and no interior value ties with it.

    Args:
        values: The tuned values (positive, any order).
        means: Their mean held-out scores over seeds (NaN: failed).
        ses: The standard errors of those means (NaN with one seed: no tolerance).
        diverged: Whether any seed of each value diverged.
        higher_is_better: Accuracy (True) or a loss (False).

    Raises:
        FlatlabError: Fewer than two values, non-positive values, or mismatched lengths.
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(means, dtype=float)
    e = np.asarray(ses, dtype=float)
    bad = np.zeros(x.shape, bool) if diverged is None else np.asarray(diverged, dtype=bool)
    if x.ndim != 1 or x.size < 2 or not (y.shape == e.shape == bad.shape == x.shape):
        raise FlatlabError(f"robust_choice needs two or more values with one mean, standard "
                           f"error and divergence flag each; got {x.shape}, {y.shape}, "
                           f"{e.shape}, {bad.shape}")
    if np.any(x <= 0):
        raise FlatlabError("robust_choice needs positive values (a geometric grid)")
    order = np.argsort(x)
    x, y, e, bad = x[order], y[order], e[order], bad[order]
    ok = np.isfinite(y) & ~bad
    if not ok.any():
        return RobustChoice(math.nan, math.nan, (), False, None, float(x[1] / x[0]))
    score = np.where(ok, y if higher_is_better else -y, -np.inf)
    i_best = int(np.argmax(score))
    tol = float(e[i_best]) if math.isfinite(e[i_best]) else 0.0
    ties = np.flatnonzero(ok & (score >= score[i_best] - tol))
    logs = np.log(x)
    centre = (logs[0] + logs[-1]) / 2
    pick = int(min(ties, key=lambda i: (abs(logs[i] - centre), -score[i], x[i])))
    interior = 0 < pick < len(x) - 1
    inner_tie = any(0 < i < len(x) - 1 for i in ties)
    nxt, ratio = None, float(x[min(pick + 1, len(x) - 1)] / x[max(pick + 1, 1) - 1])
    if not inner_tie and i_best == 0:
        ratio = float(x[1] / x[0])
        nxt = float(x[0] / ratio)
    elif not inner_tie and i_best == len(x) - 1:
        ratio = float(x[-1] / x[-2])
        nxt = float(x[-1] * ratio)
    return RobustChoice(float(x[pick]), float(x[i_best]), tuple(float(x[i]) for i in ties),
                        interior, nxt, ratio)


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
    d = (a.astype(float) - b.astype(float)).dropna()
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return Paired(mean, *t_interval(mean, se, n, level), se, n)


def t_interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Student-t interval ``mean ± t_{(1+level)/2, n-1} se`` of a paired mean.

    Infinite with one seed (one seed decides nothing), NaN with none; ``[mean, mean]`` when
    every pair is equal (``se = 0``).
    """
    if n < 2:
        return (-math.inf, math.inf) if n else (math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean - half, mean + half


def verdict(p: Paired, claim: str = "greater", *, margin: float = 0.0) -> str:
    """The interval-only reading of a paired difference (kept for interval checks).

    ``claim="greater"``: ``a`` beats ``b`` by more than ``margin``. ``"better"`` when the whole
    interval lies above ``margin``, ``"worse"`` when it lies below it, ``"inconclusive"``
    otherwise (an interval that includes the margin, or fewer than two seeds: one seed decides
    nothing). ``"less"`` mirrors it. Verdicts on a study's claims come from :func:`judge`, which
    adds the equivalence test and the family-wise adjustment.

    Raises:
        FlatlabError: An unknown claim.
    """
    if claim not in ("greater", "less"):
        raise FlatlabError(f"claim {claim!r} is unknown; accepted: greater, less")
    low, high = (p.low, p.high) if claim == "greater" else (-p.high, -p.low)
    if p.n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > margin:
        return "better"
    if high < margin:
        return "worse"
    return "inconclusive"


@dataclass(frozen=True)
class PairedTest:
    """A seed-paired difference ``a - b`` with its two tests.

    Attributes:
        mean: Mean difference over the paired seeds.
        se: Its standard error (``s/√n``).
        n: Paired seeds.
        margin: The equivalence margin ``m`` (in the metric's units, > 0).
        p: Two-sided p-value of the difference test (H0: ``d = 0``; Student t, ``n - 1`` df).
        p_equivalent: p-value of the two one-sided tests (TOST; H0: ``|d| >= m``), the larger
            of the p-values of ``H0: d <= -m`` and ``H0: d >= m``.
    """

    mean: float
    se: float
    n: int
    margin: float
    p: float
    p_equivalent: float

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided Student-t interval at ``level`` (:func:`t_interval`)."""
        return t_interval(self.mean, self.se, self.n, level)


def tost(mean: float, se: float, df: int, margin: float) -> float:
    """p-value of the two one-sided tests of equivalence within ``±margin`` (Schuirmann 1987).

    ``max(P(T >= (mean + m)/se), P(T <= (mean - m)/se))`` for ``T ~ t(df)``: the larger p of the
    nulls ``d <= -m`` and ``d >= m``; rejecting both at level α (p < α) is the same as the
    ``1 - 2α`` interval lying inside ``(-m, m)``. With ``se = 0`` (every pair equal) it is 0
    when ``|mean| < m`` and 1 otherwise.

    Raises:
        FlatlabError: A margin that is not positive, or ``df < 1``.
    """
    if not margin > 0:
        raise FlatlabError(f"an equivalence margin must be positive, got {margin}")
    if df < 1:
        raise FlatlabError(f"tost needs at least one degree of freedom (two seeds), got {df}")
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    return float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))


def paired_test(a: pd.Series, b: pd.Series, margin: float) -> PairedTest:
    """:func:`paired_difference` with the difference test and the equivalence test (:func:`tost`).

    Args:
        a: A metric per seed (indexed by seed; seeds missing or NaN in either are dropped).
        b: The same metric of the method compared against.
        margin: The equivalence margin in the metric's units (> 0).

    With fewer than two paired seeds both p-values are NaN: one seed decides nothing.
    """
    if not margin > 0:
        raise FlatlabError(f"an equivalence margin must be positive, got {margin}")
    d = (a.astype(float) - b.astype(float)).dropna()
    n = len(d)
    if n < 2:
        return PairedTest(float(d.mean()) if n else math.nan, math.nan, n, margin, math.nan,
                          math.nan)
    mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedTest(mean, se, n, margin, p, tost(mean, se, n - 1, margin))


#: Family-wise adjustments :func:`adjust` knows.
ADJUSTMENTS = ("holm", "bh", "none")


def _sorted_finite(p: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p`` as floats, an all-NaN output of its shape, and its finite indices by ascending p."""
    p = np.asarray(p, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, math.nan), ok[np.argsort(p[ok], kind="stable")]


def holm(p: Sequence[float], *, max_true: int | None = None) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values, family-wise error rate controlled.

    Sort the ``M`` p-values ``p_(1) <= ... <= p_(M)``; ``p̃_(j) = min(1, max_{i<=j} c_i p_(i))``
    with ``c_i = M - i + 1``. Rejecting every ``p̃ < α`` is Holm's procedure at level α.

    ``max_true`` caps the multipliers at the largest number of nulls that can be true together
    (Shaffer 1986, method S1: ``c_i = min(M - i + 1, max_true)``). :func:`judge` tests two
    nulls per claim, ``d = 0`` and ``|d| >= m``, which exclude each other (``m > 0``), so at
    most one per claim is true: ``max_true`` is the number of claims.

    NaN p-values (a test that could not be made) stay NaN and do not count in ``M``.
    """
    p, out, order = _sorted_finite(p)
    m = len(order)
    if not m:
        return out
    c = np.arange(m, 0, -1, dtype=float)
    if max_true is not None:
        c = np.minimum(c, max(int(max_true), 1))
    out[order] = np.minimum(1.0, np.maximum.accumulate(c * p[order]))
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg (1995) step-up adjusted p-values (false discovery rate, not FWER).

    ``q_(j) = min(1, min_{i>=j} M p_(i) / i)``; NaN p-values stay NaN and do not count in ``M``.
    """
    p, out, order = _sorted_finite(p)
    m = len(order)
    if not m:
        return out
    q = m * p[order] / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(q[::-1])[::-1])
    return out


def adjust(p: Sequence[float], method: str = "holm", *, max_true: int | None = None
           ) -> np.ndarray:
    """Adjusted p-values: ``holm`` (:func:`holm`), ``bh`` (:func:`benjamini_hochberg`), ``none``.

    Raises:
        FlatlabError: An unknown method.
    """
    if method == "holm":
        return holm(p, max_true=max_true)
    if method == "bh":
        return benjamini_hochberg(p)
    if method == "none":
        return np.asarray(p, dtype=float).copy()
    raise FlatlabError(f"adjustment {method!r} is unknown; accepted: {', '.join(ADJUSTMENTS)}")


@dataclass(frozen=True)
class Claim:
    """A claim about method ``a`` against method ``b`` where ``where`` holds.

    Every claim is judged two ways on the seed-paired difference ``d = a - b``: is ``a``
    better or worse (H0: ``d = 0``), and is it equivalent within ``±margin`` (TOST, H0:
    ``|d| >= margin``). The margin is part of the claim, fixed before the data are seen.

    Attributes:
        text: The claim in plain words, as the verdict table shows it.
        a: The value of the label column (a method) on the left of ``a - b``.
        b: The method compared against.
        claim: The direction in which ``a`` is better: ``"greater"`` (a higher value is better,
            accuracy) or ``"less"`` (a lower one, λ_max or steps to a target).
        where: Column values that select the rows (a setting); empty selects all.
        margin: The equivalence margin, in the metric's units, or, with ``relative``, as a
            fraction of ``|mean of b|`` over the paired seeds.
        relative: Whether ``margin`` is a fraction of the reference ``b``'s mean.
        why: Why this margin (shown in the study's specification and report).
        value: The compared metric's column (None: :func:`judge`'s ``value``).
        against: Another column of ``b``'s runs to compare ``value`` with (None: ``value``).
            With ``b = a`` the claim is about one method, paired within each run: its measured
            gap against its second-order prediction, a share against its chance level
            (``d = a[value] − a[against]``).
    """

    text: str
    a: str
    b: str
    claim: str = "greater"
    where: Mapping[str, object] = field(default_factory=dict)
    margin: float = 0.01
    relative: bool = False
    why: str = ""
    value: str | None = None
    against: str | None = None

    def __post_init__(self) -> None:
        if self.claim not in ("greater", "less"):
            raise FlatlabError(f"claim {self.text!r}: direction {self.claim!r} is unknown; "
                               f"accepted: greater, less")
        if not (isinstance(self.margin, int | float) and math.isfinite(self.margin)
                and self.margin > 0):
            raise FlatlabError(f"claim {self.text!r}: the equivalence margin must be a positive "
                               f"number, got {self.margin!r}")


def judge(table: pd.DataFrame, claims: Sequence[Claim], *, label: str = "method",
          value: str = "test_accuracy", pair: str = "seed",
          converged: str | Sequence[str] | None = "converged", alpha: float = 0.05,
          adjustment: str = "holm") -> pd.DataFrame:
    """The verdict on each claim: better, worse, equivalent within ±m, or inconclusive.

    Each claim's seed-paired difference gets the difference test and the equivalence test
    (:func:`paired_test`); the p-values are adjusted over the claims given (:func:`family`,
    Holm by default; a study that judges in several calls adjusts the concatenation once more
    with :func:`family`, over its whole family). Only runs whose ``status`` is ``done`` are
    paired. A claim involving a method *untrainable at this grid* (a run that diverged, or
    ``table["untrainable"]`` true for one of its runs: its best tuned value at chance) gets
    ``no verdict`` and is left out of the family. A comparison resting on a run not converged
    keeps its verdict and says so in ``converged`` (False) and ``note``: it is provisional.

    Args:
        table: One row per run: ``label``, ``pair``, ``value``, ``status``, the ``where``
            columns, the ``converged`` column(s), and optionally ``untrainable``.
        claims: What to judge.
        label: The column naming the method.
        value: The compared metric (a claim's own ``value`` overrides it).
        pair: The column that pairs runs (the seed: same initialization, data and minibatches).
        converged: The convergence column(s) (a run is settled when all are true), or None when
            ``value`` is not a training curve's end.
        alpha: The family-wise level.
        adjustment: As :func:`adjust`.

    Returns:
        One row per claim: ``claim``, the ``where`` values, ``metric``, ``a``, ``b``,
        ``difference``, ``low``, ``high`` (95% interval), ``pairs``, ``margin`` (absolute),
        ``p``, ``p_equivalent`` (raw), and from :func:`family`: ``p_adj``,
        ``p_equivalent_adj``, ``low_adj``, ``high_adj``, ``adjustment``, ``verdict``; then
        ``converged`` and ``note``.

    Raises:
        FlatlabError: A method with more than one run per seed where a claim selects.
    """
    settled_by = [] if converged is None else (
        [converged] if isinstance(converged, str) else list(converged))
    rows = []
    for c in claims:
        col = c.value or value
        sel = table
        for k, v in c.where.items():
            sel = sel[sel[k] == v]
        side = {name: sel[sel[label] == name] for name in (c.a, c.b)}
        for name, g in side.items():
            if g[pair].duplicated().any():
                raise FlatlabError(f"claim {c.text!r}: {name} has more than one run per {pair}; "
                                   f"select one with where={{...}}")
        done_a, done_b = (side[k][side[k]["status"] == "done"].set_index(pair) for k in (c.a, c.b))
        # a column no run has (no final runs at all: every method untrainable) pairs nothing
        ok_a, ok_b = (d[k] if k in d else pd.Series(dtype=float)
                      for d, k in ((done_a, col), (done_b, c.against or col)))
        both = ok_a.index.intersection(ok_b.index)
        scale = abs(float(ok_b.loc[both].astype(float).mean())) if c.relative else 1.0
        margin = c.margin * scale if math.isfinite(scale) and scale > 0 else c.margin
        t = paired_test(ok_a, ok_b, margin)
        low, high = t.interval(0.95)
        runs = pd.concat([side[c.a], side[c.b]]) if c.a != c.b else side[c.a]
        done = runs[runs["status"] == "done"]
        unsettled = int((~done[settled_by].astype(bool).all(axis=1)).sum()) if settled_by else 0
        failed = runs[runs["status"] != "done"]
        untrainable = sorted(set(failed[label]) | (
            set(runs.loc[runs["untrainable"].astype(bool), label])
            if "untrainable" in runs else set()))
        notes = ([f"{unsettled} of {len(runs)} runs not converged"] if unsettled else []) + (
            [f"{len(failed)} of {len(runs)} runs diverged or failed"] if len(failed) else []) + (
            [f"untrainable at this grid: {', '.join(untrainable)}"] if untrainable else []) + (
            [f"{t.n} paired seed(s)"] if t.n < 2 else [])
        metric = col if c.against is None else f"{col} − {c.against}"
        rows.append({"claim": c.text, **dict(c.where), "metric": metric, "a": c.a, "b": c.b,
                     "direction": c.claim, "difference": t.mean, "low": low, "high": high,
                     "se": t.se, "pairs": t.n, "margin": margin,
                     "p": math.nan if untrainable else t.p,
                     "p_equivalent": math.nan if untrainable else t.p_equivalent,
                     "untrainable": bool(untrainable),
                     "converged": bool(len(runs)) and unsettled == 0 and not len(failed),
                     "note": "; ".join(notes)})
    return family(pd.DataFrame(rows), alpha=alpha, adjustment=adjustment)


def family(verdicts: pd.DataFrame, *, alpha: float = 0.05, adjustment: str = "holm"
           ) -> pd.DataFrame:
    """Decide a study's whole family of claims from their raw tests (:func:`judge`'s rows).

    The ``2k`` p-values of ``k`` testable claims (difference and equivalence) are adjusted
    together by ``adjustment`` (:func:`adjust`; Holm with ``max_true = k``, since each claim's
    two nulls exclude each other). Then, per claim, from the adjusted p-values at ``alpha``:

    - ``better`` / ``worse``: the difference test rejects ``d = 0`` and ``d`` lies on the
      claim's side (``direction``) or the other;
    - ``equivalent``: it does not, and the equivalence test rejects ``|d| >= margin``;
    - ``inconclusive``: neither (an interval that includes zero and reaches past the margin);
    - ``no verdict``: a method untrainable at this grid, or fewer than two paired seeds.

    A difference that is significant *and* inside the margin is ``better``/``worse`` with the
    note ``smaller than the margin``; an ``inconclusive`` claim whose raw test rejected says
    ``different before adjustment`` or ``equivalent before adjustment`` with the raw p-value, so
    that the cost of the family's size is visible. The adjusted interval is the Student-t
    interval at level ``1 - α·p/p_adj``: it excludes zero exactly when the adjusted test
    rejects.

    Returns:
        ``verdicts`` with ``p_adj``, ``p_equivalent_adj``, ``low_adj``, ``high_adj``,
        ``adjustment`` and ``verdict`` (re)computed.
    """
    out = verdicts.copy()
    if out.empty:
        return out.assign(p_adj=[], p_equivalent_adj=[], low_adj=[], high_adj=[],
                          adjustment=[], verdict=[])
    p = np.r_[out["p"].to_numpy(float), out["p_equivalent"].to_numpy(float)]
    k = int(np.isfinite(out["p"].to_numpy(float)).sum())
    adj = adjust(p, adjustment, max_true=k if adjustment == "holm" else None)
    out["p_adj"], out["p_equivalent_adj"] = adj[:len(out)], adj[len(out):]
    low, high, words, notes = [], [], [], []
    for r in out.itertuples():
        lo = hi = math.nan
        if r.pairs >= 2 and math.isfinite(r.p_adj):
            level = 1 - alpha * (r.p / r.p_adj if r.p_adj > 0 else 1.0)
            lo, hi = t_interval(r.difference, r.se, r.pairs, level)
        low.append(lo)
        high.append(hi)
        note = "" if (isinstance(r.note, float) or r.note is None) else str(r.note)
        # the notes this function writes are recomputed (a family re-decided from its raw tests)
        note = "; ".join(n for n in note.split("; ") if n and n != "smaller than the margin"
                         and "before adjustment" not in n)
        if r.untrainable or r.pairs < 2 or not math.isfinite(r.p_adj):
            words.append("no verdict")
        elif r.p_adj < alpha:
            ahead = r.difference > 0 if r.direction == "greater" else r.difference < 0
            words.append("better" if ahead else "worse")
            if r.p_equivalent_adj < alpha:
                note = "; ".join(filter(None, [note, "smaller than the margin"]))
        elif r.p_equivalent_adj < alpha:
            words.append("equivalent")
        else:
            words.append("inconclusive")
            before = ([f"different before adjustment (p = {r.p:.3f})"] if r.p < alpha else []) + (
                [f"equivalent before adjustment (TOST p = {r.p_equivalent:.3f})"]
                if r.p_equivalent < alpha else [])
            note = "; ".join(filter(None, [note, *before]))
        notes.append(note)
    out["low_adj"], out["high_adj"] = low, high
    out["adjustment"] = adjustment
    out["verdict"], out["note"] = words, notes
    return out


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


def verdict_markdown(verdicts: pd.DataFrame, *, scale: float = 100.0, unit: str = "points",
                     digits: int = 1) -> str:
    """:func:`judge`'s (or :func:`family`'s) table as Markdown.

    Columns: setting (when it has one), claim, ``a − b`` with its raw 95% interval and its
    family-adjusted interval (times ``scale``, in ``unit``), the equivalence margin, the raw and
    adjusted p-values of the difference and equivalence tests, paired seeds, and the verdict
    with its note. ``equivalent`` is written ``equivalent within ±m``.
    """
    def num(x: float) -> str:
        return f"{scale * x:+.{digits}f}" if math.isfinite(x) else "–"

    def pv(x: float) -> str:
        return "–" if not math.isfinite(x) else ("<0.001" if x < 1e-3 else f"{x:.3f}")

    setting = "setting" in verdicts
    adjustment = (str(verdicts["adjustment"].iloc[0]) if "adjustment" in verdicts
                  and len(verdicts) else "holm")
    lines = [("| setting " if setting else "") + f"| claim | a − b ({unit}) | 95% interval | "
             f"adjusted ({adjustment}) | margin ±m | p diff. (adj.) | p equiv. (adj.) | seeds "
             "| verdict |", ("|---" if setting else "") + "|---|---|---|---|---|---|---|---|---|"]
    for r in verdicts.itertuples():
        m = f"{scale * r.margin:.{digits}f}" if math.isfinite(r.margin) else "–"
        word = f"equivalent within ±{m}" if r.verdict == "equivalent" else r.verdict
        note = "" if not isinstance(r.note, str) else r.note
        lines.append((f"| {r.setting} " if setting else "")
                     + f"| {r.claim} | {num(r.difference)} | [{num(r.low)}, {num(r.high)}] | "
                     f"[{num(r.low_adj)}, {num(r.high_adj)}] | {m} | {pv(r.p)} ({pv(r.p_adj)}) "
                     f"| {pv(r.p_equivalent)} ({pv(r.p_equivalent_adj)}) | {r.pairs} | "
                     f"{word}{f' ({note})' if note else ''} |")
    return "\n".join(lines) + "\n"


def edge_of_stability(lr: float | np.ndarray | pd.Series, hessian_top: float | np.ndarray
                      | pd.Series) -> float | np.ndarray | pd.Series:
    """``η·λ_max/2``: where a curvature measurement sits against the edge of stability.

    Gradient descent on a quadratic is stable along the top direction only while
    ``λ_max < 2/η``; at ``η·λ_max/2 = 1`` the iterate sits on the edge (Cohen et al. 2021).
    λ_max at the end of training tracks ``2/η`` more than it tracks the method, so every λ_max a
    table reports is shown beside this ratio, with ``η`` the step *at the step it was measured*
    (under a schedule, the scheduled value there).
    """
    return lr * hessian_top / 2


def time_to_target_label(steps: float, first: float) -> str:
    """A time-to-target as a table shows it: ``≤ first`` when it equals the first measurement.

    The target was reached somewhere between step 0 and the first measurement point; the
    number is the measurement's resolution, not a result. NaN (never reached) is ``–``.
    """
    if not math.isfinite(steps):
        return "–"
    return f"≤ {first:g}" if steps <= first else f"{steps:g}"
