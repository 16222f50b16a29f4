"""Flatness versus optimization: what centralized, consensus and diffusion training converge to.

The question of Cao, Wu, Yuan and Sayed, "On the trade-off between flatness and optimization in
distributed learning" (2024; docs/reference/measures.md §12, docs/reference/algorithms.md §13.4): do
decentralized methods find flatter minima than centralized SGD in the large-batch regime, is
consensus the flattest and diffusion the best balance of flatness and optimization?

mnist1d with the 1-D CNN, ``n`` nodes with a Dirichlet(1) label split, the same step size ``μ``
(constant, no weight decay) for every method and the same initialisation for every method of a
seed. Methods are compared at two per-node batch sizes (``small-batch`` and ``large-batch``,
total batch ``n b``) on four topologies. Every phase is resumable (finished runs are skipped,
interrupted ones resume from their checkpoints, a diverging run is recorded as diverged and the
study goes on):

1. **final**: every method x topology x batch x seed (centralized, which has no topology, once
   per batch and seed), measured over training (training loss, ``‖∇f(x̄)‖``, consensus distance
   ``Ξ²``, test accuracy) and at the start and end for flatness at ``x̄`` (top Hessian eigenvalue
   by Lanczos, trace by Hutch++, worst-case adaptive sharpness), plus extra step sizes on two
   topologies for the theory overlay. After each decentralized run, the gradient noise ``σ²``
   and heterogeneity ``ζ²`` at its final ``x̄`` (:func:`flatlab.measures.gradient_noise`);
2. **escape**: every method restarted (``init_from``) at the sharp minimum that large-batch
   centralized training found (the final run of phase 1, per seed), at the same large batch and
   step: how fast does each leave it (top eigenvalue and trace over steps) and where does it
   go; at the main step and at a smaller one (``escape_lrs``), whose start centralized SGD can
   stay at;
3. **theory overlay**: the measured steady-state ``Ξ²`` (mean over the second half of training)
   against :func:`flatlab.theory.predicted_consensus_distance` with the measured ``σ²``, ``ζ²``
   and each topology's ``ρ`` and step size; and the measured ``(1/T) Σ_t ‖∇f(x̄_t)‖²`` against
   the terms of DSGD's bound (:func:`flatlab.theory.bound`, ``L`` the measured top eigenvalue,
   ``F0`` the initial training loss).

Usage::

    python analysis/tradeoff.py --scale small    # 16 nodes, 3 topologies, 5 seeds, CPU (3 h 13 min)
    python analysis/tradeoff.py --scale full     # 32 nodes, + momentum tracking, longer, GPU
    python analysis/tradeoff.py --scale small --report   # tables and figures from disk

Writes under ``results/tradeoff-<scale>/``: ``runs.csv`` (one row per final run), ``curves.csv``
(metrics over training), ``escape.csv``, ``steady.csv`` (measured against predicted ``Ξ²``),
``bound.csv``, ``summary.csv`` and ``summary.md``; and the figures
``paper_figs/out/tradeoff_{scatter,accuracy,consensus,escape,bound}.{pdf,png}``
(``paper_figs/tradeoff.py`` redraws them from the committed tables).
"""

from __future__ import annotations

import json
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
from flatlab.experiment.study import final_values, mean_and_se

ROOT = Path(__file__).resolve().parents[1]
DECENTRALIZED = {"consensus", "diffusion", "momentum-tracking", "dsgdm", "ngpd"}
# the predicted-consensus-distance form of each decentralized method (theory/consensus.py)
FORMS = {"consensus": "consensus", "diffusion": "diffusion"}
FLATNESS = {"hessian_top": "hessian_top", "hessian_trace": "hessian_trace",
            "sharpness": "sharpness_worst"}
FINAL = {"test_accuracy": "test_accuracy", "test_accuracy_nodes": "test_accuracy[mean]",
         "train_loss": "train_loss", "grad_norm": "grad_norm",
         "consensus_distance": "consensus_distance", **FLATNESS}
CURVE_METRICS = ("train_loss", "test_accuracy", "grad_norm", "consensus_distance")
ESCAPE_METRICS = ("train_loss", "test_accuracy", "hessian_top", "hessian_trace",
                  "consensus_distance")

