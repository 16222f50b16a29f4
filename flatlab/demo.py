"""``flatlab demo``: the main job on the embedded default data set (mnist1d, generated offline).

Centralized SGD, consensus (DGD / D-PSGD) and diffusion (ATC, DSGD) train the same 1-D CNN from the
same initialisation on a 16-node ring, each node holding a Dirichlet(0.5) label-skewed share of
mnist1d. The three runs form a resumable sweep under ``OUT/runs``; the demo then writes a table
``OUT/summary.csv`` (final test accuracy of the averaged model and the node mean, training loss
and gradient norm at the average, consensus distance, bytes sent) and the figure
``OUT/curves.{png,pdf}`` (test accuracy, training loss, consensus distance and gradient norm over
epochs), and prints the table next to the ring's spectral gap. A few minutes on 2 CPU cores;
``--small`` is a seconds-long check of the same pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["run_demo", "demo_spec"]

ALGORITHMS = ("centralized", "consensus", "diffusion")


def demo_spec(out: Path, small: bool = False) -> dict[str, Any]:
    """The demo's sweep spec (also a template for your own studies)."""
    base = {
        "name": "demo",
        "seed": 0,
        "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": 0.5, "batch_size": 16},
        "model": {"name": "cnn1d"},
        "topology": {"name": "ring", "nodes": 16},
        "optim": {"lr": 0.1, "schedule": "cosine", "warmup": 50, "min_lr": 0.005},
        "train": {"epochs": 40},
        "measure": {"every": 60, "train_subset": 2000, "per_node": True},
        "checkpoint_every": 200,
    }
    if small:
        base["topology"]["nodes"] = 8
        base["train"] = {"steps": 30}
        base["optim"]["warmup"] = 5
        base["measure"] = {"every": 10, "train_subset": 256, "test_subset": 256}
        base["data"]["options"] = {"num_samples": 1000}
    return {"name": "demo", "base": base, "out": str(out / "runs"),
            "grid": {"algorithm.name": list(ALGORITHMS)}}


def run_demo(out: Path, small: bool = False, progress: bool = True) -> Path:
    """Run the demo sweep, write ``summary.csv`` and ``curves.{png,pdf}`` to ``out``.

    Args:
        out: Output folder (created); runs go to ``out/runs`` and are resumed when present.
        small: A tiny version (8 nodes, 30 steps) that checks the pipeline in seconds.
        progress: Show progress bars.

    Returns:
        Path of the PNG figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from flatlab.experiment.sweep import load_sweep, run_sweep
    from flatlab.plots import training_curves
    from flatlab.results import load, summary
    from flatlab.theory import spectral
    from flatlab.topology import make

    out = Path(out)
    spec = load_sweep(demo_spec(out, small))
    nodes = spec.base["topology"]["nodes"]
    print(f"flatlab demo: {', '.join(ALGORITHMS)} on mnist1d, {nodes}-node ring, "
          f"Dirichlet(0.5) split, 1-D CNN -> {out}", flush=True)
    status = run_sweep(spec, progress=progress)
    df = load(spec.out)
    table = summary(spec.out)
    table["algorithm"] = table.run.str.replace("algorithm.name=", "", regex=False)
    cols = {"algorithm": "algorithm", "status": "status", "test_accuracy": "test acc (avg)",
            "test_accuracy[mean]": "test acc (node mean)", "train_loss": "train loss (avg)",
            "grad_norm": "||grad f(avg)||", "consensus_distance": "consensus dist",
            "comm_bytes": "MB sent", "elapsed_s": "seconds"}
    table = table[[c for c in cols if c in table.columns]].rename(columns=cols)
    if "MB sent" in table:
        table["MB sent"] = table["MB sent"] / 1e6
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    s = spectral(make("ring", nodes))
    print(f"\nring of {nodes}: rho = {s.rho:.4f}, spectral gap = {s.spectral_gap:.4f}")
    with pd.option_context("display.width", 160):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    fig = training_curves(df)
    png = out / "curves.png"
    fig.savefig(png, dpi=150)
    fig.savefig(out / "curves.pdf")
    failed = status[status.status == "failed"]
    for _, r in failed.iterrows():
        print(f"failed: {r.run}: {r.message}")
    print(f"\nresults: {spec.out} (flatlab.results.load), table: {out / 'summary.csv'}, "
          f"figure: {png} and {out / 'curves.pdf'}")
    return png
