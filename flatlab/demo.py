"""``flatlab demo``: the main job, flatness against optimization on the embedded data set.

Centralized SGD, consensus (DGD / D-PSGD), diffusion (ATC, DSGD), Momentum Tracking and NGPD
train the same 1-D CNN from the same initialisation on a 16-node ring, each node holding a
Dirichlet(1) label-skewed share of mnist1d (generated offline), at a small and a large per-node
batch (8 and 32; total 128 and 512). At the end of each run the demo measures, at the averaged
model ``x̄``: test accuracy, training loss and ``‖∇f(x̄)‖`` (optimization error), the top Hessian
eigenvalue (Lanczos) and trace (Hutch++), worst-case adaptive sharpness, and the consensus
distance ``Ξ²`` of the nodes (docs/reference/measures.md §§ 6-12).

The thirty runs live under ``OUT/runs`` (one directory per run, resumable: a second call trains
nothing that finished); the demo writes the table ``OUT/table.csv``, the trade-off figure
``OUT/tradeoff.{png,pdf}`` (flatness against optimization error, colour by test accuracy) and
``OUT/curves.{png,pdf}`` (metrics over training), and prints the table next to the ring's
spectral gap. Every run is repeated with three seeds (initialization and minibatches; the
partition is the data set's and stays): one seed decides nothing, since float32 rounding alone
moves a single run's accuracy by points between CPUs. The printed table and ``OUT/summary.csv``
give the mean and standard error over the seeds, ``OUT/table.csv`` every run, and the figures
draw error bars. About 4 minutes on 2 idle CPU cores; ``--small`` is a seconds-long check of the
same pipeline. The study behind it, with seeds, topologies and the theory overlay, is
``flatlab.studies.tradeoff``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.experiment import run_many
from flatlab.experiment.study import final_convergence, final_values, mean_and_se
from flatlab.plots import tradeoff_scatter, training_curves
from flatlab.results import load
from flatlab.theory import spectral
from flatlab.topology import make

__all__ = ["run_demo", "demo_runs", "ALGORITHMS", "BATCHES", "SEEDS"]

#: method -> (step size, hyper-parameters). The same step for the plain methods (the flatness
#: paper compares at equal μ); Momentum Tracking at μ / (1 - β) equal to theirs; NGPD at the
#: rate its tuning in flatlab.studies.primal_dual picked for this model.
ALGORITHMS: dict[str, tuple[float, dict[str, Any]]] = {
    "centralized": (0.1, {}),
    "consensus": (0.1, {}),
    "diffusion": (0.1, {}),
    "momentum-tracking": (0.01, {"momentum": 0.9}),
    "ngpd": (0.3, {"damping": 1.0, "factor_every": 10, "inverse_every": 10, "dual_init": "x0"}),
}
BATCHES = {"small-batch": 8, "large-batch": 32}
#: Seeds of every run (``--small``: the first two).
SEEDS = (0, 1, 2)
COLUMNS = {"test_accuracy": "test_accuracy", "train_loss": "train_loss", "grad_norm": "grad_norm",
           "hessian_top": "hessian_top", "hessian_trace": "hessian_trace",
           "sharpness": "sharpness_worst", "consensus_distance": "consensus_distance",
           "comm_bytes": "comm_bytes"}


def demo_runs(out: Path, small: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The demo's runs as ``(directory, config)`` (also a template for your own studies).

    Seed-major order: with two workers the first seed's ten runs finish first.
    """
    nodes, steps, every = (8, 20, 10) if small else (16, 250, 50)
    jobs = []
    for seed in SEEDS[:2] if small else SEEDS:
        jobs += _seed_runs(Path(out), seed, nodes, steps, every, small)
    return jobs


def _seed_runs(out: Path, seed: int, nodes: int, steps: int, every: int, small: bool
               ) -> list[tuple[Path, dict[str, Any]]]:
    jobs = []
    for regime, batch in BATCHES.items():
        for method, (lr, params) in ALGORITHMS.items():
            cfg = {"name": f"demo-{regime}-{method}", "seed": seed, "device": "auto",
                   "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": 1.0,
                            "batch_size": batch // 2 if small else batch},
                   "model": {"name": "cnn1d"},
                   "topology": {"name": "ring", "nodes": nodes},
                   "algorithm": {"name": method, "params": params},
                   "optim": {"lr": lr, "schedule": "constant"},
                   "train": {"steps": steps},
                   "measure": {"every": every, "per_node": False,
                               "train_subset": 256 if small else 512,
                               "test_subset": 256 if small else 500,
                               "curvature_subset": 128 if small else 256,
                               "metrics": ["loss", "accuracy", "consensus_distance",
                                           "grad_norm", "hessian_top", "hessian_trace",
                                           "sharpness_worst"],
                               "options": {"hessian_top": {"every": steps},
                                           "hessian_trace": {"every": steps,
                                                             "num_matvecs": 20},
                                           "sharpness_worst": {"every": steps,
                                                               "adaptive": True}}},
                   "checkpoint_every": steps}
            if small:
                cfg["data"]["options"] = {"num_samples": 1000}
            jobs.append((out / "runs" / f"{regime},{method},seed={seed}", cfg))
    return jobs


