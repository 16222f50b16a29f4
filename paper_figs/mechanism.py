"""Publication figure: the mechanism (disagreement acting through the curvature).

Redraws ``paper_figs/out/mechanism.{pdf,png}`` (the measured gap against ½ tr(HΣ), the top-k
alignment over chance along training, the predicted stationary tr(HΣ) against the measured one)
from the committed tables of the study, ``results/mechanism-<scale>/`` (the full scale when it
has been run, else the small one), with :func:`flatlab.studies.mechanism.figures`. The study
itself is ``python -m flatlab.studies mechanism``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.figures import redraw_study
from flatlab.studies.mechanism import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
