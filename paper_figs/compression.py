"""Publication figure: test accuracy against bytes sent, CHOCO-SGD and AdaGossip.

Redraws ``paper_figs/out/compression.{pdf,png}`` (``make figs``) from the committed tables of
``analysis/compression.py`` (``results/compression-<scale>/curves.csv``, the full scale when it
has been run, else the small one), and ``compression_sensitivity`` (held-out accuracy against
the consensus step ``γ``) from its ``gamma.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.plots import compression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import redraw, redraw_sensitivity  # noqa: E402


def main() -> int:
    return (redraw(ROOT, "compression", ["curves.csv"], compression)
            or redraw_sensitivity(ROOT, "compression", "gamma.csv", "gamma",
                                  ["topology", "alpha", "compression"]))


if __name__ == "__main__":
    sys.exit(main())
