"""Publication figure: test accuracy against bytes sent, CHOCO-SGD and AdaGossip.

Redraws ``paper_figs/out/compression.{pdf,png}`` (``make figs``) from the committed tables of
the compression study (:mod:`flatlab.studies.compression`): accuracy against megabytes sent per
node from ``results/compression-<scale>/curves.csv`` (the full scale when it has been run, else
the small one), and ``compression_sensitivity`` (held-out accuracy against the consensus step
``γ``) from its ``tuning.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.compression import STUDY
from flatlab.studies.figures import redraw_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
