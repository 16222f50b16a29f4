"""Data-heterogeneity study: is Momentum Tracking more robust to heterogeneity than the others?

The question is its paper's claim against DSGDm, QG-DSGDm and DecentLaM (Takezawa et al., TMLR;
docs/reference/algorithms.md §6.2, §13.2).

mnist1d with the 1-D CNN (GroupNorm) on a ring; heterogeneity by k classes per node (and, at
``--scale full``, a Dirichlet label split with ``alpha``); methods dsgdm, qg-dsgdm, decentlam,
gradient-tracking (in its default DIGing form and, as ``gradient-tracking-atc``, its
adapt-then-combine form) and momentum-tracking, plus dsgd at ``--scale full`` (momentum 0.9
heavy ball where a method has one, weight decay 1e-4 inside the gradient, cosine schedule,
batch 32 per node).

Two phases, both resumable (finished runs are skipped, interrupted ones resume from their
checkpoints, a diverging run is recorded as diverged and the study goes on):

1. **tune**: every method, setting and learning rate of the grid on seed 0, at the final runs'
   length, trained on 90% of the training set and evaluated on the held-out 10%
   (``data.holdout``); the learning rate with the best held-out accuracy of the averaged model
   is kept, per method and setting, and a grid whose best sits at an edge is extended by its
   own ratio until the best is interior (:func:`flatlab.experiment.study.tune_bracketed`);
2. **final**: the kept learning rate on the full training set with every seed (``seed`` and
   ``data.seed``: model initialization, minibatches and the partition all change); test
   accuracy of the averaged model ``x̄`` and the mean over the node models, measured every
   ``every`` steps so that each run's convergence is checked, and the consensus distance over
   training.

The claims (Momentum Tracking against each momentum method per setting and in its drop from the
mildest to the strongest skew; the DIGing form of gradient tracking against its ATC form) are
judged seed by seed (:func:`flatlab.experiment.evidence.judge`).

Usage::

    python analysis/heterogeneity.py --scale small   # ring of 8, k = 10 and 2, 5 seeds, CPU
    python analysis/heterogeneity.py --scale full    # rings of 8 and 16, 6 settings, GPU
    python analysis/heterogeneity.py --scale small --report   # tables and figure from disk

Writes the runs under ``--out`` (default ``results/heterogeneity-<scale>/runs``), the tables
``runs.csv`` (one row per final run, with its convergence), ``lr.csv`` (the tuning, extensions
marked), ``summary.csv`` and ``summary.md`` (mean and standard error over seeds, converged runs,
verdicts) and ``verdicts.csv`` next to them, and the figures
``paper_figs/out/heterogeneity{,_sensitivity}.{pdf,png}``.
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
from flatlab.experiment.evidence import Claim, change_between, judge, verdict_markdown
from flatlab.experiment.results import read_metrics
from flatlab.experiment.study import final_convergence, final_values, mean_and_se, tune_bracketed

ROOT = Path(__file__).resolve().parents[1]
# study label -> (registered algorithm, hyper-parameters); gradient tracking in both forms, since
# the DIGing form (the default, the official code's) steps with the un-mixed tracker
ALGORITHMS = {"gradient-tracking-atc": ("gradient-tracking", {"form": "atc"})}
MOMENTUM = {"dsgdm", "qg-dsgdm", "decentlam", "momentum-tracking"}
SIX = ("dsgdm", "qg-dsgdm", "decentlam", "gradient-tracking", "gradient-tracking-atc",
       "momentum-tracking")

# scale -> grid. settings: (partition, level), ordered from homogeneous to heterogeneous; lrs:
# the initial grids, extended by their own ratio until the best is interior (tune_bracketed).
SCALES: dict[str, dict[str, Any]] = {
    # the mildest and the strongest skew of the official demo (k classes per node), 3000 steps
    "small": dict(nodes=(8,), settings=(("classes", 10), ("classes", 2)), methods=SIX,
                  seeds=(0, 1, 2, 3, 4), tune_seeds=(0, 1, 2), steps=3000, every=150,
                  lrs={"momentum": (0.003, 0.01, 0.03, 0.1), "plain": (0.01, 0.03, 0.1, 0.3)}),
    "full": dict(nodes=(8, 16), settings=(("dirichlet", 10.0), ("dirichlet", 1.0),
                                          ("dirichlet", 0.1), ("classes", 10), ("classes", 4),
                                          ("classes", 2)), methods=("dsgd", *SIX),
                 seeds=(0, 1, 2, 3, 4), steps=6000, every=300,
                 lrs={"momentum": (0.001, 0.003, 0.01, 0.03, 0.1),
                      "plain": (0.003, 0.01, 0.03, 0.1, 0.3)}),
    # the test suite's: a few steps, so the script cannot rot
    "tiny": dict(nodes=(4,), settings=(("classes", 10), ("classes", 4)),
                 methods=("dsgdm", "momentum-tracking"), seeds=(0, 1), steps=10, every=2,
                 lrs={"momentum": (0.01, 0.03), "plain": (0.03, 0.1)}, extensions=1),
}


def _config(method: str, nodes: int, setting: tuple[str, float], lr: float, seed: int,
            steps: int, holdout: float, every: int) -> dict[str, Any]:
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
            "measure": {"every": every, "metrics": ["loss", "accuracy", "consensus_distance"],
                        "per_node": False},
            "checkpoint_every": max(steps // 2, 1)}


def _setting_label(setting: tuple[str, float]) -> str:
    partition, level = setting
    return f"alpha={level:g}" if partition == "dirichlet" else f"k={int(level)}"


def _run_name(method: str, nodes: int, setting: tuple[str, float], lr: float, seed: int) -> str:
    return f"n={nodes},{_setting_label(setting)},{method},lr={lr:g},seed={seed}"


ACCURACY = {"test_accuracy": "test_accuracy", "test_accuracy_nodes": "test_accuracy[mean]",
            "consensus_distance": "consensus_distance"}
GROUP = ["nodes", "partition", "level", "method"]


def tune(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Phase 1: each learning rate on seed 0 with a 10% held-out split, the grid bracketed.

    The grid is extended by its own ratio until the best learning rate of every method and
    setting is interior (:func:`~flatlab.experiment.study.tune_bracketed`).
    """
    points = [{"nodes": n, "partition": s[0], "level": s[1], "method": m, "lr": lr}
              for n in grid["nodes"] for s in grid["settings"] for m in grid["methods"]
              for lr in grid["lrs"]["momentum" if m in MOMENTUM else "plain"]]

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        s = (p["partition"], p["level"])
        seed = p["seed"]
        return (runs / "tune" / _run_name(p["method"], p["nodes"], s, p["lr"], seed),
                _config(p["method"], p["nodes"], s, p["lr"], seed, grid["steps"], holdout=0.1,
                        every=grid["steps"]))

    return tune_bracketed(points, job, workers, GROUP, "lr",
                          max_extensions=grid.get("extensions", 4),
                          seeds=grid.get("tune_seeds", (0,)), classes=10)


