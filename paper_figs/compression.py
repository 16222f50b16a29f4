"""Publication figure: test accuracy against bytes sent, CHOCO-SGD and AdaGossip.

Redraws ``paper_figs/out/compression.{pdf,png}`` (``make figs``) from the committed tables of
``analysis/compression.py`` (``results/compression-<scale>/curves.csv``, the full scale when it
has been run, else the small one), and ``compression_sensitivity`` (held-out accuracy against
the consensus step ``γ``) from its ``gamma.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flatlab.plots import compression, sensitivity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import redraw  # noqa: E402


def main() -> int:
    status = redraw(ROOT, "compression", ["curves.csv"], compression)
    if status:
        return status
    return redraw(ROOT, "compression", ["gamma.csv"],
                  lambda t: sensitivity(t, "gamma", panels=["topology", "alpha", "compression"]),
                  figure="compression_sensitivity")


if __name__ == "__main__":
    sys.exit(main())
