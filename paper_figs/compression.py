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

import pandas as pd

from flatlab.studies.compression import STUDY, figures

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    for scale in ("full", "small"):
        src = ROOT / "results" / f"{STUDY.name}-{scale}"
        if (src / "curves.csv").is_file():
            break
    else:
        print("error: no compression results; run python -m flatlab.studies compression first",
              file=sys.stderr)
        return 2
    tables = {name: pd.read_csv(src / f"{name}.csv") for name in ("curves", "tuning")
              if (src / f"{name}.csv").is_file()}
    out = ROOT / "paper_figs" / "out" / STUDY.name
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, fig in figures(tables, STUDY.scales[scale]).items():
        path = out.with_name(out.name + (f"_{suffix}" if suffix else ""))
        for ext in ("pdf", "png"):
            fig.savefig(path.with_suffix(f".{ext}"), dpi=200)
        print(f"wrote {path}.pdf and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
