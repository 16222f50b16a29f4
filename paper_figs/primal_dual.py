"""Publication figure: accuracy against communication rounds and cost per step, NGPD and others.

Redraws ``paper_figs/out/primal_dual.{pdf,png}`` (``make figs``) from the committed tables of
``analysis/primal_dual.py`` (``results/primal_dual-<scale>/{curves,summary}.csv``, the full
scale when it has been run, else the small one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.experiment.study import committed_results, save_figure
from flatlab.plots import primal_dual

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_figs" / "out"


def main() -> int:
    src = committed_results(ROOT, "primal_dual", "curves.csv")
    if src is None:
        print("error: no primal-dual results; run python analysis/primal_dual.py first",
              file=sys.stderr)
        return 2
    fig = primal_dual(pd.read_csv(src / "curves.csv"), pd.read_csv(src / "summary.csv"))
    save_figure(fig, OUT / "primal_dual")
    print(f"wrote {OUT / 'primal_dual.pdf'} and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
