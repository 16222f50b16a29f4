"""The mechanism: does disagreement between nodes act on x̄ as curvature-weighted noise?

Question: for node models ``x_i = x̄ + d_i``, the nodes' mean loss is ``f(x̄) + ½ tr(HΣ)`` up to
third order (``Σ = (1/n) Σ_i d_i d_iᵀ``; Zhu et al., ICML 2023), so the disagreement acts as a
perturbation of x̄ weighted by the curvature: decentralized SGD implicitly penalizes
``tr(HΣ)``. During training, on a real network: does the second-order term explain the measured
gap ``(1/n) Σ f(x_i) − f(x̄)``; does the disagreement concentrate in the top curvature directions
beyond chance; does the linear theory (:func:`flatlab.theory.stationary_disagreement`, fed with
the noise measured along the top eigenvectors) predict ``tr(HΣ)``; and does the accumulated
``∫ tr(HΣ) dt`` order the final ``λ_max`` across graphs and forms?

Protocol: mnist1d with the 1-D CNN, ``n`` nodes with an i.i.d. split (the theory's homogeneous
noise; heterogeneity is measured and reported, not modelled), plain SGD at a **constant** step
(the stationary theory's setting), two steps as the study's setting, no tuning: the steps are
the controlled variable (``lr`` 0.05 and 0.2 sit inside the 0.1-0.9 range that the
implicit-flatness study bracketed for centralized SGD at this batch). Methods: ``sgd``
(centralized minibatch SGD: no disagreement, the zero), ``diffusion-<graph>`` (ATC) and
``consensus-<graph>`` (CTA/DGD) on a ring and the exponential graph, ``consensus-complete``
(on the complete graph ATC is exactly centralized, CTA is not) and ``local-sgd-H<h>`` (ATC over
the complete graph every ``H`` steps). Measured every ``every`` steps (not a multiple of ``H``:
Local SGD is then seen at every phase of its period): ``disagreement`` (exact ``tr(HΣ)``, the
gap and ``½ tr(HΣ)``), ``disagreement_alignment`` (top-``k`` share and ``k/P``),
``edge_of_stability`` and ``hessian_top`` at x̄ (one Lanczos run for both), ``Ξ²``, the losses
and accuracy.

The ``prediction`` phase, per final run: at the final x̄, the top-``k`` Hessian eigenpairs
``(h_j, v_j)`` (Lanczos, curvature subset), the minibatch noise along them ``s_j`` and
``tr(HS̄)`` (:func:`flatlab.measures.noise_along`, the run's own oracle and batches), then
``stationary_disagreement(η, h, s, topology, form, local_steps, bulk_hs = tr(HS̄) − Σ h_j s_j)``
against the measured ``tr(HΣ)`` averaged over the last quarter of training.

Run: ``python -m flatlab.studies mechanism --scale small`` (16 nodes, 7 methods, 2 steps, 5
seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flatlab.curvature import hessian_operator, lanczos
from flatlab.errors import FlatlabError
from flatlab.experiment import build, load_config
from flatlab.experiment.evidence import Claim, curves_loss_plateau
from flatlab.experiment.rundir import average_model
from flatlab.measures import model_loss, noise_along
from flatlab.measures.named import rounding_level
from flatlab.plots import mechanism
from flatlab.studies.pipeline import LOSS_THRESHOLD, run_curves
from flatlab.studies.spec import Point, Scale, Study
from flatlab.theory import stationary_disagreement
from flatlab.topology import make

#: Share of the run (from its end) whose measurements make the "late" averages.
LATE = 0.25
#: A disagreement at rounding level: ``Ξ² / ‖x̄‖²`` at or below the measures' rule for float32
#: (:func:`flatlab.measures.named.rounding_level`; centralized SGD's nodes, Local SGD right
#: after an averaging). Its ratios and shares are rounding noise and are left out of the ratio
#: and alignment columns.
FLOOR = rounding_level(torch.float32)
#: Phases of training for the appendix: (name, first share, last share) of the steps.
PHASES = (("early", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.0))

WHY_GAP = ("the gap over ½ tr(HΣ) within 1 ± 0.25, fixed before the runs: the third-order "
           "terms of a Taylor expansion at this disagreement, and ReLU kinks between x̄ and "
           "the nodes, may move the gap by tens of percent; within 25% the curvature explains "
           "the gap")
WHY_ALIGN = ("one percentage point of ‖D‖²_F: above chance (k/P, a fraction of a percent) by "
             "more than that is concentration worth reporting")
WHY_PREDICT = ("a factor of 2 (log 2 on the log scale): the linear theory's inputs (noise and "
               "curvature at the final x̄, the small-step bulk) are themselves uncertain by tens "
               "of percent")
WHY_ORDER = ("10% of the reference's mean: about the seed-to-seed spread of λ_max and of the "
             "accumulated tr(HΣ)")

CURVES = ("train_loss", "test_accuracy", "consensus_distance", "disagreement_curvature",
          "disagreement_gap", "disagreement_gap_predicted", "disagreement_alignment",
          "disagreement_alignment_chance", "edge_of_stability", "hessian_top",
          "consensus_distance_rel")


def _scale(nodes: int, steps: int, every: int, seeds: tuple[int, ...], lrs: tuple[float, ...],
           **options: Any) -> Scale:
    names = ["sgd"]
    for t in options["topologies"]:
        names += [f"diffusion-{t}", f"consensus-{t}"]
    names += ["consensus-complete"]
    names += [f"local-sgd-H{h}" for h in options["local_steps"]]
    return Scale(settings=tuple({"lr": lr} for lr in lrs), methods=tuple(names), seeds=seeds,
                 tune_seeds=(), steps=steps, every=every, options={"nodes": nodes, **options})


SCALES = {
    # 16 x 32 = 512 of mnist1d's 4000 training samples per step; 2000 constant steps, measured
    # every 125 (not a multiple of H = 4)
    "small": _scale(16, 2000, 125, (0, 1, 2, 3, 4), (0.05, 0.2), batch=32,
                    topologies=("ring", "exponential"), local_steps=(4,), k=5, probes=16,
                    draws=8),
    # the test suite's
    "tiny": _scale(4, 30, 10, (0, 1), (0.1,), batch=8, topologies=("ring",), local_steps=(3,),
                   k=2, probes=4, draws=2, train_subset=256, curvature_subset=64),
}


def methods(scale: Scale) -> dict[str, dict[str, Any]]:
    """Every method of a scale: its algorithm, graph, form and period."""
    out: dict[str, dict[str, Any]] = {
        "sgd": dict(algorithm="centralized", topology="complete", local_steps=1)}
    for t in scale.options["topologies"]:
        out[f"diffusion-{t}"] = dict(algorithm="diffusion", topology=t, local_steps=1)
        out[f"consensus-{t}"] = dict(algorithm="consensus", topology=t, local_steps=1)
    out["consensus-complete"] = dict(algorithm="consensus", topology="complete", local_steps=1)
    for h in scale.options["local_steps"]:
        out[f"local-sgd-H{h}"] = dict(algorithm="diffusion", topology="complete",
                                      local_steps=h)
    return out


def config(point: Point, scale: Scale, seed: int, holdout: float) -> dict[str, Any]:
    """The run config of a point (nothing is tuned: no held-out runs)."""
    o, m = scale.options, methods(scale)[point["method"]]
    every = scale.every
    metrics = ["loss", "accuracy", "consensus_distance", "disagreement",
               "disagreement_alignment", "edge_of_stability", "hessian_top"]
    options = {"disagreement": {"every": every},
               "disagreement_alignment": {"every": every, "k": o["k"]},
               "edge_of_stability": {"every": every}}
    return {"name": "mechanism", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "iid", "seed": seed,
                     "batch_size": o["batch"], "holdout": holdout},
            "model": {"name": "cnn1d"},
            "topology": {"name": m["topology"], "nodes": o["nodes"],
                         "local_steps": m["local_steps"]},
            "algorithm": {"name": m["algorithm"], "params": {}},
            "optim": {"lr": float(point["lr"]), "schedule": "constant", "warmup": 0},
            "train": {"steps": scale.steps},
            "measure": {"every": every, "per_node": False, "metrics": metrics,
                        "train_subset": o.get("train_subset", 2048),
                        "curvature_subset": o.get("curvature_subset", 512),
                        "options": options},
            "checkpoint_every": max(scale.steps // 2, 1)}


def run_name(point: Point, seed: int) -> str:
    """``diffusion-ring,lr=0.2,seed=0``."""
    return f"{point['method']},lr={float(point['lr']):g},seed={seed}"


def _trapezoid(steps: np.ndarray, values: np.ndarray) -> float:
    if len(steps) < 2:
        return math.nan
    return float(np.sum((values[1:] + values[:-1]) * np.diff(steps)) / 2)


def _disagreeing(wide: pd.DataFrame) -> pd.Series:
    """Measurements whose disagreement is above rounding level (:data:`FLOOR`)."""
    rel = wide["consensus_distance_rel"] if "consensus_distance_rel" in wide else pd.Series(
        math.inf, index=wide.index)
    return rel.fillna(math.inf) > FLOOR


def late_means(curves: pd.DataFrame, steps: int) -> dict[str, float]:
    """The mechanism's columns of one run's curves (long ``step, metric, value``).

    ``*_late``: means over the measurements after step ``(1 − LATE) · steps``; the gap's ratio
    to ``½ tr(HΣ)`` (``gap_ratio_late``) and the alignment only over measurements whose
    disagreement is above rounding level (:data:`FLOOR`), nan when none is;
    ``trhs_integral``: ``∫ tr(HΣ) dt`` over the run (trapezoid over the measurements);
    ``log_trhs_late``: its log (nan at no disagreement); ``one``: 1, what the ratio is
    compared with.
    """
    out = {"trhs_late": math.nan, "gap_late": math.nan, "predicted_late": math.nan,
           "gap_ratio_late": math.nan, "alignment_late": math.nan,
           "alignment_chance": math.nan, "xi2_late": math.nan, "edge_late": math.nan,
           "trhs_integral": math.nan, "log_trhs_late": math.nan, "one": 1.0}
    if curves.empty:
        return out
    late = curves[curves["step"] >= (1 - LATE) * steps]
    for metric, col in (("disagreement_curvature", "trhs_late"), ("disagreement_gap", "gap_late"),
                        ("disagreement_gap_predicted", "predicted_late"),
                        ("disagreement_alignment_chance", "alignment_chance"),
                        ("consensus_distance", "xi2_late"), ("edge_of_stability", "edge_late")):
        v = late.loc[late["metric"] == metric, "value"]
        if len(v):
            out[col] = float(v.mean())
    wide = late.pivot_table(index="step", columns="metric", values="value")
    if len(wide):
        w = wide[_disagreeing(wide)]
        if len(w) and {"disagreement_gap", "disagreement_gap_predicted"} <= set(w.columns):
            out["gap_ratio_late"] = float((w["disagreement_gap"]
                                           / w["disagreement_gap_predicted"]).mean())
        if len(w) and "disagreement_alignment" in w:
            out["alignment_late"] = float(w["disagreement_alignment"].mean())
    c = curves[curves["metric"] == "disagreement_curvature"].sort_values("step")
    out["trhs_integral"] = _trapezoid(c["step"].to_numpy(float), c["value"].to_numpy(float))
    if out["trhs_late"] > 0:
        out["log_trhs_late"] = math.log(out["trhs_late"])
    return out


def extra(path: Path, point: Point, scale: Scale) -> dict[str, Any]:
    """A final run's method columns and its mechanism columns (:func:`late_means`)."""
    d = methods(scale)[point["method"]]
    try:
        c = run_curves(path, CURVES[2:], lr=False)
    except Exception:  # noqa: BLE001  (a damaged or missing run reads as NaN, its status says why)
        c = pd.DataFrame(columns=["step", "metric", "value"])
    return {**{k: d[k] for k in ("algorithm", "topology", "local_steps")},
            **late_means(c, scale.steps)}


