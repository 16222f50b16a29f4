"""Networks that fail: what lost exchanges and stragglers do to accuracy, disagreement, flatness.

Question: when a share ``p`` of the exchanges is lost, or a share ``q`` of the nodes misses each
step's gradient, do diffusion, gradient tracking, SGP and AD-PSGD keep their accuracy; how much
more do their nodes disagree; do they end flatter or sharper; and does the theory's second-moment
map predict how much the disagreement grows?

Protocol: mnist1d with the MLP, 16 nodes on a ring with an i.i.d. split (the stationary theory's
homogeneous noise), a **constant** step (the theory's setting; the fault level is the controlled
variable, nothing is tuned), a simulated clock (:class:`flatlab.comm.clock.WallClock`) so every
run also has a time axis. Each method loses exchanges in the form it can run under:

- ``diffusion`` and ``gradient-tracking``: each link of the ring is down in a round with
  probability ``p`` (:class:`~flatlab.topology.faults.LinkFailures`; both directions lost, the
  Metropolis weights recomputed, rounds doubly stochastic: tracking's invariant needs it);
- ``sgp`` (push-sum weights): each message is lost with probability ``p`` and its sender keeps
  the share (:class:`~flatlab.topology.faults.MessageDrops`, ``keeper: sender``: mass conserved);
- ``ad-psgd``: each tick's pairwise exchange is lost with probability ``p``
  (:class:`~flatlab.topology.faults.AsyncGossip`, ``p``), over its own asynchronous network.

Stragglers: each node misses a step's gradient with probability ``q`` (``train.stragglers``), in
every method. A method label is the algorithm and its fault: ``diffusion``, ``diffusion drops
0.5``, ``diffusion stragglers 0.5``.

Measured every ``every`` steps: the test accuracy of x̄, the training loss, the consensus distance
``Ξ²``, ``λ_max`` at x̄ (``hessian_top``) and ``sim_time``. ``cd_late``: the mean ``Ξ²`` over the
last quarter. The prediction (diffusion and AD-PSGD under drops, the two forms the theory covers
for these faults, :func:`flatlab.theory.stationary_disagreement_under_faults`): the ratio of the
stationary ``E Ξ²`` under the fault to that of the same network without it, for noise-dominated
directions (``η h ≪ 1``, where the ratio depends on the network alone); a run's
``log_cd_excess`` is ``log cd_late − log(predicted ratio)``, so that its seed-paired difference
with the fault-free run is the log of measured over predicted growth.

Run: ``python -m flatlab.studies faults --scale small`` (4 algorithms x 5 faults, 5 seeds).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.experiment.evidence import Claim
from flatlab.plots import faults
from flatlab.studies.pipeline import run_curves
from flatlab.studies.spec import Point, Scale, Study
from flatlab.theory import stationary_disagreement_under_faults
from flatlab.topology import make
from flatlab.topology.faults import AsyncGossip, LinkFailures

ALGORITHMS = ("diffusion", "gradient-tracking", "sgp", "ad-psgd")
#: Share of the run (from its end) whose measurements make ``cd_late``.
LATE = 0.25
#: Algorithms whose disagreement under drops the theory predicts, and the form it uses.
PREDICTED = {"diffusion": "diffusion", "ad-psgd": "consensus"}

WHY_ACCURACY = ("one accuracy point: below it a fault changes nothing a reader of the tables "
                "would act on")
WHY_DISAGREE = ("25% of the fault-free run's consensus distance: its seed-to-seed spread is "
                "about 10-20% at this scale")
WHY_FLAT = "10% of the fault-free run's λ_max: about its seed-to-seed spread"
WHY_PREDICT = ("a factor of 1.5 (log 1.5): the prediction assumes noise-dominated directions "
               "(η h ≪ 1) and noise independent of the fault, both approximations")
CURVES = ("train_loss", "test_accuracy", "consensus_distance", "hessian_top", "sim_time")


def label(algorithm: str, fault: str = "none", level: float = 0.0) -> str:
    """``diffusion``, ``diffusion drops 0.5`` or ``diffusion stragglers 0.2``."""
    return algorithm if fault == "none" else f"{algorithm} {fault} {level:g}"


def parse(method: str) -> tuple[str, str, float]:
    """``(algorithm, fault, level)`` of a method label."""
    parts = str(method).split(" ")
    if len(parts) == 1:
        return parts[0], "none", 0.0
    return parts[0], parts[1], float(parts[2])


def _scale(nodes: int, steps: int, every: int, seeds: tuple[int, ...],
           levels: tuple[float, ...], algorithms: tuple[str, ...] = ALGORITHMS,
           **options: Any) -> Scale:
    names = [label(a, f, lv) for a in algorithms for f, lv in
             [("none", 0.0)] + [(f, lv) for f in ("drops", "stragglers") for lv in levels]]
    return Scale(settings=({},), methods=tuple(names), seeds=seeds, tune_seeds=(), steps=steps,
                 every=every, options={"nodes": nodes, "levels": levels, **options})


SCALES = {
    # 16 x 16 = 256 of mnist1d's 4000 training samples a step, 1500 constant steps
    "small": _scale(16, 1500, 100, (0, 1, 2, 3, 4), (0.2, 0.5), batch=16, lr=0.05),
    # the test suite's
    "tiny": _scale(4, 12, 4, (0, 1), (0.5,), batch=8, lr=0.05, train_subset=128,
                   curvature_subset=64),
}


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point (nothing is tuned: no held-out runs)."""
    o = scale.options
    algorithm, fault, level = parse(point["method"])
    topology: dict[str, Any] = {"name": "ring", "nodes": o["nodes"]}
    if algorithm == "sgp":
        topology["weights"] = "push-sum"
    if algorithm == "ad-psgd":
        topology["faults"] = {"model": "async_gossip",
                              **({"p": level} if fault == "drops" else {})}
    elif fault == "drops":
        topology["faults"] = ({"model": "message_drops", "p": level, "keeper": "sender"}
                              if algorithm == "sgp" else {"model": "link_failures", "p": level})
    return {"name": "faults", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "iid", "seed": seed,
                     "batch_size": o["batch"], "holdout": holdout},
            "model": {"name": "mlp"},
            "topology": topology,
            "algorithm": {"name": algorithm, "params": {}},
            "optim": {"lr": o["lr"], "schedule": "constant", "warmup": 0},
            "train": {"steps": scale.steps,
                      "stragglers": level if fault == "stragglers" else 0.0},
            "clock": {"compute": 0.01, "compute_cv": 0.5, "latency": 0.001,
                      "bandwidth": 1.0e7},
            "measure": {"every": scale.every, "per_node": False,
                        "metrics": ["loss", "accuracy", "consensus_distance", "hessian_top"],
                        "train_subset": o.get("train_subset", 2048),
                        "curvature_subset": o.get("curvature_subset", 512)},
            "checkpoint_every": max(scale.steps // 2, 1)}


def run_name(point: Point, seed: int) -> str:
    """``diffusion drops 0.5,seed=0`` with the spaces as dashes."""
    return f"{str(point['method']).replace(' ', '-')},seed={seed}"


@functools.cache
def predicted_ratio(algorithm: str, level: float, nodes: int, lr: float) -> float:
    """The stationary ``E Ξ²`` under drops over that without, for noise-dominated directions.

    :func:`flatlab.theory.stationary_disagreement_under_faults` with ``h = 0`` and unit noise on
    the study's ring (link failures for diffusion, exact over every pattern up to 12 edges, else
    20,000 sampled rounds; lost ticks for AD-PSGD, in closed form). NaN where the theory does not
    cover the method.
    """
    if algorithm not in PREDICTED or level == 0:
        return 1.0 if level == 0 else math.nan

    base = make("ring", nodes)
    form = PREDICTED[algorithm]

    def xi2(p: float) -> float:
        faults = AsyncGossip(base, p=p) if algorithm == "ad-psgd" else LinkFailures(base, p)
        return stationary_disagreement_under_faults(faults, lr, 0.0, 1.0,
                                                    form=form).consensus_distance

    return xi2(level) / xi2(0.0)


def extra(path: Path, point: Point, scale: Scale) -> dict[str, Any]:
    """A final run's algorithm, fault and level, its late disagreement and the prediction."""
    algorithm, fault, level = parse(point["method"])
    out: dict[str, Any] = {"algorithm": algorithm, "fault": fault, "level": level,
                           "cd_late": math.nan, "sim_time": math.nan,
                           "predicted_ratio": math.nan, "log_cd_excess": math.nan}
    try:
        c = run_curves(path, ["consensus_distance", "sim_time"], lr=False)
    except Exception:  # noqa: BLE001  (a damaged or missing run reads as NaN, its status says why)
        return out
    late = c[(c["metric"] == "consensus_distance") & (c["step"] >= (1 - LATE) * scale.steps)]
    if len(late):
        out["cd_late"] = float(late["value"].mean())
    t = c[c["metric"] == "sim_time"].sort_values("step")
    if len(t):
        out["sim_time"] = float(t["value"].iloc[-1])
    if fault != "stragglers":
        ratio = predicted_ratio(algorithm, level, scale.options["nodes"], scale.options["lr"])
        out["predicted_ratio"] = ratio
        if out["cd_late"] > 0 and ratio > 0:
            out["log_cd_excess"] = math.log(out["cd_late"]) - math.log(ratio)
    return out


def claims(scale: Scale) -> list[Claim]:
    """Per algorithm: its faults' claims against its fault-free run, and the predictions.

    At the largest level: accuracy, disagreement and flatness under drops, accuracy under
    stragglers; where the theory covers the algorithm, the measured growth of the disagreement
    against the predicted one at every drop level.
    """
    top = max(scale.options["levels"])
    algorithms = list(dict.fromkeys(parse(m)[0] for m in scale.methods))
    out: list[Claim] = []
    for a in algorithms:
        drops, late = label(a, "drops", top), label(a, "stragglers", top)
        out += [
            Claim(f"{a} keeps its accuracy when {top:.0%} of exchanges are lost", drops, a,
                  margin=0.01, why=WHY_ACCURACY),
            Claim(f"{a}'s nodes disagree more when {top:.0%} of exchanges are lost", drops, a,
                  value="cd_late", margin=0.25, relative=True, why=WHY_DISAGREE),
            Claim(f"{a} ends flatter when {top:.0%} of exchanges are lost", drops, a, "less",
                  value="hessian_top", margin=0.1, relative=True, why=WHY_FLAT),
            Claim(f"{a} keeps its accuracy when {top:.0%} of gradients straggle", late, a,
                  margin=0.01, why=WHY_ACCURACY)]
        if a in PREDICTED:
            out += [Claim(f"{a}: the disagreement grows more than predicted at drops {lv:g}",
                          label(a, "drops", lv), a, value="log_cd_excess",
                          margin=math.log(1.5), why=WHY_PREDICT)
                    for lv in scale.options["levels"]]
    return out


def figures(tables: dict[str, pd.DataFrame], scale: Scale) -> dict[str, Any]:
    """Accuracy, disagreement (with the prediction) and λ_max against the level; time axis."""
    runs = tables.get("runs")
    if runs is None or not len(runs) or "cd_late" not in runs:
        return {}
    return {"": faults(runs, tables.get("curves"))}


def appendix(tables: dict[str, pd.DataFrame], scale: Scale) -> str:
    """Per method: accuracy, late disagreement (measured and predicted growth), λ_max, time."""
    runs = tables.get("runs")
    if runs is None or not len(runs) or "cd_late" not in runs:
        return ""
    done = runs[runs["status"] == "done"]
    base = done[done["fault"] == "none"].groupby(["algorithm", "seed"])["cd_late"].mean()
    lines = ["", "Per method, means over seeds: test accuracy of x̄, the late consensus distance "
             "Ξ² and its growth over the fault-free run (measured, paired by seed; predicted "
             "where the theory covers it), λ_max at x̄, and simulated seconds for the whole "
             "run (a synchronous round waits for its slowest node, an asynchronous one does "
             "not).", "",
             "| method | accuracy | Ξ² late | growth measured | growth predicted | λ_max | "
             "sim s |", "|---|---|---|---|---|---|---|"]
    for m in scale.methods:
        g = done[done["method"] == m]
        if not len(g):
            continue
        algorithm = parse(m)[0]
        ref = base.reindex(pd.MultiIndex.from_arrays(
            [[algorithm] * len(g), g["seed"].to_numpy()])).to_numpy()
        growth = (g["cd_late"].to_numpy() / ref)
        pred = g["predicted_ratio"].mean()
        lines.append(f"| {m} | {100 * g['test_accuracy'].mean():.1f}% | "
                     f"{g['cd_late'].mean():.3g} | {pd.Series(growth).mean():.3g} | "
                     f"{'' if math.isnan(pred) else f'{pred:.3g}'} | "
                     f"{g['hessian_top'].mean():.3g} | {g['sim_time'].mean():.3g} |")
    return "\n".join(lines)


STUDY = Study(
    name="faults",
    question="When exchanges are lost or gradients straggle, do diffusion, gradient tracking, "
             "SGP and AD-PSGD keep their accuracy, how much more do their nodes disagree, do "
             "they end flatter, and does the theory predict the disagreement's growth?",
    scales=SCALES, config=config, run_name=run_name, claims=claims,
    measures={"test_accuracy": "test_accuracy", "train_loss": "train_loss",
              "hessian_top": "hessian_top", "consensus_distance": "consensus_distance"},
    extra=extra, curves=CURVES,
    summary_columns=("test_accuracy", "train_loss", "cd_late", "hessian_top", "sim_time"),
    step_size=lambda point, scale: scale.options["lr"],
    setting_label=lambda s: "ring, iid",
    appendix=appendix, figures=figures,
    units={"cd_late": (1.0, "", 3), "hessian_top": (1.0, "", 2),
           "log_cd_excess": (1.0, "log", 2)},
    protocol="Constant step, no tuning (the fault and its level are the controlled variables). "
             "Every claim pairs a faulty run with the same algorithm's fault-free run of the "
             "same seed (initialization, split and minibatches alike). 'Late' values are means "
             "over the last quarter of the measurements. Drops are the form each method can "
             "run under (link failures for diffusion and gradient tracking, messages kept by "
             "the sender for SGP, lost ticks for AD-PSGD).")
