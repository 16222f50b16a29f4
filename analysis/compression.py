"""Compression study: does AdaGossip beat CHOCO-SGD at equal compression?

The AdaGossip paper (Aketi, Hashemi, Roy 2024; docs/reference/algorithms.md §9.3) reports 0-2 points
of test accuracy over CHOCO-SGD at equal compression, and a step that needs less tuning. Here:
mnist1d with the 1-D CNN (GroupNorm), 16 nodes; at ``--scale small`` a ring with a Dirichlet
label split of alpha 0.1 and one compression of each kind (``top-k 99%`` and ``qsgd 90%``), at
``--scale full`` a ring and a 4 x 4 torus, alpha 1 and 0.1, and all three. The model
differences are compressed per parameter tensor, as in the AdaGossip code:

- ``top-k 90%`` and ``top-k 99%``: top-k keeping 10% and 1% of each tensor (values and 32-bit
  indices are counted, so the bytes sent are 20% and 2% of the dense ones);
- ``qsgd 90%``: QSGD with 3 levels scaled by ``1/(1 + τ)`` (a sign bit and 2 level bits per
  coordinate: 9.4% of the dense bytes). A fixed-width QSGD cannot reach 99% (it needs at least
  2 bits per coordinate), so there is no ``qsgd 99%``.

Every method takes the same local step (SGD with Nesterov momentum 0.9, lr 0.1 cosine, weight
decay 1e-4; the AdaGossip code's choice), with 16 samples per node at ``--scale small`` and 32
at ``--scale full`` (the code's total batch of 512 over 16 nodes); uncompressed DSGDm with the
same step is the reference. The consensus step ``γ`` is tuned per method, compression and
setting on the held-out 10% of the training set (``data.holdout``), on one grid for both
methods, extended by its own ratio while the best sits at an edge (within ``γ <= 1``).

Phases (resumable, as the other studies; shared machinery :func:`flatlab.experiment.run_many`,
:mod:`flatlab.experiment.study`, :mod:`flatlab.experiment.evidence` and ``analysis/common.py``):

1. **tune**: each ``γ`` of the grid on seed 0, at the final runs' length;
2. **final**: the chosen ``γ`` with every seed on the full training set, test accuracy of ``x̄``
   and bytes sent measured every ``every`` steps; each run's convergence is checked.

The verdicts pair AdaGossip with CHOCO seed by seed (same initialization, partition and
minibatches), so the difference's interval excludes the between-seed variation; ``plateau.csv``
gives the range of ``γ`` within 2 points of each method's best.

Usage::

    python analysis/compression.py --scale small    # CPU, 2 cores
    python analysis/compression.py --scale full     # GPU
    python analysis/compression.py --scale small --report

Writes ``results/compression-<scale>/{gamma,plateau,runs,summary,verdicts,curves}.csv`` and
``summary.md``, and ``paper_figs/out/compression{,_sensitivity}.{pdf,png}`` (accuracy against
bytes sent; held-out accuracy against ``γ``).
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
from flatlab.experiment.evidence import Claim, judge, verdict_markdown
from flatlab.experiment.study import final_convergence, final_values, mean_and_se, tune_bracketed

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("choco", "adagossip")
REFERENCE = "dsgdm"  # uncompressed, the same local step
COMPRESSIONS: dict[str, dict[str, Any]] = {
    "top-k 90%": {"compressor": "top-k", "fraction": 0.1},
    "top-k 99%": {"compressor": "top-k", "fraction": 0.01},
    "qsgd 90%": {"compressor": "qsgd", "levels": 3, "biased": True},
}
LOCAL = {"momentum": 0.9, "nesterov": True}
LR = 0.1

GAMMAS = (0.01, 0.03, 0.1, 0.3, 1.0)  # one grid for both, so their sensitivity compares

SCALES: dict[str, dict[str, Any]] = {
    # the strongest skew on the ring, one compression of each kind, 5 seeds. 2000 steps left 22
    # of the 25 compressed final runs still rising over their last 400 steps (CHOCO at top-k 1%
    # by 2-6 points): 5000 steps
    "small": dict(nodes=16, topologies=("ring",), alphas=(0.1,),
                  compressions=("top-k 99%", "qsgd 90%"), seeds=(0, 1, 2, 3, 4), steps=5000,
                  every=250, batch=16, gammas={"choco": GAMMAS, "adagossip": GAMMAS},
                  tune_on=None),
    "full": dict(nodes=16, topologies=("ring", "torus"), alphas=(1.0, 0.1),
                 compressions=tuple(COMPRESSIONS), seeds=(0, 1, 2, 3, 4), steps=4000, every=200,
                 batch=32, gammas={"choco": GAMMAS, "adagossip": GAMMAS}, tune_on=None),
    # the test suite's: so the script cannot rot
    "tiny": dict(nodes=4, topologies=("ring",), alphas=(0.1,), compressions=("top-k 90%",),
                 seeds=(0, 1), steps=10, every=2, batch=16,
                 gammas={"choco": (0.3, 0.9), "adagossip": (0.1, 1.0)},
                 tune_on=("ring", 0.1)),
}


def _config(method: str, compression: str | None, topology: str, alpha: float, gamma: float,
            seed: int, grid: dict[str, Any], holdout: float) -> dict[str, Any]:
    params: dict[str, Any] = dict(LOCAL)
    if method != REFERENCE:
        params |= {**COMPRESSIONS[str(compression)], "gamma": gamma, "seed": seed}
    steps = grid["steps"]
    return {"name": "compression", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": alpha, "seed": seed,
                     "batch_size": grid["batch"], "holdout": holdout},
            "model": {"name": "cnn1d"},
            "topology": {"name": topology, "nodes": grid["nodes"]},
            "algorithm": {"name": method, "params": params},
            "optim": {"lr": LR, "schedule": "cosine", "weight_decay": 1e-4},
            "train": {"steps": steps},
            "measure": {"every": steps if holdout else grid["every"],
                        "metrics": ["loss", "accuracy", "comm_bytes", "consensus_distance"],
                        "per_node": False, "train_subset": 512},
            "checkpoint_every": max(steps // 2, 1)}


def _name(method: str, compression: str | None, topology: str, alpha: float, gamma: float,
          seed: int) -> str:
    comp = "none" if compression is None else compression.replace(" ", "").replace("%", "pct")
    return f"{topology},alpha={alpha:g},{comp},{method},gamma={gamma:g},seed={seed}"


def _tune_settings(grid: dict[str, Any]) -> list[tuple[str, float]]:
    if grid["tune_on"] is not None:
        return [tuple(grid["tune_on"])]
    return [(t, a) for t in grid["topologies"] for a in grid["alphas"]]


def tune(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Each method's ``γ`` grid per compression and setting on seed 0, bracketed.

    A best ``γ`` at an edge of the grid extends it by its own ratio until the best is interior
    or the next value diverges (:func:`~flatlab.experiment.study.tune_bracketed`).
    """
    points = [{"topology": t, "alpha": a, "compression": c, "method": m, "gamma": g}
              for t, a in _tune_settings(grid) for c in grid["compressions"]
              for m in METHODS for g in grid["gammas"][m]]

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        args = (p["method"], p["compression"], p["topology"], p["alpha"], p["gamma"], 0)
        return runs / "tune" / _name(*args), _config(*args, grid, 0.1)

    return tune_bracketed(points, job, workers, ["topology", "alpha", "compression", "method"],
                          "gamma", limits=_gamma_limits)


