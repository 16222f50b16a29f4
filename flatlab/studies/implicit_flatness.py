"""Implicit against explicit flatness: decentralization, local steps and SAM at a large batch.

Question: is the flatness that gossip brings the same thing that sharpness-aware training buys,
and where do local steps fit in (docs/reference/measures.md §12, docs/reference/algorithms.md
§13.4)? Zhu et al. (ICML 2023) show that D-SGD is asymptotically equivalent to average-direction
SAM; Lin, Stich, Patel and Jaggi (ICLR 2020) that local SGD escapes the sharp minima of
large-batch training. Does decentralization reach SAM's flatness (top Hessian eigenvalue
``λ_max`` of ``x̄``) at the end of training and at a matched training loss; does it combine with
SAM or substitute for it; how does the answer move with the spectral gap (ring against
exponential graph) and with local SGD's period ``H``?

Protocol: mnist1d with the 1-D CNN, ``n`` nodes with an i.i.d. split (the gossip's noise, not
heterogeneity), a large total batch ``n b``, plain SGD (no momentum, no weight decay) with a
cosine schedule, the same initialization for every method of a seed. Methods: ``sgd``
(centralized minibatch SGD), ``sam`` (centralized SAM, every node's gradient at
``x + ρ g_i/‖g_i‖``, m-sharpness with ``m = b``), ``diffusion-<graph>`` (adapt-then-combine DSGD
on a ring and on the exponential graph), ``diffusion-sam-<graph>`` (D-SAM) and
``local-sgd-H<h>`` (diffusion over the complete graph gossiping every ``H`` steps).

Tuning (:class:`~flatlab.studies.spec.Stage`, 3 seeds, 10% held out): SGD's learning rate,
bracketed; **every method trains at that common step**, since the final ``λ_max`` follows the
step (``λ_max ≲ 2/η``, the edge of stability), so methods at different steps would compare
their steps, not their flatness; then each SAM method's ``ρ`` at that step, bracketed. The
other methods without SAM run the learning-rate grid too (the ``grid`` phase, not extended, not
used), to show where the common step sits in their range; the phase also records every tuning
run's final ``λ_max``. Final runs measure the training loss, test accuracy, ``‖∇f(x̄)‖``,
``Ξ²``, the consensus gap every ``every`` steps, ``λ_max`` every ``flat_every`` steps, and at
the end the Hessian trace (Hutch++) and the adaptive worst-case sharpness.

``λ_max`` at matched training loss (the ``matched`` phase): ``L*`` is the highest final training
loss of any finished run, so every run reaches it; each run's ``λ_max`` is interpolated in log
loss between the two ``λ_max`` measurements around its first crossing of ``L*``, and the
crossing step and the scheduled ``η`` there are reported beside it: under a cosine schedule a
matched loss is not a matched step.

Run: ``python -m flatlab.studies implicit_flatness --scale small`` (16 nodes, 8 methods,
5 seeds); ``--rejudge`` re-judges the committed tables in ``results/implicit_flatness-small``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flatlab.errors import FlatlabError
from flatlab.experiment.config import OptimConfig
from flatlab.experiment.evidence import (
    Claim,
    curves_convergence,
    curves_loss_plateau,
    edge_of_stability,
)
from flatlab.experiment.many import run_many
from flatlab.experiment.schedules import lr_at
from flatlab.experiment.study import final_values
from flatlab.plots import implicit_flatness, sensitivity
from flatlab.studies.pipeline import ACCURACY_THRESHOLD, LOSS_THRESHOLD, run_curves
from flatlab.studies.spec import Point, Scale, Stage, Study
from flatlab.theory import spectral
from flatlab.topology import make

#: The method whose bracketed learning rate every method trains with.
REFERENCE = "sgd"
#: One accuracy point: 10 of mnist1d's 1000 test samples.
POINT = 0.01
WHY_ACCURACY = "one accuracy point (10 of 1000 test samples): the resolution the tables discuss"
#: λ_max claims: 10% of the reference method's mean.
FLAT = 0.1
WHY_FLAT = ("10% of the reference's mean λ_max: about the seed-to-seed spread of one method's "
            "λ_max (power iteration on a curvature subset), while the step alone moves it "
            "15-27x; a smaller gap is not a flatness difference worth reporting")

FINAL = {"test_accuracy": "test_accuracy", "train_loss": "train_loss",
         "grad_norm": "grad_norm", "consensus_distance": "consensus_distance",
         "consensus_gap": "consensus_gap", "hessian_top": "hessian_top",
         "hessian_trace": "hessian_trace", "sharpness": "sharpness_worst"}
CURVES = ("train_loss", "test_accuracy", "grad_norm", "consensus_distance", "consensus_gap",
          "hessian_top")


def _scale(nodes: int, steps: int, every: int, seeds: tuple[int, ...],
           tune_seeds: tuple[int, ...], **options: Any) -> Scale:
    names = ["sgd", "sam"]
    for t in options["topologies"]:
        names += [f"diffusion-{t}", f"diffusion-sam-{t}"]
    names += [f"local-sgd-H{h}" for h in options["local_steps"]]
    return Scale(settings=({"nodes": nodes},), methods=tuple(names), seeds=seeds,
                 tune_seeds=tune_seeds, steps=steps, every=every, options=options)


SCALES = {
    # total batch 16 x 32 = 512 of mnist1d's 4000 training samples; 2000 cosine steps.
    # Measured every 125 steps, a multiple of neither period H: Local SGD's nodes agree exactly
    # after steps H, 2H, ..., so an interval that is a multiple of H would read 0 disagreement
    "small": _scale(16, 2000, 125, (0, 1, 2, 3, 4), (0, 1, 2), batch=32,
                    topologies=("ring", "exponential"), local_steps=(4, 16), flat_every=250,
                    lrs=(0.1, 0.3, 0.9), rhos=(0.01, 0.03, 0.1), trace_matvecs=30),
    "full": _scale(32, 6000, 375, (0, 1, 2, 3, 4), (0, 1, 2), batch=64,
                   topologies=("ring", "torus", "exponential"), local_steps=(4, 16, 64),
                   flat_every=750, lrs=(0.03, 0.1, 0.3, 0.9), rhos=(0.01, 0.03, 0.1, 0.3),
                   trace_matvecs=60),
    # the test suite's: a few steps of a small MLP (the CNN's curvature tripled the study's test
    # time), so that the study cannot rot
    "tiny": _scale(4, 30, 10, (0, 1), (0, 1), batch=8, topologies=("ring",), local_steps=(2,),
                   flat_every=10, lrs=(0.1, 0.3), rhos=(0.03, 0.1), trace_matvecs=6,
                   extensions=1, train_subset=256, curvature_subset=64,
                   model={"name": "mlp", "options": {"hidden": [32]}}),
}


def methods(scale: Scale) -> dict[str, dict[str, Any]]:
    """Every method of a scale: its algorithm, graph, period and SAM."""
    out: dict[str, dict[str, Any]] = {
        "sgd": dict(algorithm="centralized", topology="complete", local_steps=1, sam=False),
        "sam": dict(algorithm="centralized", topology="complete", local_steps=1, sam=True)}
    for t in scale.options["topologies"]:
        out[f"diffusion-{t}"] = dict(algorithm="diffusion", topology=t, local_steps=1,
                                     sam=False)
        out[f"diffusion-sam-{t}"] = dict(algorithm="diffusion", topology=t, local_steps=1,
                                         sam=True)
    for h in scale.options["local_steps"]:
        out[f"local-sgd-H{h}"] = dict(algorithm="diffusion", topology="complete",
                                      local_steps=h, sam=False)
    return out


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point (a tuning run measures once, at its end)."""
    if not math.isfinite(float(point.get("lr", math.nan))):
        raise FlatlabError(f"{point['method']}: no common learning rate ({REFERENCE} trained at "
                           "no value of its grid)")
    o = scale.options
    m = methods(scale)[point["method"]]
    steps, final = scale.steps, holdout == 0.0
    every = scale.every if final else steps
    flat_every = o["flat_every"] if final else steps
    metrics = ["loss", "accuracy", "hessian_top"]
    options: dict[str, Any] = {"hessian_top": {"every": flat_every}}
    if final:
        metrics += ["consensus_distance", "consensus_gap", "grad_norm", "hessian_trace",
                    "sharpness_worst"]
        options |= {"hessian_trace": {"every": steps, "num_matvecs": o["trace_matvecs"]},
                    "sharpness_worst": {"every": steps, "adaptive": True}}
    rho = float(point.get("rho", 0.0))
    return {"name": "implicit_flatness", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "iid", "seed": seed,
                     "batch_size": o["batch"], "holdout": holdout},
            "model": o.get("model", {"name": "cnn1d"}),
            "topology": {"name": m["topology"], "nodes": point["nodes"],
                         "local_steps": m["local_steps"]},
            "algorithm": {"name": m["algorithm"], "params": {}},
            "optim": {"lr": float(point["lr"]), "schedule": "cosine",
                      "sam_rho": rho if m["sam"] else 0.0},
            "train": {"steps": steps},
            "measure": {"every": every, "per_node": False, "metrics": metrics,
                        "train_subset": o.get("train_subset", 2048),
                        "curvature_subset": o.get("curvature_subset", 512),
                        "options": options},
            "checkpoint_every": max(steps // 2, 1)}


def run_name(point: Point, seed: int) -> str:
    """``sam,lr=0.3,rho=0.03,seed=0`` (the old script's names, so its runs resume)."""
    rho = float(point.get("rho", 0.0))
    return (f"{point['method']},lr={float(point['lr']):g}" + (f",rho={rho:g}" if rho else "")
            + f",seed={seed}")


def step_at(step: float, lr: float, scale: Scale) -> float:
    """The scheduled step size ``η`` at ``step`` (the run config's cosine schedule, no warm-up).

    :func:`flatlab.experiment.schedules.lr_at`; a final measurement at ``steps`` sits at the
    schedule's end, ``η = 0``.
    """
    return lr_at(int(round(step)), scale.steps, OptimConfig(lr=float(lr), schedule="cosine"))


def _step_size(point: Point, scale: Scale) -> float:
    """η at the final λ_max measurement (the last step: the end of the cosine schedule)."""
    return step_at(scale.steps, float(point["lr"]), scale)


def _lr_grid(point: Point, scale: Scale) -> tuple[float, ...]:
    return tuple(scale.options["lrs"]) if point["method"] == REFERENCE else ()


def _common_lr(point: Point, chosen: Mapping[str, float]) -> float:
    """The reference's step, NaN when it has none.

    NaN makes the pipeline mark the method untrainable; None would leave the step out of the
    point, and its config would fail.
    """
    return float(chosen.get(REFERENCE, math.nan))


def _rho_grid(point: Point, scale: Scale) -> tuple[float, ...]:
    return tuple(scale.options["rhos"]) if methods(scale)[point["method"]]["sam"] else ()


STAGES = (
    # the reference's learning rate is tuned; every other method takes it (``fixed`` runs after
    # the stage's choice): λ_max follows the step, so the methods are compared at one step
    Stage("lr", _lr_grid, fixed=_common_lr,
          why=f"{REFERENCE}'s learning rate, bracketed; every method trains at it"),
    Stage("rho", _rho_grid, fixed=lambda p, chosen: 0.0,
          why="SAM's radius at the common step, bracketed"),
)


def extra(path: Path, point: Point, scale: Scale) -> dict[str, Any]:
    """A final run's method columns, its spectral gap and its disagreement over training.

    ``consensus_during`` and ``gap_during``: the mean of ``Ξ²`` and of the consensus gap over
    the run's measurements after step 0 (with a cosine schedule both vanish at the end, so the
    disagreement a method trained with is read along the way).
    """
    d = methods(scale)[point["method"]]
    if d["algorithm"] == "centralized":
        gap = {"rho_w": 0.0, "spectral_gap": 1.0}  # an exact average every step
    else:
        s = spectral(make(d["topology"], point["nodes"], local_steps=d["local_steps"]))
        gap = {"rho_w": float(s.rho), "spectral_gap": float(s.spectral_gap)}
    during = {"consensus_during": math.nan, "gap_during": math.nan}
    try:
        m = run_curves(path, ("consensus_distance", "consensus_gap"), lr=False)
    except Exception:  # noqa: BLE001  (a damaged or missing run reads as NaN, its status says why)
        m = pd.DataFrame()
    if len(m):
        later = m[m["step"] > 0]
        for metric, col in (("consensus_distance", "consensus_during"),
                            ("consensus_gap", "gap_during")):
            v = later.loc[later["metric"] == metric, "value"]
            if len(v):
                during[col] = float(v.mean())
    return {**{k: d[k] for k in ("algorithm", "topology", "local_steps", "sam")}, **gap,
            **during}


def matched_loss(runs: pd.DataFrame, curves: pd.DataFrame, scale: Scale,
                 keys: tuple[str, ...] = ("nodes", "method", "seed")) -> pd.DataFrame:
    """Each run's ``λ_max`` at the training loss ``L*``, with the step and ``η`` there.

    ``L*`` is the highest final training loss of the ``done`` runs; a run is interpolated
    linearly in log loss between the two ``λ_max`` measurements around its first crossing (NaN
    when it never crosses, or crosses before its second measurement); ``cross_step`` is
    interpolated the same way, ``eta_cross`` is the scheduled step there and ``edge_cross``
    ``η·λ_max/2``. ``converged``: both of the pipeline's criteria on the run's curves.
    """
    keys = [k for k in keys if k in runs]
    done = runs[runs["status"] == "done"]
    target = float(done["train_loss"].max()) if len(done) else math.nan
    rows = []
    for r in runs.to_dict("records"):
        c = curves
        for k in keys:
            c = c[c[k] == r[k]]
        row = {**{k: r[k] for k in keys}, "lr": r["lr"], "status": r["status"],
               "target": target, "hessian_top_matched": math.nan, "cross_step": math.nan,
               "eta_cross": math.nan, "edge_cross": math.nan}
        wide = c.pivot_table(index="step", columns="metric", values="value")
        if r["status"] == "done" and {"train_loss", "hessian_top"} <= set(wide.columns):
            w = wide[["train_loss", "hessian_top"]].dropna()
            below = np.flatnonzero(w["train_loss"].to_numpy() <= target)
            if len(below) and below[0] > 0:
                k = below[0]
                (l0, h0), (l1, h1) = w.iloc[k - 1].to_numpy(), w.iloc[k].to_numpy()
                t0, t1 = float(w.index[k - 1]), float(w.index[k])
                s = (math.log(l0) - math.log(target)) / max(math.log(l0) - math.log(l1), 1e-300)
                top, step = float(h0 + s * (h1 - h0)), t0 + s * (t1 - t0)
                eta = step_at(step, r["lr"], scale)
                row |= {"hessian_top_matched": top, "cross_step": step, "eta_cross": eta,
                        "edge_cross": float(edge_of_stability(eta, top))}
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(curves) and len(out):
        acc = curves[curves["metric"] == "test_accuracy"].rename(
            columns={"value": "test_accuracy"})
        conv = curves_convergence(acc, keys, threshold=ACCURACY_THRESHOLD)[[*keys, "converged"]]
        loss = curves_loss_plateau(curves, keys, threshold=LOSS_THRESHOLD)
        out = out.merge(conv, on=keys, how="left").merge(loss, on=keys, how="left")
        out["converged"] = (out["converged"].astype("boolean").fillna(False)
                            & out["loss_converged"].astype("boolean").fillna(False)).astype(bool)
        out = out.drop(columns=["loss_converged", "loss_change"])
    else:
        out["converged"] = False
    return out


def _matched_phase(study: Study, scale: Scale, runs: Path, workers: int,
                   tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {"matched": matched_loss(tables["runs"], tables["curves"], scale)}


def _grid_phase(study: Study, scale: Scale, runs: Path, workers: int,
                tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The other methods without SAM on the learning-rate grid; every tuning run's λ_max.

    Not a tuning (nothing is chosen from it): where the common step sits in each method's own
    range, for the sensitivity figure, and the final ``λ_max`` of every held-out run (the
    dose-response of flatness to the step and to ``ρ``). Returns ``grid``: one row per stage,
    method and value, mean over the tuning seeds.
    """
    setting = dict(scale.settings[0])
    ms = methods(scale)
    others = [m for m in scale.methods if m != REFERENCE and not ms[m]["sam"]]
    points = [({**setting, "method": m, "lr": float(lr)}, seed) for m in others
              for lr in scale.options["lrs"] for seed in scale.tune_seeds]
    run_many([(runs / "tune" / run_name(p, seed), config(p, scale, seed, study.holdout))
              for p, seed in points], workers)
    rows = []
    tune = runs / "tune"
    for path in sorted(tune.iterdir()) if tune.is_dir() else []:
        parts = dict(p.split("=", 1) for p in path.name.split(",")[1:])
        method = path.name.split(",")[0]
        if method not in ms or "lr" not in parts or "seed" not in parts:
            continue
        r = final_values(path, {"holdout_accuracy": "test_accuracy",
                                "holdout_hessian_top": "hessian_top"})
        rows.append({**setting, "method": method, "lr": float(parts["lr"]),
                     "rho": float(parts.get("rho", 0.0)), "seed": int(parts["seed"]), **r})
    if not rows:
        return {"grid": pd.DataFrame()}
    per = pd.DataFrame(rows)
    out = []
    for (m, lr, rho), g in per.groupby(["method", "lr", "rho"], sort=True):
        ok = g[g["status"] == "done"]
        stage = "rho" if ms[m]["sam"] else "lr"
        out.append({**setting, "stage": stage, "method": m, "lr": lr, "rho": rho,
                    "value": rho if stage == "rho" else lr,
                    "status": "diverged" if (g["status"] == "diverged").any() else
                    ("done" if len(ok) == len(g) else sorted(set(g["status"]) - {"done"})[0]),
                    "holdout_accuracy": ok["holdout_accuracy"].mean() if len(ok) else math.nan,
                    "holdout_se": (ok["holdout_accuracy"].std(ddof=1) / math.sqrt(len(ok))
                                   if len(ok) > 1 else math.nan),
                    "holdout_seeds": len(ok),
                    "holdout_hessian_top": (ok["holdout_hessian_top"].mean() if len(ok)
                                            else math.nan),
                    "tuned": m == REFERENCE or bool(ms[m]["sam"])})
    return {"grid": pd.DataFrame(out)}


def claims(scale: Scale) -> list[Claim | tuple[str, Claim]]:
    """Flatness at the end and at matched training loss, and test accuracy.

    Flatness (``λ_max``, lower is better): SAM flatter than SGD (the control); each diffusion
    flatter than SGD and than SAM (decentralization reaching SAM's flatness); diffusion with
    SAM flatter than diffusion (they combine) and than SAM; the ring flatter than the next
    graph (the spectral gap); local SGD flatter than SGD, the longer period flatter than the
    shorter. Accuracy: each against SGD, and SAM's gain on top of diffusion.
    """
    have = set(scale.methods)
    tops, hs = scale.options["topologies"], sorted(scale.options["local_steps"])
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
    flat += [(f"local-sgd-H{b}", f"local-sgd-H{a}", f"local SGD (H={b}) flatter than H={a}")
             for a, b in zip(hs, hs[1:], strict=False)]
    acc: list[tuple[str, str, str]] = [("sam", "sgd", "SAM more accurate than SGD")]
    for t in tops:
        acc += [(f"diffusion-{t}", "sgd", f"diffusion ({t}) more accurate than SGD"),
                (f"diffusion-sam-{t}", f"diffusion-{t}",
                 f"SAM on diffusion ({t}) more accurate than diffusion")]
    acc += [(f"local-sgd-H{h}", "sgd", f"local SGD (H={h}) more accurate than SGD") for h in hs]
    out: list[Claim | tuple[str, Claim]] = []
    for s in scale.settings:
        where = dict(s)
        out += [Claim(text, a, b, "less", where, margin=FLAT, relative=True, why=WHY_FLAT,
                      value="hessian_top") for a, b, text in flat if {a, b} <= have]
        out += [("matched", Claim(text, a, b, "less", where, margin=FLAT, relative=True,
                                  why=WHY_FLAT + "; at L*, where the steps differ",
                                  value="hessian_top_matched"))
                for a, b, text in flat if {a, b} <= have]
        out += [Claim(text, a, b, "greater", where, margin=POINT, why=WHY_ACCURACY)
                for a, b, text in acc if {a, b} <= have]
    return out


def _holdout_samples(acc: pd.Series) -> int | None:
    """The held-out split's size, read off one-seed accuracies (k/n for integer k)."""
    a = acc.dropna().to_numpy(float)
    for n in range(50, 5001):
        if len(a) and np.all(np.abs(a * n - np.round(a * n)) < 1e-6):
            return n
    return None


def _f(x: float, fmt: str = ".3g") -> str:
    return "–" if not (isinstance(x, int | float) and math.isfinite(x)) else f"{x:{fmt}}"


def appendix(tables: dict[str, pd.DataFrame], scale: Scale) -> str:
    """Matched loss with its steps, λ_max along training beside η·λ_max/2, the tuning grids."""
    lines: list[str] = []
    tuning = tables.get("tuning", pd.DataFrame())
    if len(tuning) and "holdout_seeds" in tuning and int(tuning["holdout_seeds"].max()) == 1:
        lines += ["**Tuning on one seed.** The committed tuning ran on seed 0 only, under the "
                  "old rule (the best held-out accuracy, a tie with an interior value "
                  "bracketed). With one seed the standard error is undefined and the new rule "
                  "(robust_choice) reduces to the best value; the choices decided by at most 2 "
                  "held-out samples are listed below. A re-run tunes on seeds "
                  f"{', '.join(map(str, scale.tune_seeds))}.", ""]
        n = _holdout_samples(tuning["holdout_accuracy"])
        if n:
            lines += ["| stage | method | chosen | held-out samples right (chosen / runner-up) "
                      "| runner-up | margin (samples) |", "|---|---|---|---|---|---|"]
            for (stage, m), g in tuning.groupby(["stage", "method"], sort=False):
                ok = g[g["status"] == "done"].sort_values("holdout_accuracy", ascending=False)
                pick = ok[ok["chosen"]]
                if pick.empty or len(ok) < 2:
                    continue
                best = int(round(pick["holdout_accuracy"].iloc[0] * n))
                rest = ok[~ok["chosen"]]
                second = int(round(rest["holdout_accuracy"].iloc[0] * n))
                margin = best - second
                lines.append(f"| {stage} | {m} | {pick['value'].iloc[0]:g} | {best} / {second} "
                             f"of {n} | {rest['value'].iloc[0]:g} | {margin}"
                             f"{' (≤ 2)' if margin <= 2 else ''} |")
            lines.append("")
    matched = tables.get("matched")
    verdicts = tables.get("verdicts", pd.DataFrame())
    if matched is not None and len(matched):
        target = float(matched["target"].iloc[0])
        lines += [f"**λ_max at matched training loss L\\* = {target:.3g}**: the step where each "
                  "method crosses L\\* (interpolated in log loss between λ_max measurements, "
                  "mean over seeds, their range) and the scheduled η there. Under a cosine "
                  "schedule a matched loss is not a matched step: λ_max tracks 2/η, so a "
                  "method crossing earlier is measured at a larger η.", "",
                  "| method | crossing step (range) | η there | λ_max at L\\* | η·λ_max/2 | "
                  "seeds |", "|---|---|---|---|---|---|"]
        for m, g in matched.groupby("method", sort=False):
            ok = g.dropna(subset=["hessian_top_matched"])
            if ok.empty:
                lines.append(f"| {m} | – | – | – | – | 0 |")
                continue
            top = ok["hessian_top_matched"]
            se = top.std(ddof=1) / math.sqrt(len(top)) if len(top) > 1 else math.nan
            lines.append(f"| {m} | {ok['cross_step'].mean():.0f} ({ok['cross_step'].min():.0f}–"
                         f"{ok['cross_step'].max():.0f}) | {ok['eta_cross'].mean():.3g} | "
                         f"{top.mean():.3g}{f' ± {se:.2g}' if math.isfinite(se) else ''} | "
                         f"{ok['edge_cross'].mean():.2f} | {len(ok)} |")
        v = verdicts[verdicts["metric"] == "hessian_top_matched"] if len(verdicts) else verdicts
        if len(v):
            steps = matched.groupby("method")["cross_step"].mean()
            etas = matched.groupby("method")["eta_cross"].mean()
            lines += ["", "Matched-loss verdicts with the steps they compare (a's and b's mean "
                      "crossing step and η; *steps differ* when they are more than one λ_max "
                      "measurement interval apart):", "",
                      "| claim | verdict | a: step (η) | b: step (η) | note |",
                      "|---|---|---|---|---|"]
            interval = scale.options["flat_every"]
            for r in v.itertuples():
                sa, sb = steps.get(r.a, math.nan), steps.get(r.b, math.nan)
                differ = math.isfinite(sa) and math.isfinite(sb) and abs(sa - sb) > interval
                lines.append(f"| {r.claim} | {r.verdict} | {_f(sa, '.0f')} "
                             f"({_f(etas.get(r.a, math.nan))}) | {_f(sb, '.0f')} "
                             f"({_f(etas.get(r.b, math.nan))}) | "
                             f"{'steps differ: compares η as much as the method' if differ else ''}"
                             " |")
        lines.append("")
    curves = tables.get("curves", pd.DataFrame())
    runs = tables["runs"]
    if len(curves) and (curves["metric"] == "hessian_top").any():
        lr = runs.groupby("method")["lr"].first()
        top = curves[curves["metric"] == "hessian_top"]
        mean = top.groupby(["method", "step"])["value"].mean().unstack("step")
        steps = [s for s in mean.columns if s > 0]
        lines += ["**λ_max along training** (mean over seeds) with η·λ_max/2 in brackets, η the "
                  "scheduled step at that measurement (cosine from the common step to 0; 1 is "
                  "the edge of stability). At the end η = 0: the final λ_max of every method "
                  "is measured at the same vanishing step.", "",
                  "| method | " + " | ".join(f"{s:g}" for s in steps) + " |",
                  "|---" * (len(steps) + 1) + "|"]
        for m in dict.fromkeys(runs["method"]):
            if m not in mean.index:
                continue
            cells = [f"{mean.loc[m, s]:.3g} ({edge_of_stability(step_at(s, lr[m], scale), mean.loc[m, s]):.2f})"  # noqa: E501
                     for s in steps]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    grid = tables.get("grid")
    if grid is not None and len(grid):
        lines += ["**Tuning grids with their final λ_max** (held-out runs; mean over their "
                  "seeds). η at that measurement is 0 (the schedule's end), so η₀·λ_max/2 with "
                  "η₀ the run's peak step is shown: the final λ_max tracks 2/η₀ across the "
                  "grid far more than it tracks the method. Rows not tuned show where the "
                  "common step sits in that method's own range (not used).", "",
                  "| stage | method | lr | ρ | held-out acc. (%) | λ_max | η₀·λ_max/2 | seeds "
                  "| tuned |", "|---|---|---|---|---|---|---|---|---|"]
        for r in grid.itertuples(index=False):
            acc = 100 * r.holdout_accuracy
            lines.append(f"| {r.stage} | {r.method} | {r.lr:g} | {r.rho:g} | {_f(acc, '.1f')} "
                         f"| {_f(r.holdout_hessian_top)} | "
                         f"{_f(edge_of_stability(r.lr, r.holdout_hessian_top), '.2f')} | "
                         f"{r.holdout_seeds} | {'yes' if r.tuned else ''} |")
    return "\n".join(lines)


def figures(tables: dict[str, pd.DataFrame], scale: Scale) -> dict[str, Any]:
    """λ_max along training, at the end and the consensus gap; held-out sensitivity to lr, ρ."""
    runs = tables["runs"]
    status = runs[["method", "seed", "status"]]
    curves = tables["curves"].drop(columns=["status"], errors="ignore").merge(
        status, on=["method", "seed"], how="left")
    matched = tables.get("matched")
    if matched is not None and "hessian_top_matched" in matched:
        runs = runs.merge(matched[["method", "seed", "hessian_top_matched"]],
                          on=["method", "seed"], how="left")
    out = {"": implicit_flatness(runs, curves, methods=list(dict.fromkeys(runs["method"])))}
    grid = tables.get("grid")
    if grid is not None and len(grid):
        tuning = tables.get("tuning", pd.DataFrame())
        pick = (set(zip(tuning.loc[tuning["chosen"], "stage"], tuning.loc[tuning["chosen"],
                                                                           "method"],
                        tuning.loc[tuning["chosen"], "value"], strict=True))
                if len(tuning) else set())
        g = grid.assign(chosen=[(s, m, v) in pick for s, m, v in
                                zip(grid["stage"], grid["method"], grid["value"], strict=True)])
        for stage, suffix in (("lr", "sensitivity"), ("rho", "sensitivity_rho")):
            t = g[g["stage"] == stage].rename(columns={"value": stage, stage: f"{stage}_"})
            if len(t):
                out[suffix] = sensitivity(t, stage)
    return out


STUDY = Study(
    name="implicit_flatness",
    question="Is the flatness decentralization brings the same as SAM's: does diffusion reach "
             "SAM's λ_max, at the end and at matched training loss, does SAM on every node add "
             "to it, and how do the spectral gap and local SGD's period move it?",
    scales=SCALES, config=config, run_name=run_name, claims=claims, stages=STAGES,
    measures=FINAL, extra=extra, curves=CURVES,
    phases=(_grid_phase, _matched_phase),
    summary_columns=("test_accuracy", "train_loss", "grad_norm", "hessian_top",
                     "hessian_trace", "sharpness", "consensus_during", "gap_during"),
    setting_label=lambda s: ", ".join(f"n={v}" for k, v in s.items() if k == "nodes"),
    step_size=_step_size, figures=figures, appendix=appendix,
    protocol="Every method trains at sgd's tuned learning rate (the second `lr` stage hands it "
             "on), with a cosine schedule to 0; SAM methods at their tuned ρ. λ_max claims "
             "carry a relative margin (10% of the reference method's mean λ_max), accuracy "
             "claims one point. The η·λ_max/2 column takes η at the final measurement, the "
             "end of the schedule (η = 0); λ_max along training and at matched loss, with "
             "their η, are in the tables after the verdicts.")