def predict(path: Path, method: Mapping[str, Any], lr: float, scale: Scale) -> dict[str, float]:
    """The linear theory's stationary ``tr(HΣ)`` at a finished run's final x̄.

    Top-``k`` eigenpairs of the curvature-subset Hessian at x̄ (Lanczos, tol 1e-3), the noise
    along them and ``tr(HS̄)`` (:func:`~flatlab.measures.noise_along` with the run's oracle and
    sampler), then :func:`~flatlab.theory.stationary_disagreement` with the bulk
    ``max(tr(HS̄) − Σ h_j s_j, 0)`` and the nodes' gradient offsets along the listed directions
    (the heterogeneity of the i.i.d. split: each node's own sample). Directions along which the
    linear model has no stationary state (``η h_j > 2``, or a consensus mode
    ``|λ_k − η h_j| ≥ 1``: the edge of stability, where the nonlinearity holds the iterates)
    are left out and counted (``edge_directions``). The prediction is the mean of its per-phase
    values at the late measurement steps (Local SGD's steps since the last averaging).
    Centralized SGD: 0 by construction.
    """
    o = scale.options
    nan = {"trhs_predicted": math.nan, "log_trhs_predicted": math.nan, "noise_top": math.nan,
           "trace_hs": math.nan, "bulk_share": math.nan, "heterogeneity_top": math.nan,
           "heterogeneity_share": math.nan, "edge_directions": math.nan}
    if method["algorithm"] == "centralized":
        return {**nan, "trhs_predicted": 0.0}
    run = build(load_config(str(path / "config.yaml")))
    xbar, buffers = average_model(path)
    xbar = xbar.to(run.stack.device, run.stack.dtype)
    fn = model_loss(run.stack, *(run.curvature_eval or run.train_eval), buffers=buffers)
    op = hessian_operator(fn, xbar)
    top = lanczos(op, o["k"], tol=1e-3, max_iter=max(100, 6 * o["k"]), return_vectors=True)
    na = noise_along(run.oracle, run.sampler, xbar, top.eigenvectors, hessian=op,
                     probes=o["probes"], draws=o["draws"])
    h = top.eigenvalues.double().clamp(min=0).cpu().numpy()
    s = na.noise.double().cpu().numpy()
    topo = make(method["topology"], o["nodes"])
    kw = dict(topology=topo, form=method["algorithm"], local_steps=method["local_steps"])

    def stable(j: int) -> bool:  # the linear model has a stationary state along v_j
        try:
            stationary_disagreement(lr, h[j], s[j], **kw)
            return True
        except FlatlabError:
            return False

    keep = [j for j in range(len(h)) if stable(j)]
    bulk = max(na.trace_hs - float(np.dot(h, s)), 0.0)
    z = na.heterogeneity.double().cpu().numpy()[:, keep]
    z = z - z.mean(0)  # the offsets sum to zero up to rounding
    try:
        p = stationary_disagreement(lr, h[keep], s[keep], bulk_hs=bulk, heterogeneity=z, **kw)
    except FlatlabError:  # nothing left to predict from
        return {**nan, "edge_directions": len(h) - len(keep)}
    phases = np.asarray(p.per_phase["curvature_disagreement"], dtype=float)
    late = [t for t in range(0, scale.steps + 1, scale.every) if t >= (1 - LATE) * scale.steps]
    # the measured phases of the period (Local SGD: steps since the last averaging)
    value = float(np.mean([phases[t % len(phases)] for t in late])) if late else math.nan
    return {"trhs_predicted": value,
            "log_trhs_predicted": math.log(value) if value > 0 else math.nan,
            "edge_directions": len(h) - len(keep),
            "noise_top": float(s[0]) if len(s) else math.nan, "trace_hs": na.trace_hs,
            "bulk_share": float(p.terms.get("bulk", 0.0)) / float(p.curvature_disagreement)
            if p.curvature_disagreement > 0 else math.nan,
            "heterogeneity_share": float(p.terms.get("heterogeneity", 0.0))
            / float(p.curvature_disagreement) if p.curvature_disagreement > 0 else math.nan,
            "heterogeneity_top": float(na.heterogeneity[:, 0].pow(2).mean())
            if na.heterogeneity.numel() else math.nan}


