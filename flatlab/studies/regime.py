"""The flatness paper's claims tested inside the large-batch regime (issue 33, part 2).

Cao, Wu, Yuan and Sayed (2024; docs/reference/algorithms.md §13.4) claim that where centralized
SGD with a large batch generalizes worse, decentralized training escapes its sharp minima and
ends flatter, consensus flattest and diffusion with the best balance of flatness and
optimization. The trade-off study (:mod:`flatlab.studies.tradeoff`) never entered that regime;
:mod:`flatlab.studies.large_batch` searches for it. This study takes one setting of that search
(the scale's ``setting``: training-set size, model, label noise, epoch budget, large batch) and
tests the claims there, at both batches.

Protocol. mnist1d (``N`` training samples, 1000 test), ``n = 16`` nodes with an iid split (the
search's), the same **budget of epochs** at the small total batch (``16 × 2 = 32``) and the large
one, so the large batch takes ``large / 32`` times fewer steps; a cosine schedule with a 5%
warm-up, no weight decay. Per batch, centralized SGD's step ``μ`` is tuned on 10% held out over
3 seeds (bracketed, the search's grids) and **every method of that batch trains at it** (the
paper compares at the same ``μ``). Methods: centralized SGD (an exact all-reduce),
``consensus-<graph>`` (DGD form) and ``diffusion-<graph>`` (ATC) on graphs of different
spectral gaps. Measured along training: training loss, test accuracy, ``‖∇f(x̄)‖``, the
consensus distance ``Ξ²``, λ_max of x̄, and the disagreement through the curvature
(``disagreement``: ``tr(HΣ)`` and the gap ``(1/n) Σ f(x_i) − f(x̄)``, the mechanism of
:mod:`flatlab.studies.mechanism`); at the end also the Hessian trace and the worst-case
adaptive sharpness. λ_max at the end is measured where the cosine schedule has brought the step
to 0, the same for every method.

Claims, per batch and graph (seed-paired, Holm over the family, margins fixed here): each
decentralized method flatter than centralized SGD and consensus flatter than diffusion (λ_max,
10% of the reference's mean); diffusion more accurate than consensus and than centralized SGD
(one point); diffusion better optimized than centralized SGD (training loss, 10%). The premise
itself (centralized SGD's small batch against its large one) is the search's claim; its gap is
shown in the appendix from these runs.

Run: ``python -m flatlab.studies regime --scale small`` once the search has found a setting
(``--estimate`` first; resumable; ``--report``, ``--rejudge`` as every study).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.experiment.config import OptimConfig
from flatlab.experiment.evidence import Claim
from flatlab.experiment.many import run_many
from flatlab.experiment.schedules import lr_at
from flatlab.experiment.study import final_values
from flatlab.studies import large_batch
from flatlab.studies.pipeline import run_curves
from flatlab.studies.spec import Point, Scale, Stage, Study
from flatlab.studies.tradeoff import escape_table

__all__ = ["STUDY", "SCALES", "config", "claims", "methods", "REFERENCE"]

#: The method whose tuned step every method of a batch trains at.
REFERENCE = "centralized"
#: Nodes of every run (the search's all-reduce).
NODES = large_batch.NODES
#: λ_max and training loss claims: 10% of the reference method's mean (relative margins).
TENTH = 0.1
WHY_LAMBDA = ("10% of the reference's mean λ_max: about one method's seed-to-seed spread; a "
              "smaller flatness gap is not one the paper's ordering is worth stating for")
WHY_LOSS = ("10% of centralized SGD's final training loss: the loss criterion calls a run "
            "settled while its smoothed loss moves by less than 10% over its last 20%")
POINT = 0.01
WHY_POINT = "one accuracy point: 10 of the 1000 test samples"

MEASURES = {"test_accuracy": "test_accuracy", "train_loss": "train_loss",
            "grad_norm": "grad_norm", "consensus_distance": "consensus_distance",
            "hessian_top": "hessian_top", "hessian_trace": "hessian_trace",
            "sharpness": "sharpness_worst", "disagreement_curvature": "disagreement_curvature",
            "disagreement_gap": "disagreement_gap"}
CURVES = ("train_loss", "test_accuracy", "grad_norm", "consensus_distance", "hessian_top",
          "disagreement_curvature", "disagreement_gap")


def methods(topologies: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Every method: centralized SGD, then consensus and diffusion on each graph."""
    out = {REFERENCE: {"algorithm": "centralized", "topology": "complete"}}
    for t in topologies:
        out[f"consensus-{t}"] = {"algorithm": "consensus", "topology": t}
        out[f"diffusion-{t}"] = {"algorithm": "diffusion", "topology": t}
    return out


