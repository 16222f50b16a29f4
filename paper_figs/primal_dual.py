"""Publication figure: accuracy against communication rounds and cost per step, NGPD and others.

Redraws ``paper_figs/out/primal_dual.{pdf,png}`` (``make figs``) from the committed tables of
``analysis/primal_dual.py`` (``results/primal_dual-<scale>/{curves,summary}.csv``, the full
scale when it has been run, else the small one).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.plots import primal_dual

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import redraw  # noqa: E402


def main() -> int:
    return redraw(ROOT, "primal_dual", ["curves.csv", "summary.csv"], primal_dual)


if __name__ == "__main__":
    sys.exit(main())