SCALES: dict[str, dict[str, Any]] = {
    # 400 steps and 3 seeds (the first protocol) left 61 of 63 runs still moving; 3000 steps and
    # 5 seeds on three topologies (the torus sits between the ring and the exponential graph)
    # 3 h 13 min on 2 cores (2 h 52 min of final runs); the escape, illustrative, on 3 seeds
    "small": dict(nodes=16, topologies=("ring", "exponential", "complete"),
                  methods=("centralized", "consensus", "diffusion"),
                  batches={"small-batch": 8, "large-batch": 32}, lr=0.1, steps=3000, every=100,
                  seeds=(0, 1, 2, 3, 4), extra_lrs=(0.03,), extra_topologies=("ring",),
                  escape_topologies=("ring", "exponential"), escape_steps=200, escape_every=25,
                  escape_lrs=(0.1, 0.03), escape_seeds=(0, 1, 2),
                  noise_draws=8, trace_matvecs=30),
    "full": dict(nodes=32, topologies=("ring", "torus", "exponential", "complete"),
                 methods=("centralized", "consensus", "diffusion", "momentum-tracking"),
                 batches={"small-batch": 16, "large-batch": 128}, lr=0.1, steps=4000, every=100,
                 seeds=(0, 1, 2, 3, 4), extra_lrs=(0.03, 0.3),
                 extra_topologies=("ring", "exponential", "torus"),
                 escape_topologies=("ring", "exponential", "complete"), escape_steps=1000,
                 escape_lrs=(0.1, 0.03),
                 escape_every=50, noise_draws=16, trace_matvecs=60),
    # the test suite's: one seed, a few steps, so that the script cannot rot
    "tiny": dict(nodes=4, topologies=("ring", "complete"),
                 methods=("centralized", "consensus", "diffusion"),
                 batches={"small-batch": 4, "large-batch": 16}, lr=0.1, steps=6, every=2,
                 seeds=(0,), extra_lrs=(0.03,), extra_topologies=("ring",),
                 escape_topologies=("ring",), escape_steps=4, escape_every=2, noise_draws=2,
                 escape_lrs=(0.1,),
                 trace_matvecs=6, train_subset=256, curvature_subset=64),
}


