"""Publication figures: flatness against optimization error, and the theory overlay.

Redraws ``paper_figs/out/tradeoff_{scatter,accuracy,consensus,escape,bound}.{pdf,png}``
(``make figs``) from the committed tables of :mod:`flatlab.studies.tradeoff`
(``results/tradeoff-<scale>/``, the full scale when it has been run, else the small one) with
the study's own figure function.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.studies.tradeoff import SCALES, STUDY

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("runs", "curves", "escape", "steady", "bound")


def main() -> int:
    """Redraw every figure; returns the exit status (2 after one line when never run)."""
    for scale in ("full", "small"):
        src = ROOT / "results" / f"tradeoff-{scale}"
        if (src / "runs.csv").is_file():
            break
    else:
        print("error: no tradeoff results; run python -m flatlab.studies tradeoff first",
              file=sys.stderr)
        return 2
    tables = {t: pd.read_csv(src / f"{t}.csv") for t in TABLES}
    out = ROOT / "paper_figs" / "out"
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in STUDY.figures(tables, SCALES[scale]).items():
        for ext in ("pdf", "png"):
            fig.savefig(out / f"tradeoff_{name}.{ext}", dpi=200)
    print(f"wrote {out}/tradeoff_*.pdf and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