def run_demo(out: Path, small: bool = False, progress: bool = True, workers: int = 2) -> Path:
    """Run the demo, write ``table.csv``, ``tradeoff.{png,pdf}`` and ``curves.{png,pdf}``.

    Args:
        out: Output folder (created); runs go to ``out/runs`` and are resumed when present.
        small: A tiny version (8 nodes, 20 steps) that checks the pipeline in seconds.
        progress: Print one line per finished run.
        workers: Runs in parallel (one thread each); 1 runs them in this process.

    Returns:
        Path of the trade-off figure (PNG).
    """
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    jobs = demo_runs(out, small)
    nodes = jobs[0][1]["topology"]["nodes"]
    t0 = time.time()
    print(f"flatlab demo: {', '.join(ALGORITHMS)} on mnist1d, {nodes}-node ring, Dirichlet(1) "
          f"split, 1-D CNN, per-node batch {' and '.join(map(str, BATCHES.values()))} "
          f"-> {out}", flush=True)
    run_many(jobs, workers, verbose=progress)  # finished runs are skipped
    table = _table(jobs)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    _show(table, summary, nodes, jobs[0][1]["train"]["steps"])
    png = _figures(table, jobs, out)
    print(f"\nruns: {out / 'runs'} (flatlab results {out / 'runs'}), tables: "
          f"{out / 'summary.csv'} (mean ± s.e.) and {out / 'table.csv'} (every run), figures: "
          f"{png}, {out / 'tradeoff.pdf'}, {out / 'curves.png'} ({time.time() - t0:.0f} s)")
    return png


def _table(jobs: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    """One row per run: its regime, batch and method, status and final measurements."""
    rows = []
    for path, cfg in jobs:
        regime, method, _ = path.name.split(",")
        r = final_values(path, COLUMNS)
        rows.append({"regime": regime, "batch": cfg["data"]["batch_size"], "method": method,
                     "topology": "ring", "seed": cfg["seed"], **r, **final_convergence(path)})
    table = pd.DataFrame(rows)
    if "comm_bytes" in table:
        table["MB_sent"] = table.pop("comm_bytes") / 1e6
    return table


SHOWN = {"test_accuracy": "test acc", "train_loss": "train loss", "grad_norm": "|grad f|",
         "hessian_top": "lambda_max", "hessian_trace": "tr(H)", "sharpness": "sharpness",
         "consensus_distance": "consensus dist"}


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per regime and method (done runs only).

    Columns ``regime, batch, method, seeds, diverged, converged`` (runs whose test accuracy
    changed by less than a point over the last 20% of steps) and ``<metric>_mean``,
    ``<metric>_se`` for each measured column.
    """
    cols = [c for c in SHOWN if c in table]
    return mean_and_se(table, ["regime", "batch", "method"], cols)


def _show(table: pd.DataFrame, summary: pd.DataFrame, nodes: int, steps: int) -> None:
    """Print the ring's spectral gap, mean ± s.e. over seeds, and the runs that did not finish."""
    def cell(m: float, se: float) -> str:
        if not math.isfinite(m):
            return "–"
        return f"{m:.4g} ± {se:.2g}" if math.isfinite(se) else f"{m:.4g}"

    s = spectral(make("ring", nodes))
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    print(f"\nring of {nodes}: rho = {s.rho:.4f}, spectral gap = {s.spectral_gap:.4f}; "
          f"measured at the averaged model x̄ after {steps} steps; mean ± standard error over "
          f"{seeds} seeds")
    show = summary[["regime", "batch", "method"]].copy()
    for col, name in SHOWN.items():
        if f"{col}_mean" in summary:
            show[name] = [cell(m, e) for m, e in zip(summary[f"{col}_mean"],
                                                     summary[f"{col}_se"], strict=True)]
    show["seeds"] = summary["seeds"].astype(str) + "/" + (summary["seeds"]
                                                          + summary["diverged"]).astype(str)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(show.to_string(index=False))
    unsettled = int((~table["converged"].astype(bool) & (table["status"] == "done")).sum())
    if unsettled:
        print(f"{unsettled} of {len(table)} runs still moved by a point or more over their last "
              f"20% of steps: the demo shows where {steps} steps lead, not converged minima")
    for r in table[table["status"] != "done"].itertuples():
        print(f"{r.regime} {r.method} seed {r.seed}: {r.status}")


def _figures(table: pd.DataFrame, jobs: list[tuple[Path, dict[str, Any]]], out: Path) -> Path:
    """Write the trade-off figure and the training curves; the trade-off PNG's path."""
    fig = tradeoff_scatter(table)
    png = out / "tradeoff.png"
    for p in (png, out / "tradeoff.pdf"):
        fig.savefig(p, dpi=150)
    curves = pd.concat([load(p).assign(run=p.name.rsplit(",", 1)[0]) for p, _ in jobs
                        if (p / "metrics.parquet").is_file()], ignore_index=True)
    fig = training_curves(curves, hue="run")
    for ext in ("png", "pdf"):
        fig.savefig(out / f"curves.{ext}", dpi=150)
    return png
