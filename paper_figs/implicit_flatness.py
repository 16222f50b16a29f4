"""Publication figures: implicit against explicit flatness (SGD, SAM, diffusion, local SGD).

Redraws ``paper_figs/out/implicit_flatness.{pdf,png}`` (λ_max against training loss along
training, final λ_max against accuracy, the consensus gap) and
``implicit_flatness_sensitivity{,_rho}`` (held-out accuracy against the learning rate and
against SAM's ρ) from the committed tables of the study,
``results/implicit_flatness-<scale>/`` (the full scale when it has been run, else the small
one), with the study's own :func:`flatlab.studies.implicit_flatness.figures`. The study itself is
``python -m flatlab.studies implicit_flatness``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.studies.figures import redraw_study
from flatlab.studies.implicit_flatness import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Redraw the study's figures from its committed tables (2 after one line if never run)."""
    return redraw_study(ROOT, STUDY)


if __name__ == "__main__":
    sys.exit(main())