def _prediction_phase(study: Study, scale: Scale, runs: Path, workers: int,
                      tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``prediction``: :func:`predict` beside the measured ``tr(HΣ)`` for every final run.

    One row per run with its ``status``, the measured ``trhs_late``/``log_trhs_late``, the
    prediction's columns and ``converged`` (the training loss's plateau,
    :func:`~flatlab.experiment.evidence.curves_loss_plateau`: a stationary state is what the
    theory predicts), so that the prediction's claims are judged on this table.
    """
    table = tables["runs"]
    ms = methods(scale)
    rows = []
    for r in table.to_dict("records"):
        path = runs / "final" / study.folder({"lr": r["lr"], "method": r["method"]},
                                            int(r["seed"]))
        p = (predict(path, ms[r["method"]], float(r["lr"]), scale)
             if r["status"] == "done" else {})
        rows.append({k: r.get(k, math.nan) for k in ("lr", "method", "seed", "status",
                                                     "trhs_late", "log_trhs_late")} | p)
    pred = pd.DataFrame(rows)
    keys = ["lr", "method", "seed"]
    curves = tables["curves"]
    if len(curves) and len(pred):
        loss = curves_loss_plateau(curves, keys, threshold=LOSS_THRESHOLD)
        pred = pred.merge(loss[[*keys, "loss_converged"]], on=keys, how="left")
        pred["converged"] = pred.pop("loss_converged").astype("boolean").fillna(False)\
            .astype(bool)
    else:
        pred["converged"] = False
    return {"prediction": pred}


def phase_table(curves: pd.DataFrame, runs: pd.DataFrame, steps: int) -> pd.DataFrame:
    """Per method, step size and phase of training: gap / ½ tr(HΣ) and share / chance.

    Means and standard deviations over seeds of each run's mean over the phase's measurements
    whose disagreement is above rounding level (:data:`FLOOR`).
    """
    done = runs.loc[runs["status"] == "done", ["lr", "method", "seed"]]
    c = curves.merge(done, on=["lr", "method", "seed"])
    rows = []
    for name, lo, hi in PHASES:
        part = c[(c["step"] > lo * steps) & (c["step"] <= hi * steps)
                 & c["metric"].isin([*CURVES[4:8], "consensus_distance_rel"])]
        wide = part.pivot_table(index=["lr", "method", "seed", "step"], columns="metric",
                                values="value").reset_index()
        for col in ("disagreement_gap", "disagreement_gap_predicted", "disagreement_alignment",
                    "disagreement_alignment_chance"):
            if col not in wide:
                wide[col] = math.nan
        wide = wide[_disagreeing(wide)]  # rounding-level disagreement has no ratio
        wide["ratio"] = wide["disagreement_gap"] / wide["disagreement_gap_predicted"].where(
            wide["disagreement_gap_predicted"] > 0)
        wide["enrichment"] = wide["disagreement_alignment"] / wide[
            "disagreement_alignment_chance"]
        per_run = wide.groupby(["lr", "method", "seed"])[["ratio", "enrichment"]].mean()
        for (lr, m), g in per_run.groupby(["lr", "method"]):
            if g["ratio"].isna().all() and g["enrichment"].isna().all():
                continue  # no disagreement (centralized SGD)
            rows.append({"lr": lr, "method": m, "phase": name,
                         "ratio": float(g["ratio"].mean()), "ratio_sd": float(g["ratio"].std()),
                         "enrichment": float(g["enrichment"].mean()),
                         "enrichment_sd": float(g["enrichment"].std()), "seeds": len(g)})
    return pd.DataFrame(rows)


def _phases_phase(study: Study, scale: Scale, runs: Path, workers: int,
                  tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {"phases": phase_table(tables["curves"], tables["runs"], scale.steps)}


def claims(scale: Scale) -> list[Claim | tuple[str, Claim]]:
    """Per step size: gap, alignment and prediction per method; orders between methods.

    The order claims pair graphs (ring against exponential) and forms (consensus against
    diffusion) on ``∫ tr(HΣ) dt`` and on the final ``λ_max``. A claim within one method reads
    ``better`` when its first column is significantly above the second (the gap above ½ tr(HΣ),
    the share above chance, the measurement above the prediction) and ``equivalent`` when the
    two agree within the margin (the second-order term explains the gap within 25%; the
    prediction is within 2x).
    """
    out: list[Claim | tuple[str, Claim]] = []
    decentralized = [m for m in methods(scale) if m != "sgd"]
    for s in scale.settings:
        for m in decentralized:
            out += [
                Claim(f"{m}: the gap exceeds ½ tr(HΣ)", m, m, where=s,
                      value="gap_ratio_late", against="one", margin=0.25, why=WHY_GAP),
                Claim(f"{m}: the top-{scale.options['k']} share of the disagreement exceeds "
                      "chance", m, m, where=s, value="alignment_late",
                      against="alignment_chance", margin=0.01, why=WHY_ALIGN),
                ("prediction", Claim(
                    f"{m}: the measured tr(HΣ) exceeds the linear theory's", m, m, where=s,
                    value="log_trhs_late", against="log_trhs_predicted", margin=math.log(2),
                    why=WHY_PREDICT))]
        pairs = [(f"{f}-ring", f"{f}-exponential") for f in ("diffusion", "consensus")
                 if "exponential" in scale.options["topologies"]]
        pairs += [(f"consensus-{t}", f"diffusion-{t}") for t in scale.options["topologies"]]
        for a, b in pairs:
            out += [
                Claim(f"{a} accumulates more tr(HΣ) than {b}", a, b, where=s,
                      value="trhs_integral", margin=0.1, relative=True, why=WHY_ORDER),
                Claim(f"{a} ends flatter than {b}", a, b, "less", where=s,
                      value="hessian_top", margin=0.1, relative=True, why=WHY_ORDER)]
    return out


def appendix(tables: dict[str, pd.DataFrame], scale: Scale) -> str:
    """The phases of training, and the prediction's inputs."""
    lines = []
    ph = tables.get("phases")
    if ph is not None and len(ph):
        lines += ["", "By phase of training (thirds of the steps; mean ± sd over seeds): the "
                  "gap over ½ tr(HΣ), and the top-k share of the disagreement over its chance "
                  "level k/P.", "", "| lr | method | phase | gap / ½tr(HΣ) | share / chance |",
                  "|---|---|---|---|---|"]
        for r in ph.itertuples():
            lines.append(f"| {r.lr:g} | {r.method} | {r.phase} | {r.ratio:.3g} ± "
                         f"{r.ratio_sd:.2g} | {r.enrichment:.3g} ± {r.enrichment_sd:.2g} |")
    pr = tables.get("prediction")
    if pr is not None and len(pr) and "trhs_predicted" in pr:
        cols = ["trhs_late", "trhs_predicted", "bulk_share", "heterogeneity_share",
                "edge_directions"]
        both = pr[pr["status"] == "done"].groupby(["lr", "method"])[
            [c for c in cols if c in pr]].mean().reset_index()
        lines += ["", "Predicted (linear theory at the final x̄) against measured tr(HΣ) (mean "
                  "of the last quarter), means over seeds; bulk and heterogeneity: their shares "
                  "of the prediction (directions outside the top k; the nodes' gradient "
                  "offsets); edge: top directions left out, at or past the edge of stability.",
                  "", "| lr | method | measured | predicted | ratio | bulk | heterogeneity | "
                  "edge |", "|---|---|---|---|---|---|---|---|"]
        for r in both.to_dict("records"):
            ratio = (r["trhs_late"] / r["trhs_predicted"] if r["trhs_predicted"] > 0
                     else math.nan)
            lines.append(f"| {r['lr']:g} | {r['method']} | {r['trhs_late']:.3g} | "
                         f"{r['trhs_predicted']:.3g} | {ratio:.3g} | "
                         f"{r.get('bulk_share', math.nan):.2g} | "
                         f"{r.get('heterogeneity_share', math.nan):.2g} | "
                         f"{r.get('edge_directions', math.nan):.2g} |")
    return "\n".join(lines)


