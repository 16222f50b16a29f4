"""Publication figure: test accuracy against data heterogeneity, one line per method.

Redraws ``paper_figs/out/heterogeneity.{pdf,png}`` (``make figs``) from the committed table of
the heterogeneity study, ``results/heterogeneity-<scale>/runs.csv`` (the full scale when it has
been run, else the small one), and ``heterogeneity_sensitivity`` (held-out accuracy against
the learning rate, mean over the tuning seeds) from its ``tuning.csv``. The study itself is
:mod:`flatlab.studies.heterogeneity` (``python -m flatlab.studies heterogeneity``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.plots import heterogeneity, sensitivity
from flatlab.studies.figures import redraw

ROOT = Path(__file__).resolve().parents[1]


def _sensitivity(tuning):
    lr = tuning[tuning["stage"] == "lr"].rename(columns={"value": "lr"})
    return sensitivity(lr, "lr", panels=["nodes", "partition", "level"])


def main() -> int:
    return (redraw(ROOT, "heterogeneity", ["runs.csv"], heterogeneity)
            or redraw(ROOT, "heterogeneity", ["tuning.csv"], _sensitivity,
                      figure="heterogeneity_sensitivity"))


if __name__ == "__main__":
    sys.exit(main())
