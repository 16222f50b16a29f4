"""One-off: the old script's implicit_flatness tables in the forms ``--rejudge`` reads.

``python analysis/migrate_implicit_flatness.py [folder]`` rewrites, in place (default
``results/implicit_flatness-small``): ``runs.csv`` (setting columns, chosen values, no old
convergence), ``curves.csv`` (long, with the setting column), ``tuning.csv`` (the pipeline's
form: sgd's learning rate and each SAM method's ρ, one seed, ``holdout_hessian_top`` kept),
``grid.csv`` (every old tuning row with its λ_max, the other methods' learning-rate grids
included) and ``matched.csv`` (:func:`flatlab.studies.implicit_flatness.matched_loss`).
Then ``python -m flatlab.studies implicit_flatness --rejudge``.
"""

import math
import sys
from pathlib import Path

import pandas as pd

from flatlab.experiment.evidence import at_chance, robust_choice
from flatlab.studies.implicit_flatness import REFERENCE, SCALES, matched_loss, methods


def main(folder: Path) -> None:
    """Convert the tables in ``folder`` (run once: the old forms are overwritten)."""
    scale = SCALES["small"]
    nodes = scale.settings[0]["nodes"]
    sam = {m for m, d in methods(scale).items() if d["sam"]}
    runs = pd.read_csv(folder / "runs.csv")
    if "nodes" in runs:
        raise SystemExit(f"{folder} is already converted")
    old_matched = runs.set_index(["method", "seed"])["hessian_top_matched"]
    runs = runs.drop(columns=["converged", "change", "hessian_top_matched"])
    runs.insert(0, "nodes", nodes)
    runs.insert(1, "setting", f"n={nodes}")
    first = ["nodes", "setting", "method", "lr", "rho", "seed", "status"]
    runs = runs[first + [c for c in runs if c not in first]]
    curves = pd.read_csv(folder / "curves.csv").drop(columns=["status"])
    curves.insert(3, "nodes", nodes)
    matched = matched_loss(runs, curves, scale)
    again = matched.set_index(["method", "seed"])["hessian_top_matched"]
    assert (again - old_matched).abs().max() < 1e-9, "matched loss differs from the old script"

    old = pd.read_csv(folder / "tuning.csv")
    grid = pd.DataFrame({
        "nodes": nodes, "stage": old["hparam"], "method": old["method"], "lr": old["lr"],
        "rho": old["rho"], "value": [r[r["hparam"]] for _, r in old.iterrows()],
        "status": old["status"], "holdout_accuracy": old["holdout_accuracy"],
        "holdout_se": math.nan, "holdout_seeds": 1,
        "holdout_hessian_top": old["holdout_hessian_top"],
        "tuned": [(h == "lr" and m == REFERENCE) or (h == "rho" and m in sam)
                  for h, m in zip(old["hparam"], old["method"], strict=True)]})
    rows = []
    for (stage, m), g in grid[grid["tuned"]].groupby(["stage", "method"], sort=False):
        g = g.sort_values("value")
        c = robust_choice(g["value"].tolist(), g["holdout_accuracy"].tolist(),
                          [math.nan] * len(g), (g["status"] == "diverged").tolist())
        was = old[(old["hparam"] == stage) & (old["method"] == m)].sort_values(stage)
        used = float(was.loc[was["chosen"], stage].iloc[0])
        if c.chosen != used:
            print(f"{stage} of {m}: the new rule chooses {c.chosen:g}, the runs used {used:g}")
        chosen_acc = float(g.loc[g["value"] == used, "holdout_accuracy"].iloc[0])
        rows.append(pd.DataFrame({
            "nodes": nodes, "method": m, "value": g["value"].to_numpy(),
            "extended": was["extended"].to_numpy(), "status": g["status"].to_numpy(),
            "holdout_accuracy": g["holdout_accuracy"].to_numpy(), "holdout_se": math.nan,
            "holdout_seeds": 1, "diverged_seeds": (g["status"] == "diverged").astype(int)
            .to_numpy(), "tied": g["value"].isin(c.ties).to_numpy(),
            "chosen": (g["value"] == used).to_numpy(), "interior": c.interior,
            "at_limit": False, "extensions": int(was["extended"].sum()),
            "untrainable": bool(at_chance(chosen_acc)), "stage": stage,
            "holdout_hessian_top": g["holdout_hessian_top"].to_numpy(),
            "lr": g["lr"].to_numpy(), "rho": g["rho"].to_numpy()}))
    tuning = pd.concat(rows, ignore_index=True)
    runs.to_csv(folder / "runs.csv", index=False)
    curves.to_csv(folder / "curves.csv", index=False)
    tuning.to_csv(folder / "tuning.csv", index=False)
    grid.to_csv(folder / "grid.csv", index=False)
    matched.to_csv(folder / "matched.csv", index=False)
    print(f"converted {folder}: {len(runs)} runs, {len(tuning)} tuning rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else
         Path(__file__).resolve().parents[1] / "results" / "implicit_flatness-small")