def _scale(setting: dict[str, Any], seeds: tuple[int, ...], tune_seeds: tuple[int, ...],
           small: int, topologies: tuple[str, ...], **options: Any) -> Scale:
    batches = (("small-batch", small), ("large-batch", int(setting["large"])))
    scale = Scale(settings=tuple({"regime": r, "batch": b} for r, b in batches),
                  methods=tuple(methods(topologies)), seeds=seeds, tune_seeds=tune_seeds,
                  steps=max(large_batch.steps_of(setting, b) for _, b in batches), every=0,
                  options={"setting": setting, "small": small, "topologies": topologies,
                           **options})
    # the search's check: each node's share of the tuning split fills its batch
    large_batch.check_scale(Scale(settings=(setting,), methods=("small", "large"), seeds=seeds,
                                  steps=1, every=0, options={"small": small}))
    return scale


#: The search's found settings (results/large_batch-small, both batches fitting, Holm over its
#: 7 settings): 400 epochs at 256 against 32 (+5.4 points [+1.1, +9.8]) and 800 epochs at 512
#: (+4.6 [+1.5, +7.8]). ``small`` runs the first (the larger mean gap, half the cost),
#: ``second`` the other.
SETTING = {"train": 1000, "model": "cnn1d", "noise": 0.0, "epochs": 400, "large": 256}
SECOND = {"train": 1000, "model": "cnn1d", "noise": 0.0, "epochs": 800, "large": 512}
_SMALL = dict(seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2), small=32,
              topologies=("ring", "exponential"), measurements=10, trace_matvecs=30,
              escape_seeds=(0, 1, 2), escape_steps=300, escape_every=50)
#: Step grids centred on the search's choices for each setting (its grids, extended where
#: they had to be): the same held-out split and seeds, so the search's bracket is re-measured
#: here rather than re-extended.
LRS = {"small": {"small-batch": (0.1, 0.3, 0.9), "large-batch": (0.09, 0.3, 1.0)},
       "second": {"small-batch": (0.03, 0.1, 0.3), "large-batch": (0.09, 0.3, 1.0)}}

SCALES = {
    # 2 CPU cores: 5 methods x 2 batches x 5 seeds; the small batch's 12,500 steps dominate
    "small": _scale(SETTING, lrs=LRS["small"], **_SMALL),
    # the search's other found setting: 25,000 small-batch steps a run, about twice the time
    "second": _scale(SECOND, lrs=LRS["second"], **_SMALL),
    # the test suite's: a few steps, so that the study cannot rot
    "tiny": _scale({"train": 200, "model": "mlp", "noise": 0.0, "epochs": 4, "large": 64},
                   (0, 1), (0, 1), 16, ("ring",),
                   lrs={"small-batch": (0.1, 0.3), "large-batch": (0.3, 1.0)},
                   measurements=2, trace_matvecs=6, extensions=1, train_subset=128,
                   escape_seeds=(0,), escape_steps=4, escape_every=2,
                   curvature_subset=64, hidden=[16]),
}


def _lr_grid(point: Point, scale: Scale) -> tuple[float, ...]:
    return tuple(scale.options["lrs"][point["regime"]]) if point["method"] == REFERENCE else ()


def _common_lr(point: Point, chosen: Mapping[str, float]) -> float:
    """The reference's step, NaN when it has none.

    NaN makes the pipeline mark the method untrainable; None would leave the step out of the
    point, and its config would fail.
    """
    return float(chosen.get(REFERENCE, math.nan))


STAGES = (Stage("lr", _lr_grid, fixed=_common_lr,
                why="centralized SGD's step per batch, bracketed on held-out data over 3 "
                    "seeds; every method of that batch trains at it (the paper's same μ)"),)


