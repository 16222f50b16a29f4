"""One-off: the old ``analysis/tradeoff.py`` tables into what ``--rejudge`` reads (run once).

``runs.csv`` gains the setting columns of :mod:`flatlab.studies.tradeoff` (``algorithm``, the
run's method) and loses the old held-out check (recomputed from the curves); ``curves.csv``
gains ``batch`` and ``algorithm``. The escape, steady-state and bound tables are unchanged.
Nothing was tuned: ``tuning.csv`` is the pipeline's header without rows. Usage:
``python analysis/migrate_tradeoff.py results/tradeoff-small``, then
``python -m flatlab.studies tradeoff --rejudge``.
"""

import sys
from pathlib import Path

import pandas as pd

from flatlab.studies.tradeoff import SCALES, STUDY, empty_tuning

out = Path(sys.argv[1])
runs = pd.read_csv(out / "runs.csv")
if "algorithm" not in runs:
    keys = ["regime", "batch", "topology", "lr", "algorithm"]
    runs["algorithm"] = runs["method"]
    runs.insert(0, "setting", [STUDY.label(dict(zip(keys, r, strict=True)))
                               for r in runs[keys].itertuples(index=False)])
    rest = [c for c in runs if c not in [*keys, "setting", "method", "seed", "converged",
                                         "change"]]
    runs[[*keys, "setting", "method", "seed", *rest]].to_csv(out / "runs.csv", index=False)
    curves = pd.read_csv(out / "curves.csv")
    batch = dict(zip(runs["regime"], runs["batch"], strict=False))
    curves = curves.assign(batch=curves["regime"].map(batch), algorithm=curves["method"])
    curves[["step", "metric", "value", *keys, "method", "seed"]].to_csv(out / "curves.csv",
                                                                          index=False)
empty_tuning(SCALES["small"]).to_csv(out / "tuning.csv", index=False)