def final(grid: dict[str, Any], runs: Path, lr_table: pd.DataFrame, workers: int
          ) -> pd.DataFrame:
    """Phase 2: the chosen learning rate with every seed on the full training set.

    Test accuracy is measured every ``every`` steps, so that each run's convergence is checked.
    """
    chosen = lr_table[lr_table["chosen"]]
    points = []
    for n in grid["nodes"]:
        for s in grid["settings"]:
            for m in grid["methods"]:
                pick = chosen[(chosen["nodes"] == n) & (chosen["partition"] == s[0])
                              & (chosen["level"] == s[1]) & (chosen["method"] == m)]
                if pick.empty:  # every learning rate diverged: nothing to run
                    print(f"no learning rate of {m} at n={n}, {_setting_label(s)} trained",
                          flush=True)
                    continue
                lr = float(pick["lr"].iloc[0])
                points += [(m, n, s, lr, seed) for seed in grid["seeds"]]
    jobs = [(str(runs / "final" / _run_name(m, n, s, lr, seed)),
             _config(m, n, s, lr, seed, grid["steps"], holdout=0.0, every=grid["every"]))
            for m, n, s, lr, seed in points]
    run_many(jobs, workers)
    rows = []
    for (m, n, s, lr, seed), (path, _) in zip(points, jobs, strict=True):
        rows.append({"nodes": n, "partition": s[0], "level": s[1],
                     "heterogeneity": _setting_label(s), "method": m, "lr": lr, "seed": seed,
                     **final_values(path, ACCURACY), **final_convergence(path),
                     "consensus_during": _mean_during(path, "consensus_distance")})
    return pd.DataFrame(rows)


def _mean_during(path: str | Path, metric: str) -> float:
    """The mean of a metric over a run's measurements after step 0 (NaN without any)."""
    if not (Path(path) / "metrics.parquet").is_file():
        return math.nan
    m = read_metrics(path)
    v = m[(m.metric == metric) & (m.step > 0)].value
    return float(v.mean()) if len(v) else math.nan


