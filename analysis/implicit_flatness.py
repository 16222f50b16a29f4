"""Implicit against explicit flatness: decentralization, local steps and SAM at a large batch.

The question the decentralized-flatness literature keeps asking (docs/reference/measures.md §12,
docs/reference/algorithms.md §13.4): is the flatness that gossip brings the same thing that
sharpness-aware training buys, and where do local steps fit in? Zhu et al. (ICML 2023) show
that D-SGD is asymptotically equivalent to average-direction SAM; Lin, Stich, Patel and Jaggi
(ICLR 2020) that local SGD escapes the sharp minima of large-batch training. The study asks
with numbers:

- does decentralization reach SAM's flatness (top Hessian eigenvalue of ``x̄``), at the end of
  training and at a matched training loss?
- does it combine with SAM (diffusion with SAM flatter than diffusion) or substitute for it
  (no flatter than either alone)?
- how does the answer move with the spectral gap (ring against exponential graph) and with the
  period ``H`` of local SGD?

mnist1d with the 1-D CNN, ``n`` nodes with an i.i.d. split (so that what is measured is the
gossip's noise, not heterogeneity), a large total batch ``n b``, plain SGD (no momentum, no
weight decay) with a cosine schedule, the same initialization for every method of a seed.
Methods (the ``method`` column):

- ``sgd``: centralized minibatch SGD (the average of the nodes' gradients);
- ``sam``: centralized SAM: every node's gradient taken at ``x + ρ g_i/‖g_i‖`` with its own
  minibatch gradient ``g_i`` (Foret et al. 2021's data-parallel m-sharpness, ``m = b``);
- ``diffusion-<graph>``: adapt-then-combine DSGD ``X ← W (X − μ G)`` on a ring and on the
  exponential graph (two spectral gaps);
- ``diffusion-sam-<graph>``: the same with SAM on every node (Shi et al. 2023's D-SAM);
- ``local-sgd-H<h>``: Local SGD, diffusion over the complete graph gossiping every ``H``
  steps (``topology.local_steps``; Stich 2019, Lin et al. 2020).

Phases, all resumable (finished runs are skipped, interrupted ones resume from their
checkpoints, a diverging run is recorded as diverged and the study goes on):

1. **tune lr**: centralized SGD on seed 0 with a 10% held-out split, over a learning-rate grid
   extended by its own ratio until the best is interior
   (:func:`flatlab.experiment.study.tune_bracketed`). **Every method trains at this common
   step**: the final ``λ_max`` follows the step size (a larger step cannot stay in sharper
   regions: the edge of stability, ``λ_max ≲ 2/η``), so
   methods tuned to different steps would compare their steps, not their flatness (the
   flatness comparisons of Lin et al. 2020 and Zhu et al. 2023 fix the step too). The other
   methods without SAM run the same grid, not extended, for the sensitivity figure;
2. **tune ρ**: each SAM method at the common learning rate, over a ``ρ`` grid, bracketed
   the same way (held-out accuracy decides; the tuning table also records each run's final
   ``λ_max``, the dose-response of flatness to ``ρ``);
3. **final**: the tuned values with every seed on the full training set, measured every
   ``every`` steps (training loss, test accuracy, ``‖∇f(x̄)‖``, consensus distance ``Ξ²``, the
   consensus gap ``(1/n) Σ f(x_i) − f(x̄) ≈ ½ tr(H C)``, the Hessian-weighted disagreement that
   couples flatness and consensus) and ``λ_max`` every ``flat_every`` steps; at the end also the
   Hessian trace (Hutch++) and the worst-case adaptive sharpness.

``λ_max`` at matched training loss: the loss ``L*`` is the highest final training loss of any
run, so every run reaches it; each run's ``λ_max`` is interpolated (in log loss)
between the two ``λ_max`` measurements around its first crossing of ``L*``.

The claims are judged seed by seed (:func:`flatlab.experiment.evidence.judge`).

Usage::

    python analysis/implicit_flatness.py --scale small   # 16 nodes, 8 methods, 5 seeds, CPU (~2 h)
    python analysis/implicit_flatness.py --scale full    # 32 nodes, longer, GPU
    python analysis/implicit_flatness.py --scale small --report   # tables and figures from disk

Writes under ``results/implicit_flatness-<scale>/``: ``tuning.csv`` (both tunings, extensions
marked), ``runs.csv`` (one row per final run, with its convergence), ``curves.csv`` (metrics
over training), ``summary.csv``, ``summary.md`` and ``verdicts.csv``; and the figures
``paper_figs/out/implicit_flatness{,_sensitivity,_sensitivity_rho}.{pdf,png}``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import save_figure, study_args

from flatlab.experiment import run_many
from flatlab.experiment.evidence import Claim, judge, verdict_markdown, with_convergence
from flatlab.experiment.study import final_values, mean_and_se, tune_bracketed

ROOT = Path(__file__).resolve().parents[1]

SCALES: dict[str, dict[str, Any]] = {
    # total batch 16 x 32 = 512 of mnist1d's 4000 training samples; 2000 steps with a cosine
    # schedule; 27 tuning and 40 final runs, about 2 h on 2 cores. Measured every 125 steps, a
    # multiple of neither period H: Local SGD's nodes agree exactly after steps H, 2H, ..., so a
    # measurement interval that is a multiple of H would always read its disagreement as 0
    # (125 k mod 16 visits each of the 16 phases once in 2000 steps, mod 4 each phase 4 times)
    "small": dict(nodes=16, batch=32, topologies=("ring", "exponential"), local_steps=(4, 16),
                  steps=2000, every=125, flat_every=250, seeds=(0, 1, 2, 3, 4),
                  lrs=(0.1, 0.3, 0.9), rhos=(0.01, 0.03, 0.1), trace_matvecs=30),
    "full": dict(nodes=32, batch=64, topologies=("ring", "torus", "exponential"),
                 local_steps=(4, 16, 64), steps=6000, every=375, flat_every=750,
                 seeds=(0, 1, 2, 3, 4), lrs=(0.03, 0.1, 0.3, 0.9), rhos=(0.01, 0.03, 0.1, 0.3),
                 trace_matvecs=60),
    # the test suite's: a few steps, so that the script cannot rot
    "tiny": dict(nodes=4, batch=8, topologies=("ring",), local_steps=(2,), steps=6, every=3,
                 flat_every=3, seeds=(0, 1), lrs=(0.1, 0.3), rhos=(0.03, 0.1),
                 trace_matvecs=6, extensions=1, train_subset=256, curvature_subset=64),
}

FINAL = {"test_accuracy": "test_accuracy", "train_loss": "train_loss",
         "grad_norm": "grad_norm", "consensus_distance": "consensus_distance",
         "consensus_gap": "consensus_gap", "hessian_top": "hessian_top",
         "hessian_trace": "hessian_trace", "sharpness": "sharpness_worst"}
CURVE_METRICS = ("train_loss", "test_accuracy", "grad_norm", "consensus_distance",
                 "consensus_gap", "hessian_top")


def methods(grid: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every method of the study: its algorithm, graph, period, SAM, and base method."""
    out: dict[str, dict[str, Any]] = {
        "sgd": dict(algorithm="centralized", topology="complete", local_steps=1, sam=False),
        "sam": dict(algorithm="centralized", topology="complete", local_steps=1, sam=True,
                    base="sgd")}
    for t in grid["topologies"]:
        out[f"diffusion-{t}"] = dict(algorithm="diffusion", topology=t, local_steps=1,
                                     sam=False)
        out[f"diffusion-sam-{t}"] = dict(algorithm="diffusion", topology=t, local_steps=1,
                                         sam=True, base=f"diffusion-{t}")
    for h in grid["local_steps"]:
        out[f"local-sgd-H{h}"] = dict(algorithm="diffusion", topology="complete",
                                      local_steps=h, sam=False)
    return out


