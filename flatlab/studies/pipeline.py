"""One pipeline for every study: tune → final → convergence → verdicts → tables → report.

Each step is a free function of the :class:`~flatlab.studies.spec.Study` and its
:class:`~flatlab.studies.spec.Scale`, and every rule it applies is
:mod:`flatlab.experiment.evidence`'s:

1. :func:`tune`: each :class:`~flatlab.studies.spec.Stage` in order, every grid value on
   ``Scale.tune_seeds`` with ``Study.holdout`` of the training set held out, chosen on the mean
   over seeds with ties within one standard error broken toward the grid's centre, the grid
   extended until the choice is interior (:func:`flatlab.experiment.study.tune_bracketed`). A
   method whose chosen value is at chance, or that trained at no value, is *untrainable at this
   grid*: it gets no final runs and no verdict.
2. :func:`final`: the chosen values on the full training set with every seed, resumable
   (:func:`flatlab.experiment.run_many`); one row per run and the curves of ``Study.curves``.
3. :func:`check`: two convergence criteria per run, both reported: the held-out accuracy moved
   by less than a point over the last 20% of steps (``converged``), and the smoothed training
   loss changed by less than 10% there (``loss_converged``, on what is optimized); a run within
   10 points of chance is flagged ``at_chance`` apart from a run still moving; a method that
   diverged on any final seed is untrainable at this grid.
4. :func:`judge_claims`: every claim gets ``better``, ``worse``, ``equivalent`` within its
   stated margin (TOST) or ``inconclusive``, after Holm's adjustment over the study's whole
   family (:func:`flatlab.experiment.evidence.judge`, :func:`~flatlab.experiment.evidence.family`).
5. :func:`summarize`, :func:`report` and :func:`results_text`: the tables, ``summary.md`` and
   ``results.md`` (the Results prose, generated from the tables so that it cannot go stale).

:func:`main` is the command line every study shares (``--scale``, ``--out``, ``--fig``,
``--jobs``, ``--report`` from the runs on disk, ``--rejudge`` from the committed tables alone,
``--retune`` to re-run only the tuning and keep the committed final runs where no choice moved).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError, OneLineParser
from flatlab.experiment.evidence import (
    Claim,
    RobustChoice,
    at_chance,
    curves_loss_plateau,
    edge_of_stability,
    family,
    judge,
    verdict_markdown,
    with_convergence,
)
from flatlab.experiment.io import read_table
from flatlab.experiment.many import on_slurm, run_many
from flatlab.experiment.results import read_metrics
from flatlab.experiment.slurm import check_slurm, resources_from
from flatlab.experiment.study import final_values, mean_and_se, tune_bracketed
from flatlab.slurm_options import add_arguments
from flatlab.studies.estimate import estimate, estimate_text
from flatlab.studies.figures import save_figure
from flatlab.studies.spec import Scale, Study

__all__ = ["tune", "final", "run_curves", "check", "judge_claims", "summarize", "report",
           "results_text", "run_study", "rejudge", "retune", "moved_choices", "main", "TABLES",
           "LOSS_THRESHOLD", "ACCURACY_THRESHOLD"]

#: The held-out criterion: accuracy moved by less than this over the last 20% of steps.
ACCURACY_THRESHOLD = 0.01
#: The training-loss criterion: the smoothed loss changed by less than this share there.
LOSS_THRESHOLD = 0.1
#: Tables every study writes (more come from its phases).
TABLES = ("tuning", "runs", "curves", "summary", "verdicts")


def _key(setting: Mapping[str, Any], method: str) -> tuple:
    return (*setting.values(), method)


def tune(study: Study, scale: Scale, runs: Path, workers: int
         ) -> tuple[pd.DataFrame, dict[tuple, dict[str, float]], set[tuple]]:
    """Every tuning stage of the study, in order (:func:`tune_bracketed` per stage).

    Returns:
        The tuning table (one row per stage, setting, method and value, with ``stage`` naming
        the hyper-parameter and ``value`` its value), the choices per ``(*setting, method)``
        and the keys untrainable at this grid.
    """
    chosen: dict[tuple, dict[str, float]] = {
        _key(s, m): {} for s in scale.settings for m in scale.methods if study.runs(s, m, scale)}
    untrainable: set[tuple] = set()
    tables = []
    for stage in study.stages:
        points, rest = [], []
        for s in scale.settings:
            for m in scale.methods:
                k = _key(s, m)
                if k in untrainable or k not in chosen:
                    continue
                base = {**s, "method": m, **chosen[k]}
                values = tuple(stage.grid(base, scale))
                if values:
                    points += [{**base, stage.hparam: float(v)} for v in values]
                else:
                    rest.append((s, m, base))
        if points:
            tables.append(_tune_stage(study, scale, stage, points, runs, workers, chosen,
                                      untrainable))
        if stage.fixed is None:
            continue
        for s, m, base in rest:  # after the stage: a value shared with a tuned method is known
            v = stage.fixed(base, {mm: chosen[_key(s, mm)].get(stage.hparam, math.nan)
                                   for mm in scale.methods if _key(s, mm) in chosen})
            if v is None:
                continue
            if not math.isfinite(float(v)):
                untrainable.add(_key(s, m))  # the method it takes its value from has none
                continue
            chosen[_key(s, m)][stage.hparam] = float(v)
    table = (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["stage", "value", *study.setting_keys(scale), "method", "status",
                 "holdout_accuracy", "holdout_se", "holdout_seeds", "diverged_seeds",
                 "extended", "tied", "chosen", "interior", "at_limit", "extensions",
                 "untrainable"]))  # nothing tuned: the table's header, so it reads back
    return table, chosen, untrainable


def _tune_stage(study: Study, scale: Scale, stage: Any, points: list[dict[str, Any]],
                runs: Path, workers: int, chosen: dict[tuple, dict[str, float]],
                untrainable: set[tuple]) -> pd.DataFrame:
    """One stage's :func:`tune_bracketed`; records its choices and untrainable groups."""
    keys = study.setting_keys(scale)
    group = [*keys, "method"]
    earlier = {tuple(p[c] for c in group): {
        h: p[h] for h in p if h not in keys and h not in ("method", stage.hparam)}
        for p in points}

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        seed = int(p["seed"])
        point = {**{k: v for k, v in p.items() if k != "seed"},
                 **earlier[tuple(p[c] for c in group)]}
        return (runs / "tune" / study.folder(point, seed),
                study.config(point, scale, seed, study.holdout))

    t = tune_bracketed([{k: p[k] for k in [*group, stage.hparam]} for p in points], job,
                       workers, group, stage.hparam,
                       max_extensions=int(scale.options.get("extensions", stage.extensions)),
                       limits=stage.limits, seeds=scale.tune_seeds, classes=study.classes)
    for _, row in t[t["chosen"]].iterrows():
        chosen[tuple(row[c] for c in group)][stage.hparam] = float(row[stage.hparam])
    for key, g in t.groupby(group, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if g["untrainable"].any() or not g["chosen"].any():
            untrainable.add(key)
    t.attrs.clear()  # per-seed rows are in the run folders; concat cannot compare frames there
    return t.rename(columns={stage.hparam: "value"}).assign(stage=stage.hparam)


def run_curves(path: Path, metrics: Sequence[str], *, lr: bool = True) -> pd.DataFrame:
    """A run's curves ``step, metric, value`` of ``metrics`` (and of ``lr``, the step there).

    Each metric at the averaged model x̄ where it has that scope, else the network's, else the
    mean over nodes; a step recorded twice (a resumed run) counts once. Empty without metrics.
    """
    m = read_metrics(path)
    if m.empty:
        return pd.DataFrame(columns=["step", "metric", "value"])
    rows = []
    for metric in (*metrics, *(("lr",) if lr else ())):
        sel = m[m["metric"] == metric]
        for scope in ("avg", "network", "mean"):
            if (sel["scope"] == scope).any():
                rows.append(sel[sel["scope"] == scope][["step", "metric", "value"]])
                break
    return (pd.concat(rows).sort_values(["metric", "step"]).drop_duplicates(["metric", "step"],
                                                                           keep="last")
            if rows else pd.DataFrame(columns=["step", "metric", "value"]))


def final(study: Study, scale: Scale, runs: Path, workers: int,
          chosen: Mapping[tuple, Mapping[str, float]], untrainable: set[tuple]
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen values with every seed on the full training set.

    Returns:
        The runs table (one row per run: setting, ``setting`` label, method, chosen values,
        seed, status, ``measures``, ``extra``, ``untrainable``) and the long curves table.
    """
    keys = study.setting_keys(scale)
    points, skipped = [], []
    for s in scale.settings:
        for m in scale.methods:
            k = _key(s, m)
            if not study.runs(s, m, scale):
                continue
            if k in untrainable:
                print(f"{m} at {study.label(s)}: untrainable at this grid, no final runs",
                      flush=True)
                skipped += [{**s, "setting": study.label(s), "method": m, **chosen.get(k, {}),
                             "seed": seed, "status": "untrainable"} for seed in scale.seeds]
                continue
            points += [({**s, "method": m, **chosen.get(k, {})}, seed) for seed in scale.seeds]
    jobs = [(runs / "final" / study.folder(p, seed), study.config(p, scale, seed, 0.0))
            for p, seed in points]
    run_many(jobs, workers)
    rows, curves = [], []
    for (p, seed), (path, _) in zip(points, jobs, strict=True):
        r = final_values(path, dict(study.measures))
        extra = study.extra(Path(path), p, scale) if study.extra else {}
        rows.append({**{k: p[k] for k in keys}, "setting": study.label({k: p[k] for k in keys}),
                     **{k: v for k, v in p.items() if k not in keys}, "seed": seed, **r,
                     **extra})
        c = run_curves(Path(path), study.curves)
        curves.append(c.assign(**{k: p[k] for k in [*keys, "method"]}, seed=seed))
    table = pd.DataFrame(rows + skipped)
    curve = (pd.concat(curves, ignore_index=True) if curves
             else pd.DataFrame(columns=["step", "metric", "value", *keys, "method", "seed"]))
    return table, curve


def check(study: Study, table: pd.DataFrame, curves: pd.DataFrame, run_keys: Sequence[str]
          ) -> pd.DataFrame:
    """Both convergence criteria, the chance flag and untrainability, per run.

    ``converged``/``change``: the held-out accuracy of x̄ over the last 20% of steps
    (:func:`~flatlab.experiment.evidence.with_convergence`, threshold one point);
    ``loss_converged``/``loss_change``: the smoothed training loss there
    (:func:`~flatlab.experiment.evidence.curves_loss_plateau`, relative change below 10%);
    each is recomputed from ``curves`` when they hold its metric, else a column ``table``
    already has is kept (committed tables whose curves were not kept), else it is False;
    ``at_chance``: the final accuracy within 10 points of chance; ``untrainable``: the method
    diverged on some final seed in its setting, or was untrainable in tuning (status
    ``untrainable``: no final runs). A run without a
    curve is never counted as settled.
    """
    keys = list(run_keys)
    metrics = set(curves["metric"]) if len(curves) and "metric" in curves else set()
    out = table
    if "test_accuracy" in metrics:
        out = with_convergence(out, curves, keys, threshold=ACCURACY_THRESHOLD)
    if "train_loss" in metrics:
        loss = curves_loss_plateau(curves, keys, threshold=LOSS_THRESHOLD)
        out = out.drop(columns=["loss_converged", "loss_change"], errors="ignore").merge(
            loss, on=keys, how="left")
    for col in ("converged", "loss_converged"):
        out[col] = out[col].astype("boolean").fillna(False).astype(bool) if col in out else False
    for col in ("change", "loss_change"):
        if col not in out:
            out[col] = math.nan
    known = out.pop("untrainable").astype(bool) if "untrainable" in out else False
    out = out.drop(columns=["at_chance"], errors="ignore")
    accuracy = out["test_accuracy"] if "test_accuracy" in out else pd.Series(
        math.nan, index=out.index)
    out["at_chance"] = at_chance(accuracy.to_numpy(float), study.classes)
    method = [k for k in keys if k != "seed"]
    diverged = out.groupby(method, sort=False)["status"].transform(
        lambda s: bool((s != "done").any()))
    out["untrainable"] = diverged.astype(bool) | known
    order = [c for c in out if c not in ("converged", "change", "loss_converged",
                                          "loss_change", "at_chance", "untrainable")]
    return out[[*order, "converged", "change", "loss_converged", "loss_change", "at_chance",
                "untrainable"]]


def _claims(study: Study, scale: Scale) -> list[tuple[str, Claim]]:
    return [c if isinstance(c, tuple) else ("runs", c) for c in study.claims(scale)]


def judge_claims(study: Study, scale: Scale, tables: Mapping[str, pd.DataFrame], *,
                 adjustment: str = "holm", alpha: float = 0.05) -> pd.DataFrame:
    """Every claim of the study judged on its table, then decided over the whole family.

    A claim on the runs table counts runs not settled by either criterion in its note (by
    the held-out one alone when no run has a training-loss curve: committed tables whose curves
    were not kept); a claim on a derived table (a change between settings) takes that table's
    ``converged``.
    """
    rows = []
    loss_known = "loss_change" in tables["runs"] and tables["runs"]["loss_change"].notna().any()
    for name, c in _claims(study, scale):
        t = tables[name]
        converged = ((["converged", "loss_converged"] if loss_known else ["converged"])
                     if name == "runs" else (["converged"] if "converged" in t else None))
        got = judge(t, [c], converged=converged, adjustment="none")
        setting = {k: v for k, v in c.where.items()}
        got.insert(1, "setting", study.label(setting) if setting else "")
        got.insert(2, "table", name)
        rows.append(got.drop(columns=[k for k in c.where if k in got]))
    if not rows:
        return pd.DataFrame()
    return family(pd.concat(rows, ignore_index=True), alpha=alpha, adjustment=adjustment)


def summarize(study: Study, scale: Scale, table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per setting and method, with both convergence counts.

    Columns beyond :func:`~flatlab.experiment.study.mean_and_se`'s: ``loss_converged``,
    ``at_chance``, ``untrainable``, the chosen hyper-parameters, and, when the study measures
    λ_max (``hessian_top``) and says its step (``Study.step_size``), ``edge`` =
    ``η·λ_max/2`` of the mean.
    """
    keys = [*study.setting_keys(scale), "setting", "method"]
    cols = [c for c in study.summary_columns if c in table]
    s = mean_and_se(table, keys, cols)
    g = table.groupby(keys, sort=False)
    s["loss_converged"] = g["loss_converged"].sum().to_numpy().astype(int)
    s["at_chance"] = g["at_chance"].sum().to_numpy().astype(int)
    s["untrainable"] = g["untrainable"].any().to_numpy()
    hparams = [st.hparam for st in study.stages if st.hparam in table]
    for h in hparams:
        s[h] = g[h].first().to_numpy()
    if study.step_size is not None and "hessian_top_mean" in s:
        s["edge"] = [edge_of_stability(study.step_size(r._asdict(), scale), r.hessian_top_mean)
                     for r in s.itertuples(index=False)]
    return s


def _pm(m: float, se: float, scale: float = 1.0, fmt: str = ".1f") -> str:
    if not math.isfinite(m):
        return "–"
    if math.isfinite(se) and abs(se) <= 1e-9 * max(abs(m), 1e-300):
        se = 0.0  # a constant column's rounding noise is no spread
    return f"{scale * m:{fmt}}" + (f" ± {scale * se:{fmt}}" if math.isfinite(se) else "")


def _unit(metric: str, study: Study | None = None) -> tuple[float, str, int]:
    """How a metric's differences are shown: (scale, unit, digits); ``Study.units`` first."""
    if study is not None and metric in study.units:
        return study.units[metric]
    if "accuracy" in metric:
        return 100.0, "points", 1
    if metric.startswith("steps"):
        return 1.0, "steps", 0
    return 1.0, metric, 2


def report(study: Study, scale: Scale, tables: Mapping[str, pd.DataFrame]) -> str:
    """``summary.md``: the protocol, summary, tuning and verdicts of a study.

    The summary shows both convergence criteria, the tuning its grid checks and tie rule, the
    verdicts per metric their raw and adjusted tests.
    """
    summary, tuning, verdicts = tables["summary"], tables.get("tuning"), tables["verdicts"]
    lines = [f"# {study.name} ({len(scale.seeds)} seeds, {scale.steps} steps)", "",
             study.question, ""]
    if study.protocol:
        lines += [study.protocol.strip(), ""]
    lines += [f"Converged: the held-out accuracy of x̄ moved by less than "
              f"{100 * ACCURACY_THRESHOLD:g} point over the last 20% of steps (acc.), and the "
              f"smoothed training loss by less than {100 * LOSS_THRESHOLD:g}% there (loss). "
              "At chance: final accuracy within 10 points of 1/classes.", ""]
    cols = [c for c in study.summary_columns if f"{c}_mean" in summary]
    hparams = [st.hparam for st in study.stages if st.hparam in summary]
    edge = "edge" in summary
    head = (["setting", "method", *hparams] + [c.replace("_", " ") for c in cols]
            + (["η·λ_max/2"] if edge else []) + ["converged (acc. / loss)", "at chance", "seeds"])
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in summary.itertuples(index=False):
        d = r._asdict()
        vals = [str(d["setting"]), str(d["method"])]
        vals += [f"{d[h]:g}" if isinstance(d[h], float) and math.isfinite(d[h]) else "–"
                 for h in hparams]
        for c in cols:
            sc, _, _ = _unit(c)
            vals.append(_pm(d[f"{c}_mean"], d[f"{c}_se"], sc, ".1f" if sc == 100 else ".3g"))
        if edge:
            vals.append(f"{d['edge']:.2f}" if math.isfinite(d["edge"]) else "–")
        total = d["seeds"] + d["diverged"]
        vals += [f"{d.get('converged', 0)} / {d['loss_converged']} of {total}",
                 str(d["at_chance"]),
                 str(d["seeds"]) + (f" ({d['diverged']} diverged)" if d["diverged"] else "")
                 + (" — untrainable at this grid" if d["untrainable"] else "")]
        lines.append("| " + " | ".join(vals) + " |")
    if tuning is not None and len(tuning):
        seeds = int(tuning["holdout_seeds"].max()) if "holdout_seeds" in tuning else 1
        lines += ["", f"Tuning ({seeds} seed(s), {100 * study.holdout:g}% of the training set "
                  f"held out): {RobustChoice.rule}. Marks: * added beyond the initial grid, "
                  "† diverged on some seed, = tied with the best.", "",
                  "| stage | setting | method | grid | chosen | held-out acc. (%) | interior "
                  "| untrainable |", "|---|---|---|---|---|---|---|---|"]
        keys = [c for c in study.setting_keys(scale) if c in tuning]
        for key, g in tuning.groupby(["stage", *keys, "method"], sort=False):
            setting = dict(zip(keys, key[1:-1], strict=True))
            pick = g[g["chosen"]]
            vals = ", ".join(
                f"{v:g}{'*' if e else ''}{'†' if st == 'diverged' else ''}"
                f"{'=' if bool(t) else ''}" for v, e, st, t in zip(
                    g["value"], g["extended"], g["status"],
                    g["tied"] if "tied" in g else [False] * len(g), strict=True))
            acc = ("–" if pick.empty else _pm(pick["holdout_accuracy"].iloc[0],
                                               pick["holdout_se"].iloc[0]
                                               if "holdout_se" in pick else math.nan, 100))
            value = "–" if pick.empty else f"{pick['value'].iloc[0]:g}"
            lines.append(f"| {key[0]} | {study.label(setting)} | {key[-1]} | {vals} | "
                         f"{value} | {acc} | "
                         f"{'yes' if g['interior'].iloc[0] else 'no'} | "
                         f"{'yes' if g['untrainable'].iloc[0] else ''} |")
    if len(verdicts):
        adjustment = verdicts["adjustment"].iloc[0]
        lines += ["", f"Verdicts: a − b paired by seed; 95% t interval, and the interval "
                  f"adjusted over the study's family of {len(verdicts)} claims ({adjustment}); "
                  "better/worse when the adjusted difference test rejects, equivalent when "
                  "the adjusted TOST rejects |a − b| ≥ m, else inconclusive. Margins are the "
                  "study's specification, fixed before the runs.", ""]
        for metric, v in verdicts.groupby("metric", sort=False):
            sc, unit, digits = _unit(str(metric), study)
            lines += [f"**{metric}**", "", verdict_markdown(v, scale=sc, unit=unit,
                                                            digits=digits)]
    if study.appendix is not None:
        lines += ["", study.appendix(dict(tables), scale).strip()]
    return "\n".join(lines).rstrip() + "\n"


def results_text(study: Study, tables: Mapping[str, pd.DataFrame]) -> str:
    """The Results prose of a study, generated from its tables (``results.md``).

    Counts of runs settled by each criterion, and each verdict class with its claims and
    adjusted intervals, so that a study page quoting it cannot drift from the tables.
    """
    runs, verdicts = tables["runs"], tables["verdicts"]
    n = len(runs)
    done = int((runs["status"] == "done").sum())
    acc = int(runs["converged"].sum())
    loss = int(runs["loss_converged"].sum())
    both = int((runs["converged"] & runs["loss_converged"]).sum())
    chance = int(runs["at_chance"].sum())
    if "loss_change" in runs and runs["loss_change"].notna().any():
        settled = (f"{acc} settled by the held-out criterion, {loss} by the training-loss "
                   f"criterion, {both} by both")
    else:
        settled = (f"{acc} settled by the held-out criterion (the training-loss criterion cannot "
                   "be judged: no training-loss curves were kept)")
    lines = [f"{n} final runs, {done} finished; {settled}; {chance} at chance."]
    if len(verdicts):
        counts = verdicts["verdict"].value_counts()
        order = ("better", "worse", "equivalent", "inconclusive", "no verdict")
        lines.append(f"{len(verdicts)} claims ({verdicts['adjustment'].iloc[0]} over the "
                     "family): " + ", ".join(f"{int(counts.get(w, 0))} {w}" for w in order) + ".")
        for word in order:
            v = verdicts[verdicts["verdict"] == word]
            if v.empty:
                continue
            lines += ["", f"**{word.capitalize()}**" + (
                " (the interval includes zero and reaches past the margin: not \"the same\")"
                if word == "inconclusive" else ""), ""]
            for r in v.itertuples():
                sc, unit, digits = _unit(str(r.metric), study)
                interval = (f"[{sc * r.low_adj:+.{digits}f}, {sc * r.high_adj:+.{digits}f}]"
                            if math.isfinite(r.low_adj) else "–")
                where = (f" ({r.setting})" if isinstance(r.setting, str) and r.setting
                         and f"({r.setting})" not in r.claim else "")  # named once
                margin = f"±{sc * r.margin:.{digits}f}"
                diff = (f"{sc * r.difference:+.{digits}f} {unit}" if math.isfinite(r.difference)
                        else "no paired difference")
                lines.append(f"- {r.claim}{where}: {diff}, "
                             f"adjusted {interval}, margin {margin}"
                             + (f"; {r.note}" if isinstance(r.note, str) and r.note else ""))
    return "\n".join(lines) + "\n"


def _tables(study: Study, scale: Scale, tuning: pd.DataFrame, table: pd.DataFrame,
            curves: pd.DataFrame, extra: Mapping[str, pd.DataFrame]
            ) -> tuple[dict[str, pd.DataFrame], set[str]]:
    """The checked, judged and summarized tables, and the names of the derived ones.

    Derived tables are recomputed from the runs on every report, so they are not written.
    """
    keys = [*study.setting_keys(scale), "method", "seed"]
    table = check(study, table, curves, keys)
    tables: dict[str, pd.DataFrame] = {"tuning": tuning, "runs": table, "curves": curves,
                                       **extra}
    derived = study.derived(table, scale) if study.derived is not None else {}
    tables.update(derived)
    tables["verdicts"] = judge_claims(study, scale, tables)
    tables["summary"] = summarize(study, scale, table)
    if study.views is not None:
        tables.update(study.views(tables, scale))
    return tables, set(derived)


def _write(study: Study, scale: Scale, out: Path, fig: Path | None,
           tables: Mapping[str, pd.DataFrame], derived: set[str]) -> None:
    text, prose = report(study, scale, tables), results_text(study, tables)
    figures = study.figures(dict(tables), scale) if (study.figures and fig is not None) else {}
    out.mkdir(parents=True, exist_ok=True)
    for name, t in tables.items():
        if name not in derived:
            t.to_csv(out / f"{name}.csv", index=False)
    (out / "summary.md").write_text(text)
    (out / "results.md").write_text(prose)
    for suffix, f in figures.items():
        save_figure(f, fig.with_name(fig.name + (f"_{suffix}" if suffix else "")))
    print(text)


def run_study(study: Study, scale: Scale, out: Path, fig: Path | None, workers: int
              ) -> dict[str, pd.DataFrame]:
    """Tune, run, check, judge and write a study at one scale (resumable); returns its tables."""
    runs = out / "runs"
    tuning, chosen, untrainable = tune(study, scale, runs, workers)
    table, curves = final(study, scale, runs, workers, chosen, untrainable)
    extra: dict[str, pd.DataFrame] = {}
    for phase in study.phases:
        extra.update(phase(study, scale, runs, workers,
                           {"runs": table, "curves": curves, "tuning": tuning}))
    tables, derived = _tables(study, scale, tuning, table, curves, extra)
    _write(study, scale, out, fig, tables, derived)
    return tables


def rejudge(study: Study, scale: Scale, out: Path, fig: Path | None) -> dict[str, pd.DataFrame]:
    """Re-apply the checks, verdicts and report to a study's committed tables (no runs needed).

    Reads ``runs.csv`` (and ``curves.csv``, ``tuning.csv`` and the phases' tables when present)
    from ``out``; convergence is recomputed from the curves (a run without a curve is not
    settled), verdicts from the runs.
    """
    read = {p.stem: read_table(p) for p in sorted(out.glob("*.csv"))}
    table = read.pop("runs")
    curves = read.pop("curves", pd.DataFrame(columns=["step", "metric", "value"]))
    tuning = read.pop("tuning", pd.DataFrame())
    for name in ("summary", "verdicts"):
        read.pop(name, None)
    if "setting" not in table:
        keys = study.setting_keys(scale)
        table.insert(0, "setting", [study.label({k: r[k] for k in keys})
                                    for _, r in table[keys].iterrows()])
    tables, derived = _tables(study, scale, tuning, table, curves, read)
    _write(study, scale, out, fig, tables, derived)
    return tables


def _same(a: Any, b: Any) -> bool:
    """Two table cells name the same value (numbers to 1e-9 relative, else as text)."""
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(a) == str(b)


def moved_choices(study: Study, scale: Scale, runs: pd.DataFrame,
                  chosen: Mapping[tuple, Mapping[str, float]], untrainable: set[tuple]
                  ) -> list[str]:
    """What a new tuning changes in a committed runs table, one line per method and setting.

    A method moves when a chosen value differs from the one its final runs used, when it
    became untrainable, or when it was untrainable and now trains. Empty: the committed final
    runs are exactly the runs the new choices ask for (same configurations, same seeds).
    """
    keys = study.setting_keys(scale)
    moved = []
    for s in scale.settings:
        for m in scale.methods:
            if not study.runs(s, m, scale):
                continue
            k, label = _key(s, m), f"{m} at {study.label(s)}"
            rows = runs[(runs["method"] == m)
                        & pd.Series([all(_same(r[c], s[c]) for c in keys)
                                     for _, r in runs[keys].iterrows()], index=runs.index)]
            if rows.empty:
                moved.append(f"{label}: no committed final runs")
                continue
            was_untrainable = bool((rows["status"] == "untrainable").all())
            if (k in untrainable) != was_untrainable:
                moved.append(f"{label}: {'now' if k in untrainable else 'no longer'} "
                             "untrainable at this grid")
                continue
            if k in untrainable:
                continue
            for h, v in chosen.get(k, {}).items():
                old = rows[h].unique() if h in rows else []
                if len(old) != 1 or not _same(old[0], v):
                    was = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in old)
                    moved.append(f"{label}: {h} {was or 'none'} -> {v:g}")
    return moved


def retune(study: Study, scale: Scale, out: Path, fig: Path | None, workers: int
           ) -> tuple[dict[str, pd.DataFrame] | None, list[str]]:
    """Re-run only the tuning, and keep the committed final runs where no choice moved.

    The final runs are deterministic functions of their configurations, so where the new
    tuning (:func:`tune`, resumable under ``out/runs``) chooses every value the committed
    ``runs.csv`` used, those runs are what a full re-run would train again: the new tuning
    table is written and the study re-judged (:func:`rejudge`). Otherwise nothing is written
    and the moved choices are returned (re-run the study to train their final runs).

    Returns:
        The tables (``None`` when a choice moved) and the moved choices
        (:func:`moved_choices`).
    """
    committed = read_table(out / "runs.csv")
    tuning, chosen, untrainable = tune(study, scale, out / "runs", workers)
    moved = moved_choices(study, scale, committed, chosen, untrainable)
    if moved:
        return None, moved
    tuning.to_csv(out / "tuning.csv", index=False)
    return rejudge(study, scale, out, fig), []


#: Steps timed per run shape by ``--estimate``.
ESTIMATE_STEPS = 10


def main(study: Study, argv: list[str] | None = None, *, root: Path | None = None) -> int:
    """The command line of a study; returns the exit status (2 after one line on bad input).

    ``--scale`` (default ``small``), ``--out`` (default ``results/<name>-<scale>`` under
    ``root``, the current folder by default), ``--fig`` (default
    ``paper_figs/out/<name>``; at ``tiny`` scale ``<out>/<name>``), ``--jobs``, ``--report``
    (tables and figures from the runs on disk, nothing trained), ``--rejudge`` (from the
    committed tables in ``--out`` alone) and ``--retune`` (:func:`retune`: exit status 1, with
    the moved choices, when the committed final runs no longer match the tuning) and
    ``--estimate`` (:func:`flatlab.studies.estimate.estimate`: the scale's expected training
    hours on this device, from measured steps; nothing trained).
    """
    root = Path.cwd() if root is None else root
    p = OneLineParser(prog=f"python -m flatlab.studies {study.name}",
                       description=study.question)
    p.add_argument("--scale", choices=sorted(study.scales), default="small")
    p.add_argument("--out", type=Path, default=None,
                   help=f"study folder (default results/{study.name}-<scale>)")
    p.add_argument("--fig", type=Path, default=None,
                   help=f"figure path without suffix (default paper_figs/out/{study.name})")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    add_arguments(p, "every tuning and final run", no_wait=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true",
                      help="only rebuild tables and figures from the runs on disk")
    mode.add_argument("--rejudge", action="store_true",
                      help="re-check and re-judge the committed tables in --out (no runs)")
    mode.add_argument("--retune", action="store_true",
                      help="re-run only the tuning; re-judge the committed final runs if no "
                           "chosen value moved, else name what moved (exit 1)")
    mode.add_argument("--estimate", action="store_true",
                      help="train nothing: time a few steps of every run shape here and print "
                           "the scale's expected training hours on this device")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.jobs < 1:
        print(f"error: --jobs must be >= 1 (got {a.jobs})", file=sys.stderr)
        return 2
    engine: Any = contextlib.nullcontext()
    try:
        resources = resources_from(a)
        if resources is not None and a.estimate:
            raise FlatlabError("--estimate times steps on this machine; accepted: --estimate "
                               "without --engine slurm (run it on a node of the cluster)")
        if resources is not None and not (a.report or a.rejudge):
            check_slurm(resources)
            engine = on_slurm(resources)
    except FlatlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scale = study.scales[a.scale]
    out = a.out or root / "results" / f"{study.name}-{a.scale}"
    fig = a.fig or (out / study.name if a.scale == "tiny"
                    else root / "paper_figs" / "out" / study.name)
    if a.report and not (out / "runs").is_dir():
        print(f"error: no runs under {out / 'runs'}; run without --report first",
              file=sys.stderr)
        return 2
    if (a.rejudge or a.retune) and not (out / "runs.csv").is_file():
        flag = "--rejudge" if a.rejudge else "--retune"
        print(f"error: no runs.csv in {out}; {flag} needs a study's tables",
              file=sys.stderr)
        return 2
    if a.estimate:
        try:
            table, device = estimate(study, scale, ESTIMATE_STEPS)
        except FlatlabError as e:  # e.g. a data set that is not on this machine
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(estimate_text(study, a.scale, table, device, ESTIMATE_STEPS))
        return 0
    t0 = time.time()
    with engine:
        tables = _run_mode(study, scale, out, fig, a)
    if tables is None:
        return 1
    print(f"{len(tables['runs'])} final runs ({time.time() - t0:.0f} s); tables in {out}")
    return 0


def _run_mode(study: Study, scale: Scale, out: Path, fig: Path, a: Any
              ) -> dict[str, pd.DataFrame] | None:
    """What the command line asked: re-judge, re-tune or run (None: a re-tune moved)."""
    if a.rejudge:
        tables = rejudge(study, scale, out, fig)
    elif a.retune:
        new, moved = retune(study, scale, out, fig, a.jobs)
        if new is None:
            print(f"the new tuning moved {len(moved)} choice(s); the committed final runs "
                  f"no longer apply, so nothing was written (run without --retune):")
            for line in moved:
                print(f"  {line}")
            return None
        tables = new
    else:
        tables = run_study(study, scale, out, fig, 0 if a.report else a.jobs)
    return tables