def claims(grid: dict[str, Any], table: pd.DataFrame) -> pd.DataFrame:
    """The verdicts on the Momentum Tracking paper's claims and on gradient tracking's forms.

    Per setting: Momentum Tracking against DSGDm, QG-DSGDm and DecentLaM (the official demo's
    ordering MT > DecentLaM > QG-DSGDm > DSGDm, one pair at a time), and the DIGing form of
    gradient tracking trailing its adapt-then-combine form. Across settings: Momentum Tracking
    loses less accuracy than each momentum method from the mildest to the strongest skew (the
    paper's robustness claim), paired by seed.
    """
    methods = set(grid["methods"])
    pairs = [("momentum-tracking", b, "greater") for b in ("dsgdm", "qg-dsgdm", "decentlam")]
    pairs += [("decentlam", "qg-dsgdm", "greater"), ("qg-dsgdm", "dsgdm", "greater"),
              ("gradient-tracking", "gradient-tracking-atc", "less")]
    pairs = [p for p in pairs if {p[0], p[1]} <= methods]
    out = []
    for n in grid["nodes"]:
        for s in grid["settings"]:
            where = {"nodes": n, "partition": s[0], "level": s[1]}
            cs = [Claim(f"{a} {'beats' if c == 'greater' else 'trails'} {b}", a, b, c, where)
                  for a, b, c in pairs]
            got = judge(table, cs)
            got.insert(1, "setting", f"n={n}, {_setting_label(s)}")
            out.append(got.drop(columns=list(where)))
        mild, strong = grid["settings"][0], grid["settings"][-1]
        if mild[0] != strong[0] or "momentum-tracking" not in methods:
            continue
        sub = table[(table["nodes"] == n) & (table["partition"] == mild[0])]
        change = change_between(sub, "level", mild[1], strong[1], keys=["method"])
        cs = [Claim(f"momentum-tracking loses less than {b}", "momentum-tracking", b)
              for b in ("dsgdm", "qg-dsgdm", "decentlam") if b in methods]
        got = judge(change, cs)
        got.insert(1, "setting", f"n={n}, {_setting_label(mild)} → {_setting_label(strong)}")
        out.append(got)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per method and setting, with converged run counts."""
    s = mean_and_se(table, ["nodes", "partition", "level", "heterogeneity", "method", "lr"],
                    ["test_accuracy", "test_accuracy_nodes", "consensus_during"])
    worst = table.groupby(GROUP, sort=False)["change"].apply(lambda c: c.abs().max())
    return s.join(worst.rename("worst_change"), on=GROUP)


def _pct(m: float, se: float = math.nan) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{100 * m:.1f} ± {100 * se:.1f}" if math.isfinite(se) else f"{100 * m:.1f}"


def markdown(summary: pd.DataFrame, lr_table: pd.DataFrame, verdicts: pd.DataFrame,
             grid: dict[str, Any]) -> str:
    """Accuracy with convergence, the tuning with its grid checks, and the verdicts."""
    steps = grid["steps"]
    lines = [f"Final runs: {steps} steps, cosine schedule; converged = the test accuracy of x̄ "
             f"changed by less than 1 point over the last 20% of steps.", "",
             "| n | heterogeneity | method | lr | test acc. of x̄ (%) | mean test acc. of nodes "
             "(%) | consensus distance (mean over training) | converged | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.nodes} | {r.heterogeneity} | {r.method} | {r.lr:g} | "
                     f"{_pct(r.test_accuracy_mean, r.test_accuracy_se)} | "
                     f"{_pct(r.test_accuracy_nodes_mean, r.test_accuracy_nodes_se)} | "
                     f"{r.consensus_during_mean:.3g} | {int(r.converged)}/{r.seeds + r.diverged}"
                     f"{'' if r.converged == r.seeds + r.diverged else ' (not converged)'} | "
                     f"{r.seeds}{f' ({r.diverged} diverged)' if r.diverged else ''} |")
    lines += ["", "Tuning (seed 0, held-out 10%): the grid each learning rate was chosen from; "
              "values marked * were added because the best sat at an edge.", "",
              "| n | setting | method | grid | chosen lr | held-out acc. (%) | interior |",
              "|---|---|---|---|---|---|---|"]
    for key, g in lr_table.groupby(GROUP, sort=False):
        n, part, level, m = key
        pick = g[g["chosen"]]
        vals = ", ".join(f"{v:g}{'*' if e else ''}{'†' if st == 'diverged' else ''}"
                         for v, e, st in zip(g["lr"], g["extended"], g["status"], strict=True))
        lines.append(f"| {n} | {_setting_label((part, level))} | {m} | {vals} | "
                     f"{'–' if pick.empty else f'{pick.lr.iloc[0]:g}'} | "
                     f"{'–' if pick.empty else _pct(pick.holdout_accuracy.iloc[0])} | "
                     f"{'yes' if g['interior'].iloc[0] else 'no'} |")
    lines += ["", "† diverged.", "", "Verdicts (test accuracy of x̄, a − b in points, paired by "
              "seed, 95% t interval):", "", verdict_markdown(verdicts)]
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
    verdicts = claims(grid, table)
    a.out.mkdir(parents=True, exist_ok=True)
    lr_table.to_csv(a.out / "lr.csv", index=False)
    table.to_csv(a.out / "runs.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    verdicts.to_csv(a.out / "verdicts.csv", index=False)
    (a.out / "summary.md").write_text(markdown(summary, lr_table, verdicts, grid))

    from flatlab.plots import heterogeneity, sensitivity

    save_figure(heterogeneity(table), a.fig)
    save_figure(sensitivity(lr_table, "lr", panels=["nodes", "partition", "level"]),
                a.fig.with_name(a.fig.name + "_sensitivity"))
    print(markdown(summary, lr_table, verdicts, grid))
    print(f"{len(table)} final runs ({time.time() - t0:.0f} s); tables in {a.out}, figures "
          f"{a.fig}{{,_sensitivity}}.{{pdf,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
