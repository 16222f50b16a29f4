"""One-off: the committed compression tables of ``analysis/compression.py`` in the pipeline's form.

Reads the old ``results/compression-small/{runs,curves,gamma}.csv`` (methods ``choco``,
``adagossip`` with a ``compression`` column; wide curves; a one-seed ``gamma.csv``) and writes
what ``python -m flatlab.studies compression --rejudge`` reads: ``runs.csv`` with the method
labels of :mod:`flatlab.studies.compression` (``choco top-k 99%``; DSGDm's γ empty),
``curves.csv`` in long form (``test_accuracy`` and ``mb_per_node``), ``tuning.csv`` (one seed,
no standard error: the tie rule reduces to the best value, which is the old choice) and
``plateau.csv``; ``gamma.csv`` is removed. Nothing is trained. Run once from the repository root:
``python analysis/migrate_compression.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from flatlab.experiment.evidence import at_chance, robust_choice
from flatlab.studies import compression as study

OUT = Path(__file__).resolve().parents[1] / "results" / "compression-small"
KEYS = ["topology", "alpha"]


def _method(t: pd.DataFrame) -> list[str]:
    return [study.label(m, c) for m, c in zip(t["method"], t["compression"], strict=True)]


def runs(old: pd.DataFrame) -> pd.DataFrame:
    """The runs table: setting, label, γ (NaN for the reference), seed, status, measures."""
    t = old.assign(method=_method(old))
    t.loc[t["method"] == study.REFERENCE, "gamma"] = math.nan
    t.insert(2, "setting", [study.setting_label(r) for r in t[KEYS].to_dict("records")])
    return t[[*KEYS, "setting", "method", "gamma", "seed", "status", "test_accuracy", "bytes",
              "consensus_distance", "compression", "mb_per_node"]]


def curves(old: pd.DataFrame) -> pd.DataFrame:
    """Long curves: ``step, metric, value``, the setting, the method label and the seed."""
    t = old.assign(method=_method(old), row=range(len(old)))  # runs in the old (final) order
    long = t.melt(id_vars=["row", "step", *KEYS, "method", "seed"],
                  value_vars=["test_accuracy", "mb_per_node"], var_name="metric")
    return long.sort_values(["metric", "row"], kind="stable")[
        ["step", "metric", "value", *KEYS, "method", "seed"]]


def tuning(old: pd.DataFrame) -> pd.DataFrame:
    """The tuning table of the pipeline (stage ``gamma``) from the one-seed ``gamma.csv``."""
    t = old.assign(method=_method(old)).drop(columns="compression")
    t["holdout_se"] = math.nan
    t["holdout_seeds"] = (t["status"] == "done").astype(int)
    t["diverged_seeds"] = (t["status"] == "diverged").astype(int)
    t["tied"] = False
    t["untrainable"] = False
    for _, g in t.groupby([*KEYS, "method"], sort=False):
        c = robust_choice(g["gamma"].tolist(), g["holdout_accuracy"].tolist(),
                          g["holdout_se"].tolist(), (g["status"] == "diverged").tolist())
        assert g.loc[g["chosen"], "gamma"].tolist() == [c.chosen], "the old choice differs"
        t.loc[g.index, "tied"] = g["gamma"].isin(c.ties).to_numpy()
        best = float(g.loc[g["chosen"], "holdout_accuracy"].iloc[0])
        t.loc[g.index, "untrainable"] = bool(at_chance(best, 10))
    t = t.sort_values([*KEYS, "method", "gamma"], kind="stable").rename(
        columns={"gamma": "value"}).assign(stage="gamma")
    return t[[*KEYS, "method", "value", "extended", "status", "holdout_accuracy", "holdout_se",
              "holdout_seeds", "diverged_seeds", "tied", "chosen", "interior", "at_limit",
              "extensions", "untrainable", "stage"]].reset_index(drop=True)


def main() -> int:
    """Convert once; refuses when ``gamma.csv`` is gone (already converted)."""
    if not (OUT / "gamma.csv").is_file():
        print(f"error: no gamma.csv in {OUT}: already converted", file=sys.stderr)
        return 2
    t = tuning(pd.read_csv(OUT / "gamma.csv"))
    t.to_csv(OUT / "tuning.csv", index=False)
    study.plateau(t).to_csv(OUT / "plateau.csv", index=False)
    runs(pd.read_csv(OUT / "runs.csv")).to_csv(OUT / "runs.csv", index=False)
    curves(pd.read_csv(OUT / "curves.csv")).to_csv(OUT / "curves.csv", index=False)
    (OUT / "gamma.csv").unlink()
    print(f"converted {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
