"""Publication figure: test accuracy against data heterogeneity, one line per method.

Redraws ``paper_figs/out/heterogeneity.{pdf,png}`` (``make figs``) from the committed table of
the heterogeneity study, ``results/heterogeneity-<scale>/runs.csv`` (the full scale when it has
been run, else the small one). The study itself is ``analysis/heterogeneity.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.experiment.study import committed_results, save_figure
from flatlab.plots import heterogeneity

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_figs" / "out"


def main() -> int:
    src = committed_results(ROOT, "heterogeneity", "runs.csv")
    if src is None:
        print("error: no heterogeneity results; run python analysis/heterogeneity.py first",
              file=sys.stderr)
        return 2
    save_figure(heterogeneity(pd.read_csv(src / "runs.csv")), OUT / "heterogeneity")
    print(f"wrote {OUT / 'heterogeneity.pdf'} and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