def figures(tables: dict[str, pd.DataFrame], scale: Scale) -> dict[str, Any]:
    """The gap against ½ tr(HΣ), the alignment over chance, the prediction against measurement.

    Measurements whose disagreement is at rounding level (:data:`FLOOR`: Local SGD right after
    an averaging) and centralized SGD are left out: their ratio and share are rounding noise.
    """
    curves = tables["curves"]
    prediction = tables.get("prediction")
    if prediction is None or "trhs_predicted" not in prediction:
        prediction = pd.DataFrame(columns=["lr", "method", "status", "trhs_late",
                                           "trhs_predicted"])
    keys = ["lr", "method", "seed", "step"]
    rel = curves[curves["metric"] == "consensus_distance_rel"]
    rounding = rel.loc[rel["value"] <= FLOOR, keys]  # nodes that agree up to rounding
    shown = curves.merge(rounding.assign(_drop=True), on=keys, how="left")
    shown = shown[shown["_drop"].isna() & (shown["method"] != "sgd")].drop(columns="_drop")
    return {"": mechanism(shown, prediction[prediction["method"] != "sgd"])}


STUDY = Study(
    name="mechanism",
    question="Does the disagreement between nodes act on x̄ as ½ tr(HΣ): does the second-order "
             "term explain the gap, does the disagreement concentrate in the top curvature, "
             "does the linear theory predict tr(HΣ), and does its accumulation order the final "
             "λ_max across graphs and forms?",
    scales=SCALES, config=config, run_name=run_name, claims=claims,
    measures={"test_accuracy": "test_accuracy", "train_loss": "train_loss",
              "hessian_top": "hessian_top", "consensus_distance": "consensus_distance"},
    extra=extra, curves=CURVES, phases=(_prediction_phase, _phases_phase),
    summary_columns=("test_accuracy", "train_loss", "hessian_top", "trhs_late",
                     "gap_ratio_late", "alignment_late", "trhs_integral"),
    setting_label=lambda s: f"lr={s['lr']:g}", appendix=appendix, figures=figures,
    units={"gap_ratio_late − one": (1.0, "", 2),
           "alignment_late − alignment_chance": (100.0, "points", 1),
           "log_trhs_late − log_trhs_predicted": (1.0, "log", 2),
           "trhs_integral": (1.0, "", 3), "hessian_top": (1.0, "", 2)},
    protocol="Constant step, no tuning (the step is the setting). Claims about one method "
             "compare two of its columns within each run (the measured gap with ½ tr(HΣ), the "
             "top-k share with k/P, the log measured tr(HΣ) with the log prediction); claims "
             "between methods pair seeds. 'Late' values are means over the last quarter of "
             "the measurements.")
