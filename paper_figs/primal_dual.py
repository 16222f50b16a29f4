"""Publication figure: accuracy against communication rounds and cost per step, NGPD and others.

Redraws ``paper_figs/out/primal_dual{,_sensitivity,_damping}.{pdf,png}`` (``make figs``) from
the committed tables of :mod:`flatlab.studies.primal_dual`
(``results/primal_dual-<scale>/{runs,curves,tuning,timing}.csv``, the full scale when it has
been run, else the small one), with the study's own figure function.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.figures import redraw_study
from flatlab.studies.primal_dual import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
