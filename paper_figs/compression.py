"""Publication figure: test accuracy against bytes sent, CHOCO-SGD and AdaGossip.

Redraws ``paper_figs/out/compression.{pdf,png}`` (``make figs``) from the committed tables of
``analysis/compression.py`` (``results/compression-<scale>/curves.csv``, the full scale when it
has been run, else the small one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.experiment.study import committed_results, save_figure
from flatlab.plots import compression

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_figs" / "out"


def main() -> int:
    src = committed_results(ROOT, "compression", "curves.csv")
    if src is None:
        print("error: no compression results; run python analysis/compression.py first",
              file=sys.stderr)
        return 2
    save_figure(compression(pd.read_csv(src / "curves.csv")), OUT / "compression")
    print(f"wrote {OUT / 'compression.pdf'} and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