def _gamma_limits(key: dict[str, Any]) -> tuple[float, float]:
    """The values ``γ`` may take: (0, 1] for both methods (as their papers and flatlab check)."""
    return (0.0, 1.0)


def _chosen_gamma(table: pd.DataFrame, grid: dict[str, Any], method: str, compression: str,
                  topology: str, alpha: float) -> float | None:
    t, a = grid["tune_on"] if grid["tune_on"] is not None else (topology, alpha)
    pick = table[table["chosen"] & (table["topology"] == t) & (table["alpha"] == a)
                 & (table["compression"] == compression) & (table["method"] == method)]
    return None if pick.empty else float(pick["gamma"].iloc[0])


def final(grid: dict[str, Any], runs: Path, gammas: pd.DataFrame, workers: int
          ) -> pd.DataFrame:
    """Chosen ``γ`` with every seed in every setting, and the uncompressed reference."""
    points: list[tuple[str, str | None, str, float, float, int]] = []
    for t in grid["topologies"]:
        for a in grid["alphas"]:
            points += [(REFERENCE, None, t, a, 0.0, s) for s in grid["seeds"]]
            for c in grid["compressions"]:
                for m in METHODS:
                    g = _chosen_gamma(gammas, grid, m, c, t, a)
                    if g is None:
                        print(f"no gamma of {m} trained with {c}", flush=True)
                        continue
                    points += [(m, c, t, a, g, s) for s in grid["seeds"]]
    jobs = [(runs / "final" / _name(*p), _config(*p, grid, 0.0)) for p in points]
    run_many(jobs, workers)
    rows = []
    for (m, c, t, a, g, s), (path, _) in zip(points, jobs, strict=True):
        r = final_values(path, {"test_accuracy": "test_accuracy", "bytes": "comm_bytes",
                                "consensus_distance": "consensus_distance"})
        rows.append({"topology": t, "alpha": a, "compression": c or "none", "method": m,
                     "gamma": g, "seed": s, **r, "mb_per_node": r["bytes"] / grid["nodes"] / 1e6,
                     **final_convergence(path)})
    return pd.DataFrame(rows)


