"""``flatlab demo``: the large-batch regime on a laptop, flatness against optimization.

Where centralized SGD with a large batch generalizes worse (Keskar et al. 2017), the flatness
paper (Cao, Wu, Yuan and Sayed 2024; docs/reference/algorithms.md §13.4) claims that
decentralized training ends flatter. The demo enters that regime at the smallest scale where
:mod:`flatlab.studies.large_batch` found the gap: mnist1d with **1000 training samples** (1000
test, generated offline, a fresh draw per seed), the 1-D CNN, an iid split over 16 nodes,
centralized SGD (an exact all-reduce) and diffusion (ATC / DSGD) over the static
exponential graph, at a **total batch of 32 and of 512**. Each batch trains at the step the
search tuned for it (μ = 0.1 and 0.3) with a cosine schedule, 5% warm-up and no weight decay,
**until it fits its training set**: the small batch for 100 epochs (3125 steps), the large one
for 400 (782 steps; it needs more epochs to fit, and giving it more can only shrink its gap).
Every run is repeated on three seeds (data draw, initialization, minibatches).

At the end of each run it measures, at the averaged model ``x̄``: test accuracy, training loss
and ``‖∇f(x̄)‖`` (optimization error), the top Hessian eigenvalue (Lanczos) and trace (Hutch++),
worst-case adaptive sharpness and the consensus distance ``Ξ²`` (docs/reference/measures.md
§§ 6-12); along training, loss, accuracy, ``‖∇f(x̄)‖`` and ``Ξ²``. The twelve runs live under
``OUT/runs`` (resumable: a second call trains nothing that finished); the demo writes
``OUT/table.csv`` (every run), ``OUT/summary.csv`` (mean and standard error over the seeds),
``OUT/tradeoff.{png,pdf}`` (λ_max against ``‖∇f(x̄)‖`` per method and batch, beside test accuracy
per batch: the large-batch gap) and ``OUT/curves.{png,pdf}``. It prints what the table shows
first, the table, and what it does not show last. About 4-5 minutes on 2 CPU cores (268 s
on an Intel Xeon beside a study at low priority);
``--small`` is a seconds-long check of the same pipeline. The judged versions: the gap in
:mod:`flatlab.studies.large_batch`, the paper's claims inside the regime (more graphs, five
seeds, the same epochs at both batches) in :mod:`flatlab.studies.regime`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError
from flatlab.experiment import run_many
from flatlab.experiment.evidence import loss_plateau, paired_difference
from flatlab.experiment.study import final_values, mean_and_se
from flatlab.plots import batch_tradeoff, training_curves
from flatlab.results import load
from flatlab.theory import spectral
from flatlab.topology import make

__all__ = ["run_demo", "demo_runs", "METHODS", "BATCHES", "SEEDS", "TRAIN", "FIT"]

#: method -> (algorithm, topology): centralized SGD's all-reduce, diffusion over the
#: exponential graph (the ring's diffusion does not fit the large batch's training set in 400
#: epochs: flatlab.studies.regime compares both graphs)
METHODS: dict[str, tuple[str, str]] = {"centralized": ("centralized", "complete"),
                                       "diffusion": ("diffusion", "exponential")}
#: regime -> (total batch, epochs, step size μ): the steps tuned by the large-batch search for
#: this setting (results/large_batch-round1, 3 seeds on held-out data), the epochs each batch
#: needs to fit its training set
BATCHES: dict[str, tuple[int, int, float]] = {"small-batch": (32, 100, 0.1),
                                              "large-batch": (512, 400, 0.3)}
#: Seeds of every run (``--small``: the first two).
SEEDS = (0, 1, 2)
#: Training and test samples of mnist1d.
TRAIN, TEST = 1000, 1000
#: A run fits its training set when its final training loss is at most this (the search's
#: criterion: then a gap in test accuracy is one of generalization, not of optimization).
FIT = 0.05
NODES = 16
COLUMNS = {"test_accuracy": "test_accuracy", "train_loss": "train_loss",
           "train_accuracy": "train_accuracy", "grad_norm": "grad_norm",
           "hessian_top": "hessian_top", "hessian_trace": "hessian_trace",
           "sharpness": "sharpness_worst", "consensus_distance": "consensus_distance",
           "comm_bytes": "comm_bytes"}


def demo_runs(out: Path, small: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The demo's runs as ``(directory, config)`` (also a template for your own studies).

    Seed-major order, the slow large-batch runs of a seed first: with two workers the first
    seed's four runs finish first.
    """
    jobs = []
    for seed in SEEDS[:2] if small else SEEDS:
        for regime in reversed(BATCHES):
            for method in METHODS:
                jobs.append((Path(out) / "runs" / f"{regime},{method},seed={seed}",
                             _config(regime, method, seed, small)))
    return jobs


