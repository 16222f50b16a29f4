"""Data-heterogeneity study: is Momentum Tracking more robust to heterogeneity than the others?

The question is its paper's claim against DSGDm, QG-DSGDm and DecentLaM (Takezawa et al., TMLR;
reference/algorithms.md §6.2, §13.2).

mnist1d with the 1-D CNN (GroupNorm) on a ring; heterogeneity by a Dirichlet label split
(alpha) and by k classes per node; methods dsgd, dsgdm, qg-dsgdm, decentlam, gradient-tracking
(in its default DIGing form and, as ``gradient-tracking-atc``, its adapt-then-combine form) and
momentum-tracking (momentum 0.9 heavy ball where a method has one, weight decay 1e-4 inside the
gradient, cosine schedule, batch 32 per node).

Two phases, both resumable (finished runs are skipped, interrupted ones resume from their
checkpoints, a diverging run is recorded as diverged and the study goes on):

1. **tune**: every method, setting and learning rate of the grid on seed 0, trained on 90% of
   the training set and evaluated on the held-out 10% (``data.holdout``); the learning rate with
   the best held-out accuracy of the averaged model is kept, per method and setting;
2. **final**: the kept learning rate on the full training set with every seed (``seed`` and
   ``data.seed``: model initialization, minibatches and the partition all change); test
   accuracy of the averaged model ``x̄`` and the mean over the node models.

Usage::

    python analysis/heterogeneity.py --scale small   # ring of 8, 2 x 2 settings, 3 seeds, CPU
    python analysis/heterogeneity.py --scale full    # rings of 8 and 16, 3 x 3 settings, GPU
    python analysis/heterogeneity.py --scale small --report   # tables and figure from disk

Writes the runs under ``--out`` (default ``results/heterogeneity-<scale>/runs``), the tables
``runs.csv`` (one row per final run), ``lr.csv`` (the tuning), ``summary.csv`` and ``summary.md``
(mean and standard error over seeds) next to them, and the figure
``paper_figs/out/heterogeneity.{pdf,png}``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from common import save_figure, study_args

from flatlab.experiment import run_many
from flatlab.experiment.study import choose_best, final_values, mean_and_se

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dsgd", "dsgdm", "qg-dsgdm", "decentlam", "gradient-tracking", "gradient-tracking-atc",
           "momentum-tracking")
# study label -> (registered algorithm, hyper-parameters); gradient tracking in both forms, since
# the DIGing form (the default, the official code's) steps with the un-mixed tracker
ALGORITHMS = {"gradient-tracking-atc": ("gradient-tracking", {"form": "atc"})}
MOMENTUM = {"dsgdm", "qg-dsgdm", "decentlam", "momentum-tracking"}

# scale -> grid. settings: (partition, level), ordered from homogeneous to heterogeneous.
SCALES: dict[str, dict[str, Any]] = {
    "small": dict(nodes=(8,), settings=(("dirichlet", 10.0), ("dirichlet", 0.1),
                                        ("classes", 10), ("classes", 2)),
                  seeds=(0, 1, 2), steps=600,
                  lrs={"momentum": (0.01, 0.03, 0.1), "plain": (0.03, 0.1, 0.3)}),
    "full": dict(nodes=(8, 16), settings=(("dirichlet", 10.0), ("dirichlet", 1.0),
                                          ("dirichlet", 0.1), ("classes", 10), ("classes", 4),
                                          ("classes", 2)),
                 seeds=(0, 1, 2), steps=4000,
                 lrs={"momentum": (0.003, 0.01, 0.03, 0.1, 0.3),
                      "plain": (0.01, 0.03, 0.1, 0.3, 1.0)}),
    # the test suite's: one seed, a few steps, so the script cannot rot
    "tiny": dict(nodes=(4,), settings=(("classes", 4),), seeds=(0,), steps=6,
                 lrs={"momentum": (0.01, 0.03), "plain": (0.03, 0.1)}),
}


def _config(method: str, nodes: int, setting: tuple[str, float], lr: float, seed: int,
            steps: int, holdout: float) -> dict[str, Any]:
    partition, level = setting
    data: dict[str, Any] = {"name": "mnist1d", "partition": partition, "seed": seed,
                            "batch_size": 32, "holdout": holdout}
    if partition == "dirichlet":
        data["alpha"] = float(level)
    else:
        data["classes_per_node"] = int(level)
    name, params = ALGORITHMS.get(method, (method, {}))
    params = {**params, **({"momentum": 0.9} if method in MOMENTUM else {})}
    return {"name": "heterogeneity", "seed": seed, "device": "auto", "data": data,
            "model": {"name": "cnn1d"}, "topology": {"name": "ring", "nodes": nodes},
            "algorithm": {"name": name, "params": params},
            "optim": {"lr": lr, "schedule": "cosine", "weight_decay": 1e-4},
            "train": {"steps": steps},
            "measure": {"every": steps, "metrics": ["loss", "accuracy", "consensus_distance"],
                        "per_node": False},
            "checkpoint_every": max(steps // 2, 1)}


def _setting_label(setting: tuple[str, float]) -> str:
    partition, level = setting
    return f"alpha={level:g}" if partition == "dirichlet" else f"k={int(level)}"


def _run_name(method: str, nodes: int, setting: tuple[str, float], lr: float, seed: int) -> str:
    return f"n={nodes},{_setting_label(setting)},{method},lr={lr:g},seed={seed}"


ACCURACY = {"test_accuracy": "test_accuracy", "test_accuracy_nodes": "test_accuracy[mean]",
            "consensus_distance": "consensus_distance"}


def tune(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Phase 1: every learning rate of the grid on seed 0 with a 10% held-out split."""
    points = [(m, n, s, lr) for n in grid["nodes"] for s in grid["settings"] for m in METHODS
              for lr in grid["lrs"]["momentum" if m in MOMENTUM else "plain"]]
    jobs = [(str(runs / "tune" / _run_name(m, n, s, lr, 0)),
             _config(m, n, s, lr, 0, grid["steps"], holdout=0.1)) for m, n, s, lr in points]
    run_many(jobs, workers)
    rows = []
    for (m, n, s, lr), (path, _) in zip(points, jobs, strict=True):
        acc = final_values(path, ACCURACY)
        ok = acc["status"] == "done" and math.isfinite(acc["test_accuracy"])
        rows.append({"nodes": n, "partition": s[0], "level": s[1], "method": m, "lr": lr,
                     "status": acc["status"],
                     "holdout_accuracy": acc["test_accuracy"] if ok else math.nan})
    table = pd.DataFrame(rows)
    table["chosen"] = choose_best(table, ["nodes", "partition", "level", "method"],
                                  "holdout_accuracy", "lr")
    return table


