"""Publication figures: flatness against optimization error, and the theory overlay.

Redraws ``paper_figs/out/tradeoff_{scatter,accuracy,consensus,escape,bound}.{pdf,png}``
(``make figs``) from the committed tables of :mod:`flatlab.studies.tradeoff`
(``results/tradeoff-<scale>/``, the full scale when it has been run, else the small one) with
the study's own figure function.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.figures import redraw_study
from flatlab.studies.tradeoff import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
