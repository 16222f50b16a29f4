"""One-off: convert the old script's ``results/primal_dual-small`` tables for ``--rejudge``.

The old script ran NGPD at two fixed dampings as two methods (``ngpd``: 1, ``ngpd-damping0.01``)
on every seed, tuned on 1 seed. Per setting, method ``ngpd`` keeps the damping whose chosen
held-out accuracy was higher; a ``damping`` stage in ``tuning.csv`` records both (not interior:
never bracketed). Run once: ``python analysis/migrate_primal_dual.py`` then
``python -m flatlab.studies primal_dual --rejudge``.
"""

import math
from pathlib import Path

import pandas as pd

from flatlab.experiment.evidence import at_chance

OUT = Path(__file__).resolve().parents[1] / "results" / "primal_dual-small"
KEYS = ["variant", "nodes", "alpha"]
DAMPING = {"ngpd": 1.0, "ngpd-damping0.01": 0.01}

lr = pd.read_csv(OUT / "lr.csv")
runs = pd.read_csv(OUT / "runs.csv")
curves = pd.read_csv(OUT / "curves.csv")
timing = pd.read_csv(OUT / "timing.csv")

best = lr[lr["chosen"] & lr["method"].isin(DAMPING)]
keep = {}  # setting -> old label of NGPD kept
damping_rows = []
for key, g in best.groupby(KEYS, sort=False):
    g = g.sort_values("holdout_accuracy", ascending=False)
    keep[key] = g["method"].iloc[0]
    for r in sorted(g.itertuples(index=False), key=lambda r: DAMPING[r.method]):
        damping_rows.append({**dict(zip(KEYS, key, strict=True)), "method": "ngpd",
                             "value": DAMPING[r.method], "status": r.status,
                             "holdout_accuracy": r.holdout_accuracy,
                             "chosen": r.method == keep[key], "extended": False})


def kept(t: pd.DataFrame) -> pd.DataFrame:
    """Rows of the first-order methods and of the NGPD damping kept, relabelled ``ngpd``."""
    label = [keep[tuple(k)] for k in t[KEYS].itertuples(index=False)]
    ok = ~t["method"].isin(DAMPING) | (t["method"] == pd.Series(label, index=t.index))
    out = t[ok].copy()
    out["damping"] = out["method"].map(DAMPING)
    out["method"] = out["method"].replace({m: "ngpd" for m in DAMPING})
    return out


tune = kept(lr).drop(columns=["damping"]).rename(columns={"lr": "value"}).assign(stage="lr")
tune = pd.concat([tune, pd.DataFrame(damping_rows).assign(
    stage="damping", interior=False, at_limit=False, extensions=0)], ignore_index=True)
tune["holdout_se"], tune["holdout_seeds"], tune["tied"] = math.nan, 1, False
untrainable = {}
for key, g in tune.groupby(["stage", *KEYS, "method"], sort=False):
    pick = g[g["chosen"]]
    u = pick.empty or bool(at_chance(float(pick["holdout_accuracy"].iloc[0]), 10))
    tune.loc[g.index, "untrainable"] = u
    untrainable[key[1:]] = untrainable.get(key[1:], False) or u
tune = tune[["stage", "value", *KEYS, "method", "status", "holdout_accuracy", "holdout_se",
             "holdout_seeds", "extended", "tied", "chosen", "interior", "at_limit",
             "extensions", "untrainable"]]

runs = kept(runs).drop(columns=["converged", "change"])
runs.insert(runs.columns.get_loc("lr") + 1, "damping", runs.pop("damping"))
runs["untrainable"] = [untrainable[tuple(k)] for k in runs[[*KEYS, "method"]].itertuples(
    index=False)]
curves = kept(curves).drop(columns=["damping"])
curves = curves.rename(columns={"test_accuracy": "value"}).assign(metric="test_accuracy")[
    ["step", "metric", "value", *KEYS, "method", "seed"]]
timing = timing[timing["method"] != "ngpd-damping0.01"]  # NGPD at damping 1: same cost

tune.to_csv(OUT / "tuning.csv", index=False)
runs.to_csv(OUT / "runs.csv", index=False)
curves.to_csv(OUT / "curves.csv", index=False)
timing.to_csv(OUT / "timing.csv", index=False)
for old in ("lr.csv", "summary.csv", "verdicts.csv"):
    (OUT / old).unlink(missing_ok=True)
print({k: DAMPING[v] for k, v in keep.items()})