def final(grid: dict[str, Any], runs: Path, lr_table: pd.DataFrame, workers: int
          ) -> pd.DataFrame:
    """Phase 2: the chosen learning rate with every seed on the full training set."""
    chosen = lr_table[lr_table["chosen"]]
    points = []
    for n in grid["nodes"]:
        for s in grid["settings"]:
            for m in METHODS:
                pick = chosen[(chosen["nodes"] == n) & (chosen["partition"] == s[0])
                              & (chosen["level"] == s[1]) & (chosen["method"] == m)]
                if pick.empty:  # every learning rate diverged: nothing to run
                    print(f"no learning rate of {m} at n={n}, {_setting_label(s)} trained",
                          flush=True)
                    continue
                lr = float(pick["lr"].iloc[0])
                points += [(m, n, s, lr, seed) for seed in grid["seeds"]]
    jobs = [(str(runs / "final" / _run_name(m, n, s, lr, seed)),
             _config(m, n, s, lr, seed, grid["steps"], holdout=0.0))
            for m, n, s, lr, seed in points]
    run_many(jobs, workers)
    rows = []
    for (m, n, s, lr, seed), (path, _) in zip(points, jobs, strict=True):
        rows.append({"nodes": n, "partition": s[0], "level": s[1],
                     "heterogeneity": _setting_label(s), "method": m, "lr": lr, "seed": seed,
                     **final_values(path, ACCURACY)})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds of the final accuracies, per method and setting."""
    return mean_and_se(table, ["nodes", "partition", "level", "heterogeneity", "method", "lr"],
                       ["test_accuracy", "test_accuracy_nodes"])


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table: accuracy (%) of x̄ and of the node mean, ± s.e."""
    def cell(m: float, se: float) -> str:
        if not math.isfinite(m):
            return "–"
        return f"{100 * m:.1f} ± {100 * se:.1f}" if math.isfinite(se) else f"{100 * m:.1f}"

    lines = ["| n | heterogeneity | method | lr | test acc. of x̄ (%) | mean test acc. of nodes "
             "(%) | seeds |", "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.nodes} | {r.heterogeneity} | {r.method} | {r.lr:g} | "
                     f"{cell(r.test_accuracy_mean, r.test_accuracy_se)} | "
                     f"{cell(r.test_accuracy_nodes_mean, r.test_accuracy_nodes_se)} | "
                     f"{r.seeds}{f' ({r.diverged} diverged)' if r.diverged else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    a = study_args(argv, __doc__, SCALES, "heterogeneity", ROOT)
    if isinstance(a, int):
        return a
    t0 = time.time()
    grid = SCALES[a.scale]
    lr_table = tune(grid, a.runs, a.workers)
    table = final(grid, a.runs, lr_table, a.workers)
    summary = summarize(table)
    a.out.mkdir(parents=True, exist_ok=True)
    lr_table.to_csv(a.out / "lr.csv", index=False)
    table.to_csv(a.out / "runs.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    (a.out / "summary.md").write_text(markdown(summary))

    from flatlab.plots import heterogeneity

    save_figure(heterogeneity(table), a.fig)
    print(markdown(summary))
    print(f"{len(table)} final runs ({time.time() - t0:.0f} s); tables in {a.out}, figure "
          f"{a.fig}.{{pdf,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
