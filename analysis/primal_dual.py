"""Primal-dual study: rounds and wall time to a target accuracy, NGPD against the first-order field.

Does the natural-gradient primal-dual method (``ngpd``, the reconstruction of
docs/reference/algorithms.md §7.2) reach a target test accuracy in fewer communication rounds than
``ecl``, ``dsgd``, ``gradient-tracking`` and ``momentum-tracking``, and at what cost per step?
mnist1d with a Dirichlet label split on a ring, in two variants: the 1-D CNN (``cnn``) and an
ill-conditioned deep MLP without normalization (``deep-mlp``, six hidden layers of 32), where a
natural gradient should pay off.

Phases, resumable as in ``analysis/heterogeneity.py`` (shared machinery:
:func:`flatlab.experiment.run_many`, :mod:`flatlab.experiment.study`, ``analysis/common.py``):

1. **tune**: each method's learning-rate grid on seed 0 with 10% of the training set held out;
   the rate with the best held-out accuracy of x̄ at the end is kept, the grid extended by its
   own ratio until that rate is interior (:func:`flatlab.experiment.study.tune_bracketed`);
2. **final**: the kept rate with every seed on the full training set, test accuracy of x̄
   measured every ``every`` steps; the first measured step at which it reaches each of the
   variant's two targets (``low``, set from pilot runs so that the primal-dual methods reach it
   under strong heterogeneity, and ``high``) gives the rounds (one gossip or dual exchange per
   step for every method here) and the bytes sent; each run's convergence is checked (the test
   accuracy of x̄ moved by less than a point over the last 20% of steps) and NGPD's claims are
   judged seed by seed (:func:`flatlab.experiment.evidence.judge`);
3. **timing**: milliseconds per training step of each method on the variant's model and ring,
   measured in this process (one thread, mean over whole factor-update periods, the fastest of
   three interleaved repetitions), which turns steps into wall time (the runs' own clocks
   include evaluation and run in parallel).

Usage::

    python analysis/primal_dual.py --scale small    # ring of 8, alpha 1 and 0.1, 2 variants, CPU
    python analysis/primal_dual.py --scale full     # rings of 8 and 16, alpha 0.1 and 1, GPU
    python analysis/primal_dual.py --scale small --report

Writes ``results/primal_dual-<scale>/{lr,runs,timing,summary,verdicts,curves}.csv`` and
``summary.md``, and ``paper_figs/out/primal_dual{,_sensitivity}.{pdf,png}``
(``paper_figs/primal_dual.py`` redraws the first from the committed tables).
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
METHODS = ("ngpd", "ngpd-damping0.01", "ecl", "dsgd", "gradient-tracking", "momentum-tracking")
# study label -> (registered algorithm, hyper-parameters). The primal-dual methods start their
# duals at the consensus duals of x⁰ (dual_init="x0"): from zero duals the penalty first pulls
# every model towards 0, which left the unnormalized deep MLP at chance in a pilot. NGPD at two
# dampings: 1 is stable on the CNN at the largest rates, 0.01 lets the metric amplify the flat
# directions of the deep MLP.
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "ngpd": ("ngpd", {"damping": 1.0, "factor_every": 10, "inverse_every": 10,
                      "dual_init": "x0"}),
    "ngpd-damping0.01": ("ngpd", {"damping": 0.01, "factor_every": 10, "inverse_every": 10,
                                  "dual_init": "x0"}),
    "ecl": ("ecl", {"dual_init": "x0"}),
    "momentum-tracking": ("momentum-tracking", {"momentum": 0.9}),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "cnn": {"name": "cnn1d"},
    "deep-mlp": {"name": "mlp", "options": {"hidden": [32] * 6, "norm": "none"}},
}
# NGPD with the small damping takes steps up to lr/0.01 in flat directions: its grid goes lower
LRS = {"momentum-tracking": (0.01, 0.03, 0.1), "ecl": (0.1, 0.3, 1.0), "ngpd": (0.1, 0.3, 1.0),
       "ngpd-damping0.01": (0.01, 0.03, 0.1, 0.3, 1.0)}
PLAIN = (0.03, 0.1, 0.3)
TARGETS = ("low", "high")
NGPD = ("ngpd", "ngpd-damping0.01")

SCALES: dict[str, dict[str, Any]] = {
    # 600 steps left 26 of 72 final runs still moving (the convergence check on the tables of
    # the first protocol); 1500 steps, 5 seeds
    "small": dict(nodes=(8,), alphas=(1.0, 0.1), variants=("cnn", "deep-mlp"),
                  seeds=(0, 1, 2, 3, 4), steps=1500, every=50,
                  targets={"cnn": (0.5, 0.8), "deep-mlp": (0.4, 0.6)}),
    "full": dict(nodes=(8, 16), alphas=(1.0, 0.1), variants=("cnn", "deep-mlp"),
                 seeds=(0, 1, 2, 3, 4), steps=3000, every=50,
                 targets={"cnn": (0.6, 0.9), "deep-mlp": (0.5, 0.7)}),
    "tiny": dict(nodes=(4,), alphas=(0.1,), variants=("deep-mlp",), seeds=(0, 1), steps=6,
                 every=3, targets={"deep-mlp": (0.0, 1.0)}),
}


def _config(method: str, variant: str, nodes: int, alpha: float, lr: float, seed: int,
            grid: dict[str, Any], holdout: float) -> dict[str, Any]:
    return {"name": "primal-dual", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": alpha, "seed": seed,
                     "batch_size": 32, "holdout": holdout},
            "model": VARIANTS[variant], "topology": {"name": "ring", "nodes": nodes},
            "algorithm": {"name": ALGORITHMS.get(method, (method, {}))[0],
                          "params": ALGORITHMS.get(method, (method, {}))[1]},
            "optim": {"lr": lr, "schedule": "cosine", "weight_decay": 1e-4},
            "train": {"steps": grid["steps"]},
            "measure": {"every": grid["every"] if not holdout else grid["steps"],
                        "metrics": ["loss", "accuracy", "comm_bytes"], "per_node": False},
            "checkpoint_every": max(grid["steps"] // 2, 1)}


def _name(method: str, variant: str, nodes: int, alpha: float, lr: float, seed: int) -> str:
    return f"{variant},n={nodes},alpha={alpha:g},{method},lr={lr:g},seed={seed}"


def _settings(grid: dict[str, Any]) -> list[tuple[str, int, float]]:
    return [(v, n, a) for v in grid["variants"] for n in grid["nodes"] for a in grid["alphas"]]


GROUP = ["variant", "nodes", "alpha", "method"]


def tune(grid: dict[str, Any], runs: Path, workers: int) -> pd.DataFrame:
    """Every method's learning-rate grid on seed 0, held-out accuracy of x̄ at the end.

    The grid is extended by its own ratio until each best rate is interior.
    """
    points = [{"variant": v, "nodes": n, "alpha": a, "method": m, "lr": lr}
              for v, n, a in _settings(grid) for m in METHODS for lr in LRS.get(m, PLAIN)]

    def job(p: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        args = (p["method"], p["variant"], p["nodes"], p["alpha"], p["lr"], 0)
        return runs / "tune" / _name(*args), _config(*args, grid, 0.1)

    return tune_bracketed(points, job, workers, GROUP, "lr")


def _to_targets(path: Path, targets: tuple[float, float]) -> dict[str, float]:
    """Per target: first measured step with test accuracy of x̄ >= it, and bytes sent by then."""
    import flatlab

    out: dict[str, float] = {}
    for name, target in zip(TARGETS, targets, strict=True):
        out[f"target_{name}"] = target
        out[f"steps_to_{name}"] = out[f"bytes_to_{name}"] = math.nan
    if not (path / "metrics.parquet").is_file():
        return out
    df = flatlab.results.load(path)
    acc = df[(df["metric"] == "test_accuracy") & (df["scope"] == "avg")].sort_values("step")
    for name, target in zip(TARGETS, targets, strict=True):
        hit = acc[acc["value"] >= target]
        if hit.empty:
            continue
        step = int(hit["step"].iloc[0])
        sent = df[(df["metric"] == "comm_bytes") & (df["step"] == step)]["value"]
        out[f"steps_to_{name}"] = step
        out[f"bytes_to_{name}"] = float(sent.iloc[0]) if len(sent) else math.nan
    return out


def final(grid: dict[str, Any], runs: Path, lr_table: pd.DataFrame, workers: int
          ) -> pd.DataFrame:
    """The chosen rate with every seed; accuracy curve, steps and bytes to the target."""
    chosen = lr_table[lr_table["chosen"]]
    points = []
    for v, n, a in _settings(grid):
        for m in METHODS:
            pick = chosen[(chosen["variant"] == v) & (chosen["nodes"] == n)
                          & (chosen["alpha"] == a) & (chosen["method"] == m)]
            if pick.empty:
                print(f"no learning rate of {m} trained in {v}, n={n}, alpha={a:g}", flush=True)
                continue
            points += [(m, v, n, a, float(pick["lr"].iloc[0]), s) for s in grid["seeds"]]
    jobs = [(runs / "final" / _name(m, v, n, a, lr, s), _config(m, v, n, a, lr, s, grid, 0.0))
            for m, v, n, a, lr, s in points]
    run_many(jobs, workers)
    rows = []
    for (m, v, n, a, lr, s), (path, _) in zip(points, jobs, strict=True):
        r = final_values(path, {"test_accuracy": "test_accuracy"})
        rows.append({"variant": v, "nodes": n, "alpha": a, "method": m, "lr": lr, "seed": s,
                     **r, **_to_targets(Path(path), grid["targets"][v]),
                     **final_convergence(path)})
    return pd.DataFrame(rows)


def claims(grid: dict[str, Any], table: pd.DataFrame) -> pd.DataFrame:
    """NGPD's claims per setting, each damping against every first-order method, by seed.

    Its paper reports the highest test accuracy (``test_accuracy``, greater); the study asks
    too whether it needs fewer rounds to the low target (``steps_to_low``, less; a seed that
    did not reach the target is not paired).
    """
    out = []
    for v, n, a in _settings(grid):
        where = {"variant": v, "nodes": n, "alpha": a}
        rivals = [m for m in METHODS if m not in NGPD]
        for value, claim, word in (("test_accuracy", "greater", "higher final accuracy than"),
                                   ("steps_to_low", "less", "fewer rounds to the low target than")):
            got = judge(table, [Claim(f"{a} {word} {b}", a, b, claim, where)
                                for a in NGPD for b in rivals], value=value)
            got.insert(1, "setting", f"{v}, n={n}, alpha={a:g}")
            got.insert(2, "metric", value)
            out.append(got.drop(columns=list(where)))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def timing(grid: dict[str, Any], steps: int = 30, repeats: int = 3) -> pd.DataFrame:
    """Milliseconds per training step of each method on each variant's model and ring.

    Each method runs ``steps`` steps (whole factor-update periods, after 10 of warm-up)
    ``repeats`` times, the methods interleaved, and the fastest repetition counts: the minimum
    is the least disturbed by whatever else the machine does.
    """
    import torch

    import flatlab
    from flatlab.comm import SimulatedMixer
    from flatlab.engine import GradientOracle, NodeStack

    torch.set_num_threads(1)
    rows = []
    for v in grid["variants"]:
        for n in grid["nodes"]:
            cfg = flatlab.experiment.load_config(_config("dsgd", v, n, 0.1, 0.1, 0, grid, 0.0))
            run = flatlab.experiment.runner.build(cfg)
            best = dict.fromkeys(METHODS, math.inf)
            for _ in range(repeats):
                for m in METHODS:
                    stack = NodeStack(run.stack.module, n, device=run.stack.device)
                    oracle = GradientOracle(stack, weight_decay=1e-4)
                    mixer = SimulatedMixer(flatlab.topology.make("ring", n), device=stack.device)
                    name, params = ALGORITHMS.get(m, (m, {}))
                    algo = flatlab.algorithms.make(name, **params)
                    state = algo.init(stack.initial_params(), oracle, mixer)
                    for t in range(10):
                        state = algo.step(state, run.sampler.batch(t), oracle, mixer, 0.05)
                    t0 = time.perf_counter()
                    for t in range(10, 10 + steps):
                        state = algo.step(state, run.sampler.batch(t), oracle, mixer, 0.05)
                    best[m] = min(best[m], 1000 * (time.perf_counter() - t0) / steps)
            rows += [{"variant": v, "nodes": n, "method": m, "ms_per_step": best[m]}
                     for m in METHODS]
    out = pd.DataFrame(rows)
    base = out[out["method"] == "dsgd"].set_index(["variant", "nodes"])["ms_per_step"]
    out["vs_dsgd"] = [r.ms_per_step / base[r.variant, r.nodes] for r in out.itertuples()]
    return out


def summarize(table: pd.DataFrame, times: pd.DataFrame) -> pd.DataFrame:
    """Mean ± s.e. over seeds of final accuracy, steps and bytes to each target; wall time.

    Means over seeds count only the seeds that reached the target (``reached_<target>``).
    """
    keys = ["variant", "nodes", "alpha", "method", "lr"] + [f"target_{t}" for t in TARGETS]
    values = ["test_accuracy"] + [f"{q}_to_{t}" for t in TARGETS for q in ("steps", "bytes")]
    s = mean_and_se(table, keys, values)
    for t in TARGETS:
        reached = table.groupby(keys, sort=False)[f"steps_to_{t}"].apply(
            lambda v: int(v.notna().sum())).reset_index(name=f"reached_{t}")
        s = s.merge(reached, on=keys)
    s = s.merge(times, on=["variant", "nodes", "method"], how="left")
    for t in TARGETS:
        s[f"seconds_to_{t}"] = s[f"steps_to_{t}_mean"] * s["ms_per_step"] / 1000
    return s


def markdown(summary: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> str:
    """The summary (with converged runs) and the verdicts as Markdown tables."""
    def pm(m: float, se: float, scale: float = 1.0, fmt: str = ".1f") -> str:
        if not math.isfinite(m):
            return "–"
        return f"{scale * m:{fmt}}" + (f" ± {scale * se:{fmt}}" if math.isfinite(se) else "")

    def to(r: Any, t: str) -> str:
        steps = getattr(r, f"steps_to_{t}_mean")
        secs = getattr(r, f"seconds_to_{t}")
        return (f"{pm(steps, getattr(r, f'steps_to_{t}_se'), 1, '.0f')} | "
                f"{pm(getattr(r, f'bytes_to_{t}_mean'), getattr(r, f'bytes_to_{t}_se'), 1e-6)}"
                f" | {'–' if not math.isfinite(secs) else f'{secs:.1f}'} | "
                f"{getattr(r, f'reached_{t}')}/{r.seeds + r.diverged}")

    head = "".join(f" rounds to {t} | MB to {t} | s to {t} | reached {t} |" for t in TARGETS)
    lines = ["| variant | n | alpha | method | lr | final acc. of x̄ (%) | converged | targets (%) |"
             + head + " ms/step (× dsgd) |", "|---" * (8 + 4 * len(TARGETS) + 1) + "|"]
    for r in summary.itertuples():
        targets = " / ".join(f"{100 * getattr(r, f'target_{t}'):.0f}" for t in TARGETS)
        lines.append(
            f"| {r.variant} | {r.nodes} | {r.alpha:g} | {r.method} | {r.lr:g} | "
            f"{pm(r.test_accuracy_mean, r.test_accuracy_se, 100)} | "
            f"{int(r.converged)}/{r.seeds + r.diverged} | {targets} | "
            + " | ".join(to(r, t) for t in TARGETS) + f" | {r.ms_per_step:.1f} ({r.vs_dsgd:.2f}) |")
    if verdicts is not None and len(verdicts):
        acc = verdicts[verdicts["metric"] == "test_accuracy"]
        rounds = verdicts[verdicts["metric"] == "steps_to_low"]
        lines += ["", "Verdicts, final test accuracy of x̄ (NGPD − other, points, paired by seed, "
                  "95% t interval):", "", verdict_markdown(acc), "Verdicts, rounds to the low "
                  "target (NGPD − other; seeds that reached it):", "",
                  verdict_markdown(rounds, scale=1.0, unit="rounds")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    a = study_args(argv, __doc__, SCALES, "primal_dual", ROOT)
    if isinstance(a, int):
        return a
    if a.report and not (a.out / "timing.csv").is_file():
        print(f"error: no timing.csv under {a.out}; run without --report first", file=sys.stderr)
        return 2
    t0 = time.time()
    grid = SCALES[a.scale]
    lr_table = tune(grid, a.runs, a.workers)
    table = final(grid, a.runs, lr_table, a.workers)
    times = pd.read_csv(a.out / "timing.csv") if a.report else timing(grid)
    summary = summarize(table, times)
    verdicts = claims(grid, table)
    a.out.mkdir(parents=True, exist_ok=True)
    lr_table.to_csv(a.out / "lr.csv", index=False)
    table.to_csv(a.out / "runs.csv", index=False)
    times.to_csv(a.out / "timing.csv", index=False)
    summary.to_csv(a.out / "summary.csv", index=False)
    verdicts.to_csv(a.out / "verdicts.csv", index=False)
    (a.out / "summary.md").write_text(markdown(summary, verdicts))

    from flatlab.plots import primal_dual, sensitivity

    curves = _curves(table, a.runs)
    curves.to_csv(a.out / "curves.csv", index=False)
    save_figure(primal_dual(curves, summary), a.fig)
    save_figure(sensitivity(lr_table, "lr", panels=["variant", "nodes", "alpha"]),
                a.fig.with_name(a.fig.name + "_sensitivity"))
    print(markdown(summary, verdicts))
    print(f"{len(table)} final runs ({time.time() - t0:.0f} s); tables in {a.out}, figure "
          f"{a.fig}.{{pdf,png}}")
    return 0


def _curves(table: pd.DataFrame, runs: Path) -> pd.DataFrame:
    """Test accuracy of x̄ against step for every final run (for the figure)."""
    import flatlab

    frames = []
    for r in table.itertuples():
        path = runs / "final" / _name(r.method, r.variant, r.nodes, r.alpha, r.lr, r.seed)
        if not (path / "metrics.parquet").is_file():
            continue
        df = flatlab.results.load(path)
        acc = df[(df["metric"] == "test_accuracy") & (df["scope"] == "avg")]
        frames.append(pd.DataFrame({"variant": r.variant, "nodes": r.nodes, "alpha": r.alpha,
                                    "method": r.method, "seed": r.seed, "step": acc["step"],
                                    "test_accuracy": acc["value"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["variant", "nodes", "alpha", "method", "seed", "step", "test_accuracy"])


if __name__ == "__main__":
    sys.exit(main())