def _config(grid: dict[str, Any], method: str, lr: float, rho: float, seed: int, *,
            holdout: float) -> dict[str, Any]:
    m = methods(grid)[method]
    steps, final = grid["steps"], holdout == 0.0
    every = grid["every"] if final else steps
    flat_every = grid["flat_every"] if final else steps
    metrics = ["loss", "accuracy", "hessian_top"]
    options: dict[str, Any] = {"hessian_top": {"every": flat_every}}
    if final:
        metrics += ["consensus_distance", "consensus_gap", "grad_norm", "hessian_trace",
                    "sharpness_worst"]
        options |= {"hessian_trace": {"every": steps, "num_matvecs": grid["trace_matvecs"]},
                    "sharpness_worst": {"every": steps, "adaptive": True}}
    return {"name": "implicit_flatness", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "iid", "seed": seed,
                     "batch_size": grid["batch"], "holdout": holdout},
            "model": {"name": "cnn1d"},
            "topology": {"name": m["topology"], "nodes": grid["nodes"],
                         "local_steps": m["local_steps"]},
            "algorithm": {"name": m["algorithm"], "params": {}},
            "optim": {"lr": lr, "schedule": "cosine", "sam_rho": rho if m["sam"] else 0.0},
            "train": {"steps": steps},
            "measure": {"every": every, "per_node": False, "metrics": metrics,
                        "train_subset": grid.get("train_subset", 2048),
                        "curvature_subset": grid.get("curvature_subset", 512),
                        "options": options},
            "checkpoint_every": max(steps // 2, 1)}


def _name(method: str, lr: float, rho: float, seed: int) -> str:
    return f"{method},lr={lr:g}" + (f",rho={rho:g}" if rho else "") + f",seed={seed}"


def _with_flatness(table: pd.DataFrame, job) -> pd.DataFrame:
    """The tuning table with each run's final ``λ_max`` (``holdout_hessian_top``)."""
    tops = [final_values(job(dict(r))[0], {"t": "hessian_top"})["t"]
            for _, r in table.iterrows()]
    return table.assign(holdout_hessian_top=tops)


#: The method whose bracketed learning rate every method trains with.
REFERENCE = "sgd"


def tune_lr(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Phase 1: the learning rate of SGD, bracketed; the other methods on the same grid.

    Every method trains at SGD's learning rate (:func:`common_lr`): the final λ_max follows
    the step size (it settles below about ``2/η``), so methods at different step sizes would
    compare their step sizes, not their flatness. The other methods without SAM run the initial
    grid too (not extended), for the sensitivity figure and to show where the common step sits
    in each method's own range.
    """
    base = [m for m, d in methods(grid).items() if not d["sam"]]

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        return (runs / "tune" / _name(p["method"], p["lr"], 0.0, 0),
                _config(grid, p["method"], p["lr"], 0.0, 0, holdout=0.1))

    ref = tune_bracketed([{"method": REFERENCE, "lr": lr} for lr in grid["lrs"]], job, workers,
                         ["method"], "lr", max_extensions=grid.get("extensions", 4))
    others = [{"method": m, "lr": lr} for m in base if m != REFERENCE for lr in grid["lrs"]]
    t = pd.concat([ref, tune_bracketed(others, job, workers, ["method"], "lr",
                                       max_extensions=0)] if others else [ref],
                  ignore_index=True)
    return _with_flatness(t, job).assign(hparam="lr", rho=0.0)


def common_lr(lr_table: pd.DataFrame) -> float | None:
    """SGD's chosen learning rate, the step every method trains with (None if none trained)."""
    lrs = _chosen(lr_table[lr_table["method"] == REFERENCE], "lr")
    return lrs.get(REFERENCE)


def tune_rho(grid: dict[str, Any], runs: Path, lr_table: pd.DataFrame, workers: int
             ) -> pd.DataFrame:
    """Phase 2: each SAM method at the common learning rate over the ρ grid, bracketed."""
    lr = common_lr(lr_table)
    lr_of = {m: lr for m, d in methods(grid).items() if d["sam"] and lr is not None}
    points = [{"method": m, "rho": rho} for m in lr_of for rho in grid["rhos"]]

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        lr = lr_of[p["method"]]
        return (runs / "tune" / _name(p["method"], lr, p["rho"], 0),
                _config(grid, p["method"], lr, p["rho"], 0, holdout=0.1))

    if not points:
        return pd.DataFrame()
    t = tune_bracketed(points, job, workers, ["method"], "rho",
                       max_extensions=grid.get("extensions", 4))
    return _with_flatness(t, job).assign(hparam="rho", lr=t["method"].map(lr_of))


def _chosen(table: pd.DataFrame, column: str) -> dict[str, float]:
    """``{method: chosen value}`` of a tuning table (methods whose every value failed: none)."""
    if table.empty:
        return {}
    pick = table[table["chosen"]]
    return dict(zip(pick["method"], pick[column].astype(float), strict=True))


def final(grid: dict[str, Any], runs: Path, tuning: pd.DataFrame, workers: int
          ) -> pd.DataFrame:
    """Phase 3: the tuned values with every seed, on the full training set."""
    from flatlab.theory import spectral
    from flatlab.topology import make

    lr = common_lr(tuning[tuning["hparam"] == "lr"])
    rho_of = _chosen(tuning[tuning["hparam"] == "rho"], "rho")
    lr_of = {m: lr for m in methods(grid) if lr is not None}
    points = []
    for m, d in methods(grid).items():
        if m not in lr_of or (d["sam"] and m not in rho_of):
            print(f"no tuned value of {m} trained; it has no final runs", flush=True)
            continue
        points += [(m, lr_of[m], rho_of.get(m, 0.0), seed) for seed in grid["seeds"]]
    jobs = [(str(runs / "final" / _name(m, lr, rho, seed)),
             _config(grid, m, lr, rho, seed, holdout=0.0)) for m, lr, rho, seed in points]
    run_many(jobs, workers)
    rows = []
    for (m, lr, rho, seed), (path, _) in zip(points, jobs, strict=True):
        d = methods(grid)[m]
        if d["algorithm"] == "centralized":
            gap = {"rho_w": 0.0, "spectral_gap": 1.0}  # an exact average every step
        else:
            s = spectral(make(d["topology"], grid["nodes"], local_steps=d["local_steps"]))
            gap = {"rho_w": s.rho, "spectral_gap": s.spectral_gap}
        rows.append({"method": m, "algorithm": d["algorithm"], "topology": d["topology"],
                     "local_steps": d["local_steps"], "sam": d["sam"], "lr": lr, "rho": rho,
                     "seed": seed, **gap, **final_values(path, FINAL)})
    return pd.DataFrame(rows)


RUN_KEYS = ["method", "seed"]


def curves(table: pd.DataFrame, runs: Path) -> pd.DataFrame:
    """Metrics over training of every final run (long form: step, metric, value, run keys)."""
    import flatlab.results

    parts = []
    for r in table.itertuples():
        path = runs / "final" / _name(r.method, r.lr, r.rho, r.seed)
        if not (path / "metrics.parquet").is_file():
            continue
        df = flatlab.results.load(path)
        df = df[df["metric"].isin(CURVE_METRICS) & df["scope"].isin(["avg", "network"])]
        parts.append(df[["step", "metric", "value"]].drop_duplicates(["step", "metric"])
                     .assign(method=r.method, seed=r.seed, status=r.status))
    if not parts:
        return pd.DataFrame(columns=["step", "metric", "value", *RUN_KEYS, "status"])
    return pd.concat(parts, ignore_index=True)


def during_training(table: pd.DataFrame, curve: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``consensus_during`` and ``gap_during``: the mean over training.

    The mean of ``Ξ²`` and of the consensus gap over a run's measurements after step 0. With a
    cosine schedule both vanish at the end (the step goes to zero, so the nodes agree), so the
    disagreement a method trained with is read along the way.
    """
    keep = curve[(curve["step"] > 0)
                 & curve["metric"].isin(["consensus_distance", "consensus_gap"])]
    means = (keep.groupby([*RUN_KEYS, "metric"])["value"].mean().unstack("metric")
             .rename(columns={"consensus_distance": "consensus_during",
                              "consensus_gap": "gap_during"}).reset_index())
    for col in ("consensus_during", "gap_during"):
        if col not in means:
            means[col] = math.nan
    out = table.drop(columns=["consensus_during", "gap_during"], errors="ignore")
    return out.merge(means[[*RUN_KEYS, "consensus_during", "gap_during"]], on=RUN_KEYS,
                     how="left")


def matched_loss(table: pd.DataFrame, curve: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """``table`` with ``hessian_top_matched``: each run's ``λ_max`` at the training loss ``L*``.

    ``L*`` is the highest final training loss of the ``done`` runs, so every run reaches it; a
    run is interpolated linearly in ``log`` loss between the two
    ``λ_max`` measurements around its first crossing (NaN when it never crosses, or crosses
    before its second measurement).
    """
    done = table[table["status"] == "done"]
    if done.empty:
        return table.assign(hessian_top_matched=math.nan), math.nan
    target = float(done["train_loss"].max())
    values = []
    for r in table.itertuples():
        c = curve[(curve["method"] == r.method) & (curve["seed"] == r.seed)]
        wide = c.pivot_table(index="step", columns="metric", values="value")
        if r.status != "done" or not {"train_loss", "hessian_top"} <= set(wide.columns):
            values.append(math.nan)
            continue
        w = wide[["train_loss", "hessian_top"]].dropna()
        below = np.flatnonzero(w["train_loss"].to_numpy() <= target)
        if not len(below) or below[0] == 0:
            values.append(math.nan)
            continue
        k = below[0]
        (l0, h0), (l1, h1) = w.iloc[k - 1].to_numpy(), w.iloc[k].to_numpy()
        s = (math.log(l0) - math.log(target)) / max(math.log(l0) - math.log(l1), 1e-300)
        values.append(float(h0 + s * (h1 - h0)))
    return table.assign(hessian_top_matched=values), target


def claims(table: pd.DataFrame, grid: dict[str, Any]) -> pd.DataFrame:
    """The verdicts, paired by seed, on flatness (``λ_max``) and on test accuracy.

    Flatness, at the end and at matched training loss: SAM flatter than SGD (the control); each
    diffusion flatter than SGD; each diffusion flatter than SAM (decentralization reaching
    SAM's flatness: contradicted means it falls short, not separable that it matches at this
    scale); diffusion with SAM flatter than diffusion (they combine) and than SAM; the ring
    flatter than the exponential graph (the spectral gap); local SGD flatter than SGD and the
    longer period flatter than the shorter. Accuracy: each against SGD, and SAM's gain on top
    of diffusion.
    """
    have = set(table["method"])
    tops, hs = grid["topologies"], sorted(grid["local_steps"])
    flat: list[tuple[str, str, str]] = [("sam", "sgd", "SAM flatter than SGD")]
    for t in tops:
        flat += [(f"diffusion-{t}", "sgd", f"diffusion ({t}) flatter than SGD"),
                 (f"diffusion-{t}", "sam", f"diffusion ({t}) flatter than SAM"),
                 (f"diffusion-sam-{t}", f"diffusion-{t}",
                  f"SAM on diffusion ({t}) flatter than diffusion"),
                 (f"diffusion-sam-{t}", "sam", f"SAM on diffusion ({t}) flatter than SAM")]
    for a, b in zip(tops, tops[1:], strict=False):
        flat.append((f"diffusion-{a}", f"diffusion-{b}",
                     f"diffusion on the {a} flatter than on the {b}"))
    flat += [(f"local-sgd-H{h}", "sgd", f"local SGD (H={h}) flatter than SGD") for h in hs]
    flat += [(f"local-sgd-H{b}", f"local-sgd-H{a}",
              f"local SGD (H={b}) flatter than H={a}") for a, b in zip(hs, hs[1:], strict=False)]
    acc: list[tuple[str, str, str]] = [("sam", "sgd", "SAM more accurate than SGD")]
    for t in tops:
        acc += [(f"diffusion-{t}", "sgd", f"diffusion ({t}) more accurate than SGD"),
                (f"diffusion-sam-{t}", f"diffusion-{t}",
                 f"SAM on diffusion ({t}) more accurate than diffusion")]
    acc += [(f"local-sgd-H{h}", "sgd", f"local SGD (H={h}) more accurate than SGD") for h in hs]
    out = []
    for value, spec, direction in (("hessian_top", flat, "less"),
                                   ("hessian_top_matched", flat, "less"),
                                   ("test_accuracy", acc, "greater")):
        cs = [Claim(text, a, b, direction) for a, b, text in spec if {a, b} <= have]
        if cs:
            out.append(judge(table, cs, value=value).assign(metric=value))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


SUMMARY = ["test_accuracy", "train_loss", "grad_norm", "consensus_distance", "consensus_gap",
           "consensus_during", "gap_during", "hessian_top", "hessian_top_matched",
           "hessian_trace", "sharpness"]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per method."""
    keys = ["method", "algorithm", "topology", "local_steps", "sam", "lr", "rho", "rho_w",
            "spectral_gap"]
    return mean_and_se(table, keys, SUMMARY)


def _pm(r: Any, col: str, scale: float = 1.0, fmt: str = ".3g") -> str:
    m, se = getattr(r, f"{col}_mean") * scale, getattr(r, f"{col}_se") * scale
    if not math.isfinite(m):
        return "–"
    return f"{m:{fmt}} ± {se:{fmt}}" if math.isfinite(se) else f"{m:{fmt}}"


def markdown(summary: pd.DataFrame, tuning: pd.DataFrame, verdicts: pd.DataFrame,
             grid: dict[str, Any], target: float) -> str:
    """The summary with convergence, both tunings with their grid checks, and the verdicts."""
    lines = [f"Final runs: {grid['nodes']} nodes, batch {grid['batch']} per node, "
             f"{grid['steps']} steps, cosine schedule, every method at SGD's tuned learning "
             f"rate; converged = the test accuracy of x̄ "
             f"changed by less than 1 point over the last 20% of steps; λ_max at matched "
             f"training loss L* = {target:.3g}.", "",
             "| method | lr | ρ | gap 1−ρ_W | test acc. (%) | train loss | ‖∇f(x̄)‖ | λ_max | "
             "λ_max at L* | tr(H) | adaptive sharpness | Ξ² (mean over training) | "
             "consensus gap (mean over training) | converged | "
             "seeds |", "|" + "---|" * 15]
    for r in summary.itertuples():
        lines.append(
            f"| {r.method} | {r.lr:g} | {r.rho:g} | {r.spectral_gap:.3g} | "
            f"{_pm(r, 'test_accuracy', 100, '.1f')} | {_pm(r, 'train_loss')} | "
            f"{_pm(r, 'grad_norm')} | {_pm(r, 'hessian_top')} | {_pm(r, 'hessian_top_matched')} "
            f"| {_pm(r, 'hessian_trace')} | {_pm(r, 'sharpness')} | "
            f"{_pm(r, 'consensus_during')} | {_pm(r, 'gap_during')} | "
            f"{int(r.converged)}/{r.seeds + r.diverged} | "
            f"{r.seeds}{f' ({r.diverged} diverged)' if r.diverged else ''} |")
    lines += ["", "Tuning (seed 0, held-out 10%): values marked * were added because the best "
              "sat at an edge, † diverged; λ_max is the tuning run's final top eigenvalue. Only "
              f"{REFERENCE}'s learning rate and each SAM method's ρ are used; the other methods' "
              "learning-rate grids show where the common step sits in their range.", "",
              "| method | tuned | grid (held-out acc. %, λ_max) | chosen | interior |",
              "|---|---|---|---|---|"]
    for (hp, m), g in tuning.groupby(["hparam", "method"], sort=False):
        vals = ", ".join(
            f"{v:g}{'*' if e else ''}{'†' if st == 'diverged' else ''} "
            f"({'–' if not math.isfinite(a) else f'{100 * a:.1f}'}, "
            f"{'–' if not math.isfinite(h) else f'{h:.3g}'})"
            for v, e, st, a, h in zip(g[hp], g["extended"], g["status"], g["holdout_accuracy"],
                                      g["holdout_hessian_top"], strict=True))
        pick = g[g["chosen"]]
        lines.append(f"| {m} | {hp} | {vals} | {'–' if pick.empty else f'{pick[hp].iloc[0]:g}'}"
                     f" | {'yes' if g['interior'].iloc[0] else 'no'} |")
    for metric, unit, scale in (("hessian_top", "λ_max", 1.0),
                                ("hessian_top_matched", "λ_max at L*", 1.0),
                                ("test_accuracy", "points", 100.0)):
        v = verdicts[verdicts["metric"] == metric] if len(verdicts) else verdicts
        if len(v):
            lines += ["", f"Verdicts on {metric} (a − b, paired by seed, 95% t interval):", "",
                      verdict_markdown(v.drop(columns=["metric"]), scale=scale, unit=unit)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    a = study_args(argv, __doc__, SCALES, "implicit_flatness", ROOT)
    if isinstance(a, int):
        return a
    t0 = time.time()
    grid = SCALES[a.scale]
    lr_table = tune_lr(grid, a.runs, a.workers)
    tuning = pd.concat([lr_table, tune_rho(grid, a.runs, lr_table, a.workers)],
                       ignore_index=True)
    table = final(grid, a.runs, tuning, a.workers)
    curve = curves(table, a.runs)
    table = during_training(with_convergence(table, curve, RUN_KEYS), curve)
    table, target = matched_loss(table, curve)
    summary = summarize(table)
    verdicts = claims(table, grid)
    a.out.mkdir(parents=True, exist_ok=True)
    tuning.to_csv(a.out / "tuning.csv", index=False)
    table.to_csv(a.out / "runs.csv", index=False)
    curve.to_csv(a.out / "curves.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    verdicts.to_csv(a.out / "verdicts.csv", index=False)
    text = markdown(summary, tuning, verdicts, grid, target)
    (a.out / "summary.md").write_text(text)

    from flatlab.plots import implicit_flatness, sensitivity

    save_figure(implicit_flatness(table, curve), a.fig)
    save_figure(sensitivity(tuning[tuning["hparam"] == "lr"], "lr"),
                a.fig.with_name(a.fig.name + "_sensitivity"))
    if (tuning["hparam"] == "rho").any():
        save_figure(sensitivity(tuning[tuning["hparam"] == "rho"], "rho"),
                    a.fig.with_name(a.fig.name + "_sensitivity_rho"))
    print(text)
    print(f"{len(table)} final runs ({time.time() - t0:.0f} s); tables in {a.out}, figures "
          f"{a.fig}{{,_sensitivity,_sensitivity_rho}}.{{pdf,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