KEYS = ["topology", "alpha", "compression", "method", "gamma"]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± s.e. per method and setting, with converged run counts."""
    return mean_and_se(table, KEYS, ["test_accuracy", "mb_per_node", "consensus_distance"])


def claims(grid: dict[str, Any], table: pd.DataFrame) -> pd.DataFrame:
    """The AdaGossip paper's claim per setting and compression: it beats CHOCO-SGD.

    Paired by seed (same initialization, partition, minibatches and compression draws).
    """
    cs = [Claim(f"adagossip beats choco, {c}", "adagossip", "choco",
                where={"topology": t, "alpha": a, "compression": c})
          for t in grid["topologies"] for a in grid["alphas"] for c in grid["compressions"]]
    v = judge(table, cs)
    if len(v):
        v.insert(1, "setting", [f"{t}, alpha={a:g}" for t, a in zip(v.topology, v.alpha,
                                                                       strict=True)])
    return v


def plateau(gammas: pd.DataFrame, points: float = 0.02) -> pd.DataFrame:
    """How forgiving each method is of its ``γ`` (seed 0's tuning runs).

    Per setting, compression and method: the values of ``γ`` whose held-out accuracy is within
    ``points`` of the best, and the width of that range in decades (0 when one value).
    """
    rows = []
    for key, g in gammas.groupby(["topology", "alpha", "compression", "method"], sort=False):
        ok = g[g["status"] == "done"].dropna(subset=["holdout_accuracy"])
        if ok.empty:
            continue
        near = ok[ok["holdout_accuracy"] >= ok["holdout_accuracy"].max() - points]["gamma"]
        rows.append(dict(zip(["topology", "alpha", "compression", "method"], key, strict=True))
                    | {"near_best": ", ".join(f"{v:g}" for v in sorted(near)),
                       "decades": math.log10(near.max() / near.min()),
                       "best": float(ok["holdout_accuracy"].max()),
                       "worst": float(ok["holdout_accuracy"].min()),
                       "diverged": int((g["status"] == "diverged").sum())})
    return pd.DataFrame(rows)


def _bracket_word(g: pd.DataFrame) -> str:
    if g["interior"].iloc[0]:
        return "yes"
    return "at its limit" if g["at_limit"].iloc[0] else "no"


def markdown(summary: pd.DataFrame, gammas: pd.DataFrame, verdicts: pd.DataFrame,
             grid: dict[str, Any]) -> str:
    """Accuracy with convergence, the tuning with its grid checks and plateaus, the verdicts."""
    def pm(m: float, se: float, scale: float = 100.0, fmt: str = ".1f") -> str:
        if not math.isfinite(m):
            return "–"
        return f"{scale * m:{fmt}}" + (f" ± {scale * se:{fmt}}" if math.isfinite(se) else "")

    lines = [f"Final runs: {grid['steps']} steps, cosine schedule; converged = the test accuracy "
             "of x̄ changed by less than 1 point over the last 20% of steps.", "",
             "| topology | alpha | compression | method | gamma | test acc. of x̄ (%) | MB sent "
             "per node | consensus distance | converged | runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        runs = r.seeds + r.diverged
        lines.append(f"| {r.topology} | {r.alpha:g} | {r.compression} | {r.method} | "
                     f"{'–' if r.method == REFERENCE else f'{r.gamma:g}'} | "
                     f"{pm(r.test_accuracy_mean, r.test_accuracy_se)} | "
                     f"{pm(r.mb_per_node_mean, math.nan, 1.0, '.2f')} | "
                     f"{pm(r.consensus_distance_mean, r.consensus_distance_se, 1.0, '.3g')} | "
                     f"{int(r.converged)}/{runs}"
                     f"{'' if r.converged == runs else ' (not converged)'} | {r.seeds}/{runs} |")
    lines += ["", "Tuning of γ (seed 0, held-out 10%); * added because the best sat at an edge, "
              "† diverged; 'within 2 points' is the range of γ whose held-out accuracy is within "
              "2 points of the best.", "",
              "| topology | alpha | compression | method | grid | chosen γ | held-out acc. (%) | "
              "interior | within 2 points (decades) | worst (%) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    flat = plateau(gammas).set_index(["topology", "alpha", "compression", "method"])
    for key, g in gammas.groupby(["topology", "alpha", "compression", "method"], sort=False):
        pick = g[g["chosen"]]
        vals = ", ".join(f"{v:g}{'*' if e else ''}{'†' if st == 'diverged' else ''}"
                         for v, e, st in zip(g["gamma"], g["extended"], g["status"], strict=True))
        p = flat.loc[key] if key in flat.index else None
        lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | {key[3]} | {vals} | "
                     f"{'–' if pick.empty else f'{pick.gamma.iloc[0]:g}'} | "
                     f"{'–' if pick.empty else pm(pick.holdout_accuracy.iloc[0], math.nan)} | "
                     f"{_bracket_word(g)} | "
                     f"{'–' if p is None else f'{p.near_best} ({p.decades:.1f})'} | "
                     f"{'–' if p is None else pm(p.worst, math.nan)} |")
    lines += ["", "AdaGossip − CHOCO, test accuracy of x̄ (points), paired by seed, 95% t "
              "interval:", "", verdict_markdown(verdicts)]
    return "\n".join(lines) + "\n"


def _curves(table: pd.DataFrame, runs: Path, n: int) -> pd.DataFrame:
    """Test accuracy of x̄ against bytes sent per node, for every final run (the figure)."""
    import flatlab

    cols = ["topology", "alpha", "compression", "method", "seed", "step", "mb_per_node",
            "test_accuracy"]
    frames = []
    for r in table.itertuples():
        comp = None if r.compression == "none" else r.compression
        path = runs / "final" / _name(r.method, comp, r.topology, r.alpha, r.gamma, r.seed)
        if not (path / "metrics.parquet").is_file():
            continue
        df = flatlab.results.load(path)
        df = df[df["scope"].isin(["avg", "network"])].pivot_table(index="step", columns="metric",
                                                                 values="value")
        if not {"test_accuracy", "comm_bytes"} <= set(df.columns):
            continue
        df = df.dropna(subset=["test_accuracy", "comm_bytes"]).reset_index()
        frames.append(pd.DataFrame({"topology": r.topology, "alpha": r.alpha,
                                    "compression": r.compression, "method": r.method,
                                    "seed": r.seed, "step": df["step"],
                                    "mb_per_node": df["comm_bytes"] / n / 1e6,
                                    "test_accuracy": df["test_accuracy"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    a = study_args(argv, __doc__, SCALES, "compression", ROOT)
    if isinstance(a, int):
        return a
    t0 = time.time()
    grid = SCALES[a.scale]
    gammas = tune(grid, a.runs, a.workers)
    table = final(grid, a.runs, gammas, a.workers)
    summary = summarize(table)
    verdicts = claims(grid, table)
    a.out.mkdir(parents=True, exist_ok=True)
    gammas.to_csv(a.out / "gamma.csv", index=False)
    table.to_csv(a.out / "runs.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    verdicts.to_csv(a.out / "verdicts.csv", index=False)
    plateau(gammas).to_csv(a.out / "plateau.csv", index=False)
    (a.out / "summary.md").write_text(markdown(summary, gammas, verdicts, grid))

    from flatlab.plots import compression, sensitivity

    curves = _curves(table, a.runs, grid["nodes"])
    curves.to_csv(a.out / "curves.csv", index=False)
    save_figure(compression(curves), a.fig)
    save_figure(sensitivity(gammas, "gamma", panels=["topology", "alpha", "compression"]),
                a.fig.with_name(a.fig.name + "_sensitivity"))
    print(markdown(summary, gammas, verdicts, grid))
    print(f"{len(table)} final runs ({time.time() - t0:.0f} s); tables in {a.out}, figures "
          f"{a.fig}{{,_sensitivity}}.{{pdf,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