def steps_of(point: Point, scale: Scale) -> int:
    """The steps of a run: the epoch budget over the training set at the point's batch."""
    return large_batch.steps_of(scale.options["setting"], int(point["batch"]))


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point: its method at its batch for the setting's epochs."""
    o, s = scale.options, scale.options["setting"]
    m = methods(o["topologies"])[point["method"]]
    steps, final = steps_of(point, scale), holdout == 0.0
    every = max(1, steps // o["measurements"]) if final else steps
    metrics = ["loss", "accuracy"]
    options: dict[str, Any] = {}
    if final:
        metrics += ["consensus_distance", "grad_norm", "hessian_top", "disagreement",
                    "hessian_trace", "sharpness_worst"]
        once = every * (steps // every + 1)  # a period past the end: at step 0 and the last
        options = {"hessian_trace": {"every": once, "num_matvecs": o["trace_matvecs"]},
                   "sharpness_worst": {"every": once, "adaptive": True}}
    model: dict[str, Any] = {"name": s["model"], "options": {}}
    if "hidden" in o:
        model["options"]["hidden"] = list(o["hidden"])
    return {"name": "regime", "seed": seed, "device": "auto",
            "data": large_batch.data_of(s, int(point["batch"]) // NODES, seed, holdout),
            "model": model,
            "topology": {"name": m["topology"], "nodes": NODES},
            "algorithm": {"name": m["algorithm"], "params": {}},
            "optim": {"lr": float(point["lr"]), "schedule": "cosine",
                      "warmup": max(1, steps // 20), "weight_decay": 0.0},
            "train": {"steps": steps},
            "measure": {"every": every, "per_node": False, "metrics": metrics,
                        "train_subset": o.get("train_subset", 2048),
                        "curvature_subset": o.get("curvature_subset", 512),
                        "options": options},
            "checkpoint_every": max(steps // 4, 1)}


def run_name(point: Point, seed: int) -> str:
    """``large-batch,diffusion-ring,lr=1,seed=0``."""
    return f"{point['regime']},{point['method']},lr={float(point['lr']):g},seed={seed}"


def _step_size(point: Point, scale: Scale) -> float:
    """η at the final λ_max measurement: the end of the cosine schedule (the same, 0, for all)."""
    steps = steps_of(point, scale)
    return lr_at(steps, steps, OptimConfig(lr=float(point["lr"]), schedule="cosine",
                                           warmup=max(1, steps // 20)))


def claims(scale: Scale) -> list[Claim]:
    """The paper's ordering, per batch and graph (the trade-off study's claims, in the regime).

    λ_max (less): diffusion and consensus each flatter than centralized SGD, consensus flatter
    than diffusion; test accuracy (greater): diffusion over consensus and over centralized SGD;
    training loss (less): diffusion better optimized than centralized SGD.
    """
    out = []
    for s in scale.settings:
        where = dict(s)
        for t in scale.options["topologies"]:
            c, d = f"consensus-{t}", f"diffusion-{t}"
            out += [
                Claim(f"diffusion ({t}) flatter than centralized", d, REFERENCE, "less", where,
                      margin=TENTH, relative=True, why=WHY_LAMBDA, value="hessian_top"),
                Claim(f"consensus ({t}) flatter than centralized", c, REFERENCE, "less", where,
                      margin=TENTH, relative=True, why=WHY_LAMBDA, value="hessian_top"),
                Claim(f"consensus ({t}) flatter than diffusion", c, d, "less", where,
                      margin=TENTH, relative=True, why=WHY_LAMBDA, value="hessian_top"),
                Claim(f"diffusion ({t}) more accurate than consensus", d, c, "greater", where,
                      margin=POINT, why=WHY_POINT),
                Claim(f"diffusion ({t}) more accurate than centralized", d, REFERENCE,
                      "greater", where, margin=POINT, why=WHY_POINT),
                Claim(f"diffusion ({t}) better optimized than centralized", d, REFERENCE,
                      "less", where, margin=TENTH, relative=True, why=WHY_LOSS,
                      value="train_loss")]
    return out


ESCAPE_METRICS = ("train_loss", "test_accuracy", "hessian_top", "hessian_trace",
                  "consensus_distance", "disagreement_curvature")


def escape(study: Study, scale: Scale, runs: Path, workers: int,
           tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every method restarted at large-batch centralized SGD's final x̄ (per escape seed).

    The start is the minimum centralized SGD reached at the large batch (the end of its cosine
    schedule); every method continues from it at the same batch and at that batch's tuned
    step, held constant (a step of 0 would leave any minimum alone), for ``escape_steps``,
    measured every ``escape_every``: how fast each leaves it, and how flat it ends.
    """
    o = scale.options
    done = tables["runs"]
    done = done[(done["regime"] == "large-batch") & (done["status"] == "done")]
    central = done[done["method"] == REFERENCE]
    pts, jobs = [], []
    for seed in o["escape_seeds"]:
        row = central[central["seed"] == seed]
        if row.empty:
            print(f"escape: no large-batch minimum for seed {seed} (centralized SGD's final "
                  "run did not finish)")
            continue
        r = row.iloc[0]
        point = {"regime": r["regime"], "batch": int(r["batch"]), "lr": float(r["lr"])}
        src = runs / "final" / run_name({**point, "method": REFERENCE}, seed)
        for method in scale.methods:
            cfg = config({**point, "method": method}, scale, seed, 0.0)
            every = o["escape_every"]
            steps = every * max(1, o["escape_steps"] // every)
            cfg["optim"] = {**cfg["optim"], "schedule": "constant", "warmup": 0}
            cfg["train"] = {"steps": steps}
            cfg["measure"] = {**cfg["measure"], "every": every,
                              "metrics": ["loss", "accuracy", "consensus_distance",
                                          "hessian_top", "hessian_trace", "disagreement"],
                              "options": {"hessian_trace": {"every": steps,
                                                            "num_matvecs": o["trace_matvecs"]}}}
            cfg["init_from"] = str(src)
            pts.append((method, point["lr"], seed))
            jobs.append((runs / "escape" / run_name({**point, "method": method}, seed), cfg))
    run_many(jobs, workers)
    parts = []
    for (method, lr, seed), (path, _) in zip(pts, jobs, strict=True):
        c = run_curves(Path(path), ESCAPE_METRICS, lr=False)
        st = final_values(path, {})["status"]
        graph = methods(o["topologies"])[method]["topology"]
        parts.append(c.assign(method=method, topology=graph, lr=lr, seed=seed, status=st))
    cols = ["step", "metric", "value", "method", "topology", "lr", "seed", "status"]
    return {"escape": pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)}


def label(setting: Mapping[str, Any]) -> str:
    """``small-batch (32)``."""
    return f"{setting['regime']} ({setting['batch']})"


def appendix(tables: Mapping[str, pd.DataFrame], scale: Scale) -> str:
    """The premise from these runs, and the disagreement through the curvature at the end."""
    runs = tables["runs"]
    done = runs[(runs["status"] == "done") & (runs["method"] == REFERENCE)]
    acc = (done.groupby("regime")["test_accuracy"].agg(["mean", "count"])
           if "test_accuracy" in done else pd.DataFrame(columns=["mean", "count"]))
    s = scale.options["setting"]
    lines = ["## The premise in these runs", "",
             f"Setting: {large_batch.label(s)}. Centralized SGD's test accuracy per batch (the "
             "search judges the gap; here it is only shown):", "",
             "| batch | test accuracy (%) | runs |", "|---|---|---|"]
    for regime, r in acc.iterrows():
        lines.append(f"| {regime} | {100 * r['mean']:.1f} | {int(r['count'])} |")
    if acc.empty:
        lines.append("| – | no finished run of centralized SGD | 0 |")
    if {"disagreement_curvature", "disagreement_gap"} <= set(runs):
        lines += ["", "## The mechanism at the end of training", "",
                  "tr(HΣ), the disagreement through the curvature, and the gap "
                  "(1/n) Σ f(x_i) − f(x̄), mean over seeds:", "",
                  "| batch | method | tr(HΣ) | gap | runs |", "|---|---|---|---|---|"]
        ok = runs[runs["status"] == "done"]
        for (regime, method), g in ok.groupby(["regime", "method"], sort=False):
            lines.append(f"| {regime} | {method} | {g['disagreement_curvature'].mean():.3g} | "
                         f"{g['disagreement_gap'].mean():.3g} | {len(g)} |")
    esc = tables.get("escape")
    lines += ["", "## Escape from centralized SGD's large-batch minimum", "",
              f"Every method restarted at the final x̄ of large-batch centralized SGD (seeds "
              f"{', '.join(map(str, scale.options['escape_seeds']))}), "
              f"{scale.options['escape_steps']} steps at the large batch and its tuned step "
              "held constant; illustrative (few seeds), no claim is judged on it. λ_max beside "
              "η·λ_max/2 (1 is the edge of stability).", "",
              *escape_table(esc if esc is not None else pd.DataFrame())]
    return "\n".join(lines) + "\n"


STUDY = Study(
    name="regime",
    question="Inside the large-batch regime (a setting where centralized SGD's large batch "
             "generalizes worse), do decentralized methods end flatter than centralized SGD, "
             "consensus flattest, and diffusion with the best balance of flatness and "
             "optimization?",
    scales=SCALES, config=config, run_name=run_name, claims=claims, stages=STAGES,
    measures=MEASURES, curves=CURVES,
    summary_columns=("test_accuracy", "train_loss", "hessian_top", "hessian_trace",
                     "sharpness", "consensus_distance", "disagreement_curvature"),
    setting_label=label, step_size=_step_size, appendix=appendix, phases=(escape,),
    protocol="Centralized SGD (all-reduce), consensus and diffusion over 16 nodes (iid) at the "
             "search's small and large total batch for the same epochs; per batch, "
             "centralized SGD's step tuned on 10% held out over 3 seeds and shared by every "
             "method; cosine with a 5% warm-up, no weight decay. λ_max at the end is measured "
             "at the schedule's end (η = 0) for every method. The title's step count is the "
             "small batch's.")
