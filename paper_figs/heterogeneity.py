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

from flatlab.studies.figures import redraw_study
from flatlab.studies.heterogeneity import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
