"""Publication figures: implicit against explicit flatness (SGD, SAM, diffusion, local SGD).

Redraws ``paper_figs/out/implicit_flatness.{pdf,png}`` (``make figs``: λ_max against training
loss along training, final λ_max against accuracy, the consensus gap) from the committed tables
of the study, ``results/implicit_flatness-<scale>/{runs,curves}.csv`` (the full scale when it
has been run, else the small one), and ``implicit_flatness_sensitivity{,_rho}`` (held-out
accuracy against the learning rate and against SAM's ρ) from its ``tuning.csv``. The study
itself is ``analysis/implicit_flatness.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.plots import implicit_flatness, sensitivity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analysis"))  # common: the study scripts' shared module
from common import committed_results, redraw, save_figure  # noqa: E402


def main() -> int:
    status = redraw(ROOT, "implicit_flatness", ["runs.csv", "curves.csv"], implicit_flatness)
    if status:
        return status
    tuning = pd.read_csv(committed_results(ROOT, "implicit_flatness", "runs.csv")
                         / "tuning.csv")
    for hparam, suffix in (("lr", ""), ("rho", "_rho")):
        t = tuning[tuning["hparam"] == hparam]
        if len(t):
            out = ROOT / "paper_figs" / "out" / f"implicit_flatness_sensitivity{suffix}"
            save_figure(sensitivity(t, hparam), out)
            print(f"wrote {out}.pdf and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