def _config(grid: dict[str, Any], method: str, topology: str, batch: int, lr: float, seed: int,
            *, escape_from: str | None = None) -> dict[str, Any]:
    steps = grid["escape_steps"] if escape_from else grid["steps"]
    every = grid["escape_every"] if escape_from else grid["every"]
    flat_every = every if escape_from else steps  # over the escape, at start and end otherwise
    params: dict[str, Any] = {"momentum": 0.9} if method == "momentum-tracking" else {}
    cfg = {"name": "tradeoff", "seed": seed, "device": "auto",
           "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": 1.0, "seed": seed,
                    "batch_size": batch},
           "model": {"name": "cnn1d"},
           "topology": {"name": topology, "nodes": grid["nodes"]},
           "algorithm": {"name": method, "params": params},
           "optim": {"lr": lr, "schedule": "constant"},
           "train": {"steps": steps},
           "measure": {"every": every, "per_node": False,
                       "train_subset": grid.get("train_subset", 2048),
                       "curvature_subset": grid.get("curvature_subset", 512),
                       "metrics": ["loss", "accuracy", "consensus_distance", "grad_norm",
                                   "hessian_top", "hessian_trace", "sharpness_worst"],
                       "options": {"hessian_top": {"every": flat_every},
                                   "hessian_trace": {"every": flat_every,
                                                     "num_matvecs": grid["trace_matvecs"]},
                                   "sharpness_worst": {"every": steps, "adaptive": True}}},
           "checkpoint_every": max(steps // 2, 1)}
    if escape_from:
        cfg["init_from"] = escape_from
        cfg["measure"]["options"]["sharpness_worst"]["every"] = steps
    return cfg


def _name(regime: str, topology: str, method: str, lr: float, seed: int) -> str:
    return f"{regime},{'all-reduce' if method == 'centralized' else topology},{method}," \
           f"lr={lr:g},seed={seed}"


def _points(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every final run: methods x topologies x batches x seeds, plus the extra step sizes."""
    pts = []  # seed by seed, so that an interrupted study has whole seeds
    for seed in grid["seeds"]:
        for regime, batch in grid["batches"].items():
            for method in grid["methods"]:
                tops = grid["topologies"][:1] if method == "centralized" else grid["topologies"]
                for top in tops:
                    pts.append(dict(regime=regime, batch=batch, method=method, lr=grid["lr"],
                                    seed=seed,
                                    topology="all-reduce" if method == "centralized" else top,
                                    graph=top))
                for lr in grid["extra_lrs"]:
                    if method in FORMS and regime == "small-batch":
                        pts += [dict(regime=regime, batch=batch, method=method, lr=lr, seed=seed,
                                     topology=top, graph=top) for top in grid["extra_topologies"]]
                # the escape's other starting points: large-batch centralized at its step sizes
                if method == "centralized" and regime == "large-batch":
                    pts += [dict(regime=regime, batch=batch, method=method, lr=lr, seed=seed,
                                 topology="all-reduce", graph=grid["topologies"][0])
                            for lr in grid["escape_lrs"] if lr != grid["lr"]]
    return pts


def _noise(path: Path, cfg: dict[str, Any], draws: int) -> dict[str, float]:
    """σ² and ζ² at the run's final x̄ (cached in ``noise.json`` next to the run)."""
    cache = path / "noise.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from flatlab.experiment import average_model, build, load_config
    from flatlab.measures import gradient_noise

    run = build(load_config(cfg))
    x, buffers = average_model(path)
    run.stack.start_from(x, buffers)
    r = gradient_noise(run.oracle, run.sampler, x.to(run.stack.device, run.stack.dtype),
                       draws=draws)
    out = {"sigma2": r.sigma2, "zeta2": r.zeta2}
    cache.write_text(json.dumps(out) + "\n")
    return out


def _start_values(path: Path) -> dict[str, float]:
    """Step-0 flatness and loss of a run (the initialisation, or the escape's start)."""
    import flatlab.results

    if not (path / "metrics.parquet").is_file():
        return {}
    df = flatlab.results.load(path)
    first = df[(df["step"] == df["step"].min()) & (df["scope"] == "avg")]
    return {f"{m}_start": float(first.loc[first["metric"] == m, "value"].iloc[0])
            for m in ("hessian_top", "train_loss") if (first["metric"] == m).any()}


def final(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Phase 1: every final run, with its flatness, optimization error and σ², ζ²."""
    from flatlab.theory import spectral
    from flatlab.topology import make

    pts = _points(grid)
    jobs = [(str(runs / "final" / _name(p["regime"], p["graph"], p["method"], p["lr"],
                                        p["seed"])),
             _config(grid, p["method"], p["graph"], p["batch"], p["lr"], p["seed"]))
            for p in pts]
    run_many(jobs, workers)
    gaps = {t: spectral(make(t, grid["nodes"])) for t in grid["topologies"]}
    rows = []
    for p, (path, cfg) in zip(pts, jobs, strict=True):
        path = Path(path)
        r = {**{k: v for k, v in p.items() if k != "graph"}, **final_values(path, FINAL)}
        r |= _start_values(path)
        if p["method"] != "centralized":
            s = gaps[p["graph"]]
            r |= {"rho": s.rho, "spectral_gap": s.spectral_gap}
            if r["status"] == "done" and workers:
                r |= _noise(path, cfg, grid["noise_draws"])
            elif (path / "noise.json").is_file():
                r |= json.loads((path / "noise.json").read_text())
        rows.append(r)
    return pd.DataFrame(rows)


def _series(path: Path, metrics: tuple[str, ...]) -> pd.DataFrame:
    import flatlab.results

    if not (path / "metrics.parquet").is_file():
        return pd.DataFrame(columns=["step", "metric", "value"])
    df = flatlab.results.load(path)
    df = df[df["metric"].isin(metrics) & df["scope"].isin(["avg", "network"])]
    return df[["step", "metric", "value"]].drop_duplicates(["step", "metric"])


def curves(table: pd.DataFrame, grid: dict[str, Any], runs: Path) -> pd.DataFrame:
    """Metrics over training of every final run (long form)."""
    parts = []
    for r in table.itertuples():
        graph = grid["topologies"][0] if r.method == "centralized" else r.topology
        s = _series(runs / "final" / _name(r.regime, graph, r.method, r.lr, r.seed),
                    CURVE_METRICS)
        parts.append(s.assign(regime=r.regime, topology=r.topology, method=r.method, lr=r.lr,
                              seed=r.seed, status=r.status))
    return pd.concat(parts, ignore_index=True)


def escape(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Phase 2: every method restarted at large-batch centralized's minimum (per seed).

    For each step size of ``escape_lrs``: the start is the final x̄ of large-batch centralized
    SGD trained at that step, and every method continues from it at the same batch and step.
    At the main step the start sits at the edge of stability (its top eigenvalue near or above
    2/μ); a smaller step finds a sharper point that centralized SGD itself can stay at.
    """
    regime = "large-batch"
    batch = grid["batches"][regime]
    pts, jobs = [], []
    for seed in grid.get("escape_seeds", grid["seeds"]):
        for lr in grid["escape_lrs"]:
            src = runs / "final" / _name(regime, grid["topologies"][0], "centralized", lr, seed)
            if not (src / "checkpoint.pt").is_file():
                print(f"escape: no sharp minimum for seed {seed} ({src.name} did not finish)")
                continue
            for method in grid["methods"]:
                tops = (grid["escape_topologies"][:1] if method == "centralized"
                        else grid["escape_topologies"])
                for top in tops:
                    label = "all-reduce" if method == "centralized" else top
                    pts.append((method, label, lr, seed))
                    jobs.append((str(runs / "escape" / _name(regime, top, method, lr, seed)),
                                 _config(grid, method, top, batch, lr, seed,
                                         escape_from=str(src))))
    run_many(jobs, workers)
    parts = []
    for (method, top, lr, seed), (path, _) in zip(pts, jobs, strict=True):
        s = _series(Path(path), ESCAPE_METRICS)
        st = final_values(path, {})["status"]
        parts.append(s.assign(method=method, topology=top, lr=lr, seed=seed, status=st))
    if not parts:
        return pd.DataFrame(columns=["step", "metric", "value", "method", "topology", "lr",
                                     "seed", "status"])
    return pd.concat(parts, ignore_index=True)


def steady_state(table: pd.DataFrame, curve: pd.DataFrame, grid: dict[str, Any]
                 ) -> pd.DataFrame:
    """Measured steady-state Ξ² (mean over the second half) against the prediction, per run."""
    from flatlab.theory import predicted_consensus_distance

    rows = []
    done = table[(table["status"] == "done") & table["method"].isin(FORMS)]
    half = grid["steps"] / 2
    for r in done.itertuples():
        c = curve[(curve["regime"] == r.regime) & (curve["topology"] == r.topology)
                  & (curve["method"] == r.method) & (curve["lr"] == r.lr)
                  & (curve["seed"] == r.seed) & (curve["metric"] == "consensus_distance")
                  & (curve["step"] >= half)]
        if c.empty or not math.isfinite(getattr(r, "sigma2", math.nan)):
            continue
        pred = predicted_consensus_distance(r.lr, rho=r.rho, sigma2=r.sigma2, zeta2=r.zeta2,
                                            form=FORMS[r.method])
        rows.append({"regime": r.regime, "topology": r.topology, "method": r.method,
                     "lr": r.lr, "seed": r.seed, "rho": r.rho, "sigma2": r.sigma2,
                     "zeta2": r.zeta2, "measured": float(c["value"].mean()),
                     "predicted": pred.total, "predicted_noise": pred.terms["noise"],
                     "predicted_heterogeneity": pred.terms["heterogeneity"]})
    out = pd.DataFrame(rows)
    if len(out):
        out["ratio"] = out["measured"] / out["predicted"]
    return out


def bound_overlay(table: pd.DataFrame, curve: pd.DataFrame, grid: dict[str, Any]
                  ) -> pd.DataFrame:
    """Measured ``(1/T) Σ_t ‖∇f(x̄_t)‖²`` against the terms of DSGD's bound, per run and T.

    The bound's inputs are measured on the run: ``L`` its final top Hessian eigenvalue, ``F0``
    its initial training loss (``f* ≈ 0``), ``σ²`` and ``ζ²`` at its final ``x̄``; the
    constants are unspecified, so the comparison is in order of magnitude and in slope.
    """
    from flatlab.theory import bound
    from flatlab.topology import make

    rows = []
    done = table[(table["status"] == "done") & table["method"].isin(FORMS)
                 & (table["lr"] == grid["lr"])]
    for r in done.itertuples():
        if not all(math.isfinite(getattr(r, k, math.nan))
                   for k in ("sigma2", "zeta2", "hessian_top", "train_loss_start")):
            continue
        g = curve[(curve["regime"] == r.regime) & (curve["topology"] == r.topology)
                  & (curve["method"] == r.method) & (curve["lr"] == r.lr)
                  & (curve["seed"] == r.seed) & (curve["metric"] == "grad_norm")
                  ].sort_values("step")
        g = g[g["step"] > 0]
        if g.empty:
            continue
        running = np.cumsum(g["value"].to_numpy() ** 2) / np.arange(1, len(g) + 1)
        topo = make(r.topology, grid["nodes"])
        for step, avg in zip(g["step"], running, strict=True):
            b = bound("dsgd", topology=topo, L=max(r.hessian_top, 1e-12), sigma2=r.sigma2,
                      zeta2=r.zeta2, F0=r.train_loss_start, T=float(step))
            rows.append({"regime": r.regime, "topology": r.topology, "method": r.method,
                         "seed": r.seed, "T": int(step), "measured": float(avg),
                         **{f"bound_{k}": v for k, v in b.terms.items()},
                         "bound_total": b.total})
    return pd.DataFrame(rows)


RUN_KEYS = ["regime", "topology", "method", "lr", "seed"]


def claims(table: pd.DataFrame, lr: float) -> pd.DataFrame:
    """The flatness paper's claims at the main step size, per regime and topology, by seed.

    Decentralized ``x̄`` flatter than centralized SGD's (top Hessian eigenvalue, less);
    consensus flatter than diffusion (less); diffusion more accurate than consensus and than
    centralized SGD (test accuracy, greater) and better optimized than centralized SGD (training
    loss, less): the "best balance" claim. Centralized SGD has no topology: its runs are
    compared with every topology's.
    """
    main = table[table["lr"] == lr]
    central = main[main["method"] == "centralized"]
    tops = [t for t in dict.fromkeys(main["topology"]) if t != "all-reduce"]
    paired = pd.concat([main[main["method"] != "centralized"]]
                       + [central.assign(topology=t) for t in tops], ignore_index=True)
    spec = [("hessian_top", "diffusion", "centralized", "less",
             "diffusion flatter than centralized"),
            ("hessian_top", "consensus", "centralized", "less",
             "consensus flatter than centralized"),
            ("hessian_top", "consensus", "diffusion", "less", "consensus flatter than diffusion"),
            ("test_accuracy", "diffusion", "consensus", "greater",
             "diffusion more accurate than consensus"),
            ("test_accuracy", "diffusion", "centralized", "greater",
             "diffusion more accurate than centralized"),
            ("train_loss", "diffusion", "centralized", "less",
             "diffusion better optimized than centralized")]
    out = []
    for regime in dict.fromkeys(main["regime"]):
        for t in tops:
            where = {"regime": regime, "topology": t}
            for value, a, b, claim, text in spec:
                got = judge(paired, [Claim(text, a, b, claim, where)], value=value)
                got.insert(1, "setting", f"{regime}, {t}")
                got.insert(2, "metric", value)
                out.append(got.drop(columns=list(where)))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds, per regime, topology, method and step size."""
    cols = ["test_accuracy", "train_loss", "grad_norm", "consensus_distance", "hessian_top",
            "hessian_trace", "sharpness"]
    keys = ["regime", "batch", "topology", "method", "lr"]
    return mean_and_se(table, keys, cols)


def markdown(summary: pd.DataFrame, lr: float, verdicts: pd.DataFrame | None = None) -> str:
    """The main-step-size summary as a Markdown table (mean ± s.e. over seeds)."""
    def pm(r: Any, col: str, scale: float = 1.0, fmt: str = ".3g") -> str:
        m, se = getattr(r, f"{col}_mean") * scale, getattr(r, f"{col}_se") * scale
        if not math.isfinite(m):
            return "–"
        return f"{m:{fmt}} ± {se:{fmt}}" if math.isfinite(se) else f"{m:{fmt}}"

    lines = ["| regime | topology | method | test acc. (%) | train loss | ‖∇f(x̄)‖ | λ_max | "
             "tr(H) | adaptive sharpness | Ξ² | converged | seeds |", "|" + "---|" * 12]
    for r in summary[summary["lr"] == lr].itertuples():
        lines.append(f"| {r.regime} (b={r.batch}) | {r.topology} | {r.method} | "
                     f"{pm(r, 'test_accuracy', 100, '.1f')} | {pm(r, 'train_loss')} | "
                     f"{pm(r, 'grad_norm')} | {pm(r, 'hessian_top')} | {pm(r, 'hessian_trace')} "
                     f"| {pm(r, 'sharpness')} | {pm(r, 'consensus_distance')} | "
                     f"{int(getattr(r, 'converged', 0))}/{r.seeds + r.diverged} | {r.seeds}"
                     f"{f' ({r.diverged} diverged)' if r.diverged else ''} |")
    if verdicts is not None and len(verdicts):
        for metric, unit, scale in (("hessian_top", "λ_max", 1.0),
                                    ("test_accuracy", "points", 100.0),
                                    ("train_loss", "loss × 10⁻³", 1000.0)):
            v = verdicts[verdicts["metric"] == metric]
            lines += ["", f"Verdicts on {metric} (a − b, paired by seed, 95% t interval):", "",
                      verdict_markdown(v, scale=scale, unit=unit)]
    return "\n".join(lines) + "\n"


def figures(fig: Path, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """Write every figure of the study (``<fig>_<name>.{pdf,png}``); returns the paths."""
    from flatlab.plots import tradeoff_figures

    paths = []
    for name, f in tradeoff_figures(tables).items():
        p = fig.with_name(f"{fig.name}_{name}")
        save_figure(f, p)
        paths.append(p)
    return paths


TABLES = ("runs", "curves", "escape", "steady", "bound")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    a = study_args(argv, __doc__, SCALES, "tradeoff", ROOT)
    if isinstance(a, int):
        return a
    t0 = time.time()
    grid = SCALES[a.scale]
    table = final(grid, a.runs, a.workers)
    curve = curves(table, grid, a.runs)
    # x̄'s test accuracy over the last 20% of steps: at a constant step it keeps moving with the
    # minibatch noise, and a run whose last stretch moved by a point or more is not converged
    table = with_convergence(table, curve, RUN_KEYS)
    esc = escape(grid, a.runs, a.workers)
    tables = {"runs": table, "curves": curve, "escape": esc,
              "steady": steady_state(table, curve, grid),
              "bound": bound_overlay(table, curve, grid)}
    summary = summarize(table)
    verdicts = claims(table, grid["lr"])
    a.out.mkdir(parents=True, exist_ok=True)
    for name, t in tables.items():
        t.to_csv(a.out / f"{name}.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    verdicts.to_csv(a.out / "verdicts.csv", index=False)
    (a.out / "summary.md").write_text(markdown(summary, grid["lr"], verdicts))
    paths = figures(a.fig, tables)
    print(markdown(summary, grid["lr"], verdicts))
    print(f"{len(table)} final runs, "
          f"{esc.groupby(['method', 'topology', 'lr', 'seed']).ngroups} "
          f"escape runs ({time.time() - t0:.0f} s); tables in {a.out}, figures "
          f"{', '.join(p.name for p in paths)} in {a.fig.parent} (.pdf, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
