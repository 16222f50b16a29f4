"""Publication figure: test accuracy against data heterogeneity, one line per method.

Redraws ``paper_figs/out/heterogeneity.{pdf,png}`` (``make figs``) from the committed table of
the heterogeneity study, ``results/heterogeneity-<scale>/runs.csv`` (the full scale when it has
been run, else the small one), and ``heterogeneity_sensitivity`` (held-out accuracy against
the learning rate) from its ``lr.csv``. The study itself is ``analysis/heterogeneity.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.plots import heterogeneity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import redraw, redraw_sensitivity  # noqa: E402


def main() -> int:
    return (redraw(ROOT, "heterogeneity", ["runs.csv"], heterogeneity)
            or redraw_sensitivity(ROOT, "heterogeneity", "lr.csv", "lr",
                                  ["nodes", "partition", "level"]))


if __name__ == "__main__":
    sys.exit(main())