def _config(regime: str, method: str, seed: int, small: bool) -> dict[str, Any]:
    batch, epochs, lr = BATCHES[regime]
    algorithm, topology = METHODS[method]
    nodes, train = (8, 200) if small else (NODES, TRAIN)
    if small:
        batch, epochs = batch // 4, max(epochs // 50, 2)
    steps = math.ceil(epochs * train / batch)
    every = max(1, steps // 10)  # the studies' density (measurements=10): the loss criterion
    last = every * (steps // every + 1)  # a period past the end: measured once, at the end
    return {"name": f"demo-{regime}-{method}", "seed": seed, "device": "auto",
            "data": {"name": "mnist1d", "partition": "iid", "seed": seed,
                     "batch_size": batch // nodes,
                     "options": {"num_samples": train + TEST,
                                 "train_split": train / (train + TEST)}},
            "model": {"name": "cnn1d"},
            "topology": {"name": topology, "nodes": nodes},
            "algorithm": {"name": algorithm, "params": {}},
            "optim": {"lr": lr, "schedule": "cosine", "warmup": max(1, steps // 20),
                      "weight_decay": 0.0},
            "train": {"steps": steps},
            "measure": {"every": every, "per_node": False, "train_subset": None,
                        "test_subset": None, "curvature_subset": 128 if small else 256,
                        "metrics": ["loss", "accuracy", "consensus_distance", "grad_norm",
                                    "hessian_top", "hessian_trace", "sharpness_worst"],
                        "options": {"hessian_top": {"every": last},
                                    "hessian_trace": {"every": last, "num_matvecs": 20},
                                    "sharpness_worst": {"every": last, "adaptive": True}}},
            "checkpoint_every": steps}


def run_demo(out: Path, small: bool = False, progress: bool = True, workers: int = 2) -> Path:
    """Run the demo, write ``table.csv``, ``summary.csv``, ``tradeoff.{png,pdf}``, ``curves``.

    Args:
        out: Output folder (created); runs go to ``out/runs`` and are resumed when present.
        small: A tiny version (8 nodes, 200 samples, a few epochs) that checks the pipeline in
            seconds.
        progress: Print one line per finished run.
        workers: Runs in parallel (one thread each); 1 runs them in this process.

    Returns:
        Path of the trade-off figure (PNG).
    """
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    jobs = demo_runs(out, small)
    t0 = time.time()
    cfgs = {p.name.split(",")[0]: c for p, c in jobs}
    train = cfgs["small-batch"]["data"]["options"]["num_samples"] - TEST
    nodes = cfgs["small-batch"]["topology"]["nodes"]
    batches = []
    for c in (cfgs["small-batch"], cfgs["large-batch"]):
        b = c["data"]["batch_size"] * nodes
        batches.append(f"{b} ({c['train']['steps'] * b // train} epochs, "
                       f"μ = {c['optim']['lr']:g})")
    batches = " and ".join(batches)
    print("flatlab demo: the large-batch regime; the table will show test accuracy, fit and "
          "flatness at x̄ per batch and method", flush=True)
    print(f"centralized SGD and diffusion ({METHODS['diffusion'][1]} graph) on "
          f"mnist1d ({train} training samples), 1-D CNN, {nodes} nodes, total batch {batches}, "
          f"{len({c['seed'] for _, c in jobs})} seeds -> {out}", flush=True)
    run_many(jobs, workers, verbose=progress)  # finished runs are skipped
    table = _table(jobs)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    _show(table, summary, jobs[0][1]["topology"]["nodes"])
    png = _figures(table, jobs, out)
    print(f"\nruns: {out / 'runs'} (flatlab results {out / 'runs'}), tables: "
          f"{out / 'summary.csv'} (mean ± s.e.) and {out / 'table.csv'} (every run), figures: "
          f"{png}, {out / 'tradeoff.pdf'}, {out / 'curves.png'} ({time.time() - t0:.0f} s)")
    print(_does_not_show(table))
    return png


def _table(jobs: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    """One row per run: its regime, batch and method, status and final measurements."""
    rows = []
    for path, cfg in jobs:
        regime, method, _ = path.name.split(",")
        r = final_values(path, COLUMNS)
        rows.append({"regime": regime, "batch": cfg["data"]["batch_size"]
                     * cfg["topology"]["nodes"], "method": method,
                     "topology": cfg["topology"]["name"], "seed": cfg["seed"],
                     "steps": cfg["train"]["steps"], **r, **_settled(path)})
    table = pd.DataFrame(rows)
    order = {r: i for i, r in enumerate(BATCHES)} | {m: i for i, m in enumerate(METHODS)}
    table = table.sort_values(["regime", "method", "seed"], key=lambda c: c.map(order)
                              if c.name != "seed" else c, kind="stable", ignore_index=True)
    table["fits"] = table["train_loss"] <= FIT
    if "comm_bytes" in table:
        table["MB_sent"] = table.pop("comm_bytes") / 1e6
    return table


def _settled(path: Path) -> dict[str, Any]:
    """Whether a run's training loss settled, by the studies' loss criterion.

    :func:`flatlab.experiment.evidence.loss_plateau`: the smoothed training loss moved by less
    than 10% over the last 20% of steps.
    """
    try:
        m = load(path)
        c = m[(m["metric"] == "train_loss") & (m["scope"] == "avg")].sort_values("step")
        p = loss_plateau(c["step"].to_numpy(), c["value"].to_numpy())
    except (FlatlabError, OSError):
        return {"settled": False, "loss_change": math.nan}
    return {"settled": p.converged, "loss_change": p.change}


SHOWN = {"test_accuracy": "test acc", "train_accuracy": "train acc", "train_loss": "train loss",
         "grad_norm": "|grad f|", "hessian_top": "lambda_max", "hessian_trace": "tr(H)",
         "sharpness": "sharpness", "consensus_distance": "consensus dist"}


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per regime and method (done runs only).

    Columns ``regime, batch, method, seeds, diverged`` and ``<metric>_mean``, ``<metric>_se``
    for each measured column, ``fits`` (runs whose final training loss is at most :data:`FIT`)
    and ``settled`` (runs whose smoothed training loss moved by less than 10% over the last
    20% of steps: the studies' loss criterion, at their density of measurements).
    """
    cols = [c for c in SHOWN if c in table]
    s = mean_and_se(table, ["regime", "batch", "method"], cols)
    done = table[table["status"] == "done"]
    for flag in ("fits", "settled"):
        counts = done.groupby(["regime", "method"], sort=False)[flag].sum()
        s[flag] = [int(counts.get((r, m), 0)) for r, m in zip(s["regime"], s["method"],
                                                               strict=True)]
    return s


def paired_gap(table: pd.DataFrame, method: str, column: str = "test_accuracy"
               ) -> tuple[float, float, int]:
    """Small batch minus large batch in ``column`` for ``method``, paired by seed.

    Returns:
        ``(mean, standard error, seeds)`` over the seeds where both runs finished (NaN for
        fewer than two).
    """
    done = table[(table["status"] == "done") & (table["method"] == method)]
    per = {r: done[done["regime"] == r].set_index("seed")[column] for r in BATCHES}
    p = paired_difference(per["small-batch"], per["large-batch"])
    return (p.mean, p.se, p.n) if p.n > 1 else (math.nan, math.nan, p.n)


def _shows(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The first line: what the table shows, in its own numbers."""
    gap, se, n = paired_gap(table, "centralized")
    done = table[table["status"] == "done"]
    if not math.isfinite(gap):
        return (f"What the table shows: too few finished runs for the large-batch gap "
                f"({len(done)} of {len(table)} finished).")
    central = done[done["method"] == "centralized"]
    fit = int(central["fits"].sum())
    why = ("both batches fit their training set, so the gap is one of generalization"
           if fit == len(central) else
           f"{fit} of its {len(central)} runs fit their training set (loss ≤ {FIT:g}), "
           "so the gap mixes optimization with generalization")
    settled = int(done["settled"].sum())
    why += ("; every run's training loss settled (the studies' criterion)"
            if settled == len(done) else
            f"; {settled} of {len(done)} runs' training loss settled (the studies' criterion)")
    cell = summary.set_index(["regime", "method"])
    lam = cell["hessian_top_mean"]
    acc = cell["test_accuracy_mean"]
    where = "below" if gap >= 0 else "above"
    return (f"What the table shows: centralized SGD at the large batch ends "
            f"{100 * abs(gap):.1f} ± {100 * se:.1f} test-accuracy points {where} the small "
            f"batch (paired over {n} seeds), at λ_max {lam[('large-batch', 'centralized')]:.3g} "
            f"against {lam[('small-batch', 'centralized')]:.3g}; {why}. Diffusion at the large "
            f"batch: λ_max {lam.get(('large-batch', 'diffusion'), math.nan):.3g}, "
            f"{100 * acc.get(('large-batch', 'diffusion'), math.nan):.1f}% against "
            f"{100 * acc[('large-batch', 'centralized')]:.1f}%.")


def _does_not_show(table: pd.DataFrame) -> str:
    """The last line: what the table does not show."""
    gap, se, n = paired_gap(table, "diffusion")
    tail = "" if not math.isfinite(gap) else (
        f" (diffusion's own gap: {100 * gap:.1f} ± {100 * se:.1f} points)")
    return (f"What it does not show: whether decentralized training closes the gap or ends "
            f"flatter in general: {n} seeds of one small task, one graph and batches trained "
            f"for different epochs judge nothing{tail}; the judged tests are `make large-batch` "
            "(the gap) and `make regime` (the paper's claims inside it: five seeds, two graphs, "
            "the same epochs at both batches).")


def _show(table: pd.DataFrame, summary: pd.DataFrame, nodes: int) -> None:
    """Print the first line, the graph's spectral gap, the table and unfinished runs."""
    def cell(m: float, se: float) -> str:
        if not math.isfinite(m):
            return "–"
        return f"{m:.4g} ± {se:.2g}" if math.isfinite(se) else f"{m:.4g}"

    print("\n" + _shows(table, summary))
    s = spectral(make(METHODS["diffusion"][1], nodes))
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    print(f"{METHODS['diffusion'][1]} graph of {nodes}: rho = {s.rho:.4f}, spectral gap = "
          f"{s.spectral_gap:.4f}; measured at the averaged model x̄ at the end (the cosine "
          f"schedule's step is 0 there); mean ± standard error over {seeds} seeds")
    show = summary[["regime", "batch", "method"]].copy()
    for col, name in SHOWN.items():
        if f"{col}_mean" in summary:
            show[name] = [cell(m, e) for m, e in zip(summary[f"{col}_mean"],
                                                     summary[f"{col}_se"], strict=True)]
    done = summary["seeds"].astype(str)
    show["fit"] = summary["fits"].astype(str) + "/" + done
    show["settled"] = summary["settled"].astype(str) + "/" + done
    show["seeds"] = done + "/" + (summary["seeds"] + summary["diverged"]).astype(str)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(show.to_string(index=False))
    unsettled = table[~table["settled"].astype(bool) & (table["status"] == "done")]
    if len(unsettled):
        print(f"{len(unsettled)} of {len(table)} runs' training loss still moved by 10% or "
              "more over their last 20% of steps: "
              + ", ".join(f"{r.regime} {r.method} seed {r.seed}"
                          for r in unsettled.itertuples()))
    for r in table[table["status"] != "done"].itertuples():
        print(f"{r.regime} {r.method} seed {r.seed}: {r.status}")


def _figures(table: pd.DataFrame, jobs: list[tuple[Path, dict[str, Any]]], out: Path) -> Path:
    """Write the trade-off figure and the training curves; the trade-off PNG's path."""
    fig = batch_tradeoff(table)
    png = out / "tradeoff.png"
    for p in (png, out / "tradeoff.pdf"):
        fig.savefig(p, dpi=150)
    parts = []
    for p, c in jobs:
        if (p / "metrics.parquet").is_file():
            # passes over the training set (the sampler's epoch is a node's full batches: with
            # 62 samples a node and a batch of 32, one step)
            seen = c["data"]["batch_size"] * c["topology"]["nodes"]
            train = c["data"]["options"]["num_samples"] - TEST
            m = load(p)
            parts.append(m.assign(run=p.name.rsplit(",", 1)[0], epoch=m["step"] * seen / train))
    fig = training_curves(pd.concat(parts, ignore_index=True), hue="run")
    for ext in ("png", "pdf"):
        fig.savefig(out / f"curves.{ext}", dpi=150)
    return png


def compare(folders: list[Path], columns: tuple[str, ...] = tuple(SHOWN)) -> pd.DataFrame:
    """How far the demo's numbers move between machines (or CPU kernel levels).

    Each folder is a finished demo (its ``summary.csv`` and ``table.csv``); the first is the
    reference. One row per other folder, cell (regime, method) and measure: both means and
    standard errors, ``moved`` = ``|mean - reference mean|``, ``within`` (``moved`` at most
    the larger of the two standard errors: the numbers do not move by more than their stated
    errors) and ``within_diff`` (at most the standard error of the difference,
    ``sqrt(se² + se_ref²)``, the looser test of two independent estimates). The paired
    large-batch gap of each method is compared the same way (measure ``gap``, regime
    ``small − large``).

    Raises:
        FlatlabError: A folder holds no finished demo.
    """
    def read(folder: Path) -> pd.DataFrame:
        path = Path(folder) / "table.csv"
        if not path.is_file():
            raise FlatlabError(f"{folder} holds no table.csv; accepted: the --out folder of a "
                               "finished flatlab demo")
        table = pd.read_csv(path)
        s = summarize(table)
        rows = [{"regime": r.regime, "method": r.method, "measure": c,
                 "mean": getattr(r, f"{c}_mean"), "se": getattr(r, f"{c}_se")}
                for r in s.itertuples() for c in columns if f"{c}_mean" in s]
        for method in dict.fromkeys(table["method"]):
            gap, se, _ = paired_gap(table, method)
            rows.append({"regime": "small − large", "method": method, "measure": "gap",
                         "mean": gap, "se": se})
        return pd.DataFrame(rows)

    ref = read(folders[0])
    out = []
    for folder in folders[1:]:
        m = ref.merge(read(folder), on=["regime", "method", "measure"], suffixes=("_ref", ""))
        m.insert(0, "folder", str(folder))
        m["moved"] = (m["mean"] - m["mean_ref"]).abs()
        m["within"] = m["moved"] <= m[["se_ref", "se"]].max(axis=1)
        m["within_diff"] = m["moved"] <= (m["se_ref"] ** 2 + m["se"] ** 2) ** 0.5
        out.append(m)
    return pd.concat(out, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m flatlab.demo REF OTHER...``: compare finished demos (see :func:`compare`)."""
    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if len(folders) < 2:
        print("python -m flatlab.demo: error: give two or more demo folders (the first is the "
              "reference)", file=sys.stderr)
        return 2
    try:
        table = compare(folders)
    except FlatlabError as e:
        print(f"python -m flatlab.demo: error: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    moved = table[~table["within"]]
    print(f"\n{len(table) - len(moved)} of {len(table)} numbers moved by at most the larger of "
          f"their two standard errors against {folders[0]}, "
          f"{int(table['within_diff'].sum())} by at most the standard error of the difference"
          + ("" if moved.empty else "; beyond: " + ", ".join(
              f"{r.measure} {r.regime} {r.method} ({r.folder}: {r.moved:.3g} > "
              f"{max(r.se, r.se_ref):.3g})" for r in moved.itertuples())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
