"""Publication figures: flatness against optimization error, and the theory overlay.

Redraws ``paper_figs/out/tradeoff_{scatter,accuracy,consensus,escape,bound}.{pdf,png}``
(``make figs``) from the committed tables of ``analysis/tradeoff.py``
(``results/tradeoff-<scale>/``, the full scale when it has been run, else the small one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.plots import tradeoff_figures

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import committed_results, save_figure  # noqa: E402

TABLES = ("runs", "curves", "escape", "steady", "bound")


def main() -> int:
    src = committed_results(ROOT, "tradeoff", "runs.csv")
    if src is None:
        print("error: no tradeoff results; run python analysis/tradeoff.py first",
              file=sys.stderr)
        return 2
    tables = {t: pd.read_csv(src / f"{t}.csv") for t in TABLES}
    out = ROOT / "paper_figs" / "out"
    for name, fig in tradeoff_figures(tables).items():
        save_figure(fig, out / f"tradeoff_{name}")
    print(f"wrote {out}/tradeoff_*.pdf and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
