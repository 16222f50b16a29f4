"""Publication figure: what lost exchanges and stragglers cost, with the theory's prediction.

Redraws ``paper_figs/out/faults.{pdf,png}`` (``make figs``) from the committed tables of the
faults study (:mod:`flatlab.studies.faults`): accuracy, the late consensus distance beside its
predicted growth, and λ_max against the fault level, and accuracy against simulated time, from
``results/faults-<scale>/runs.csv`` and ``curves.csv`` (the full scale when it has been run,
else the small one).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.faults import STUDY
from flatlab.studies.figures import redraw_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
