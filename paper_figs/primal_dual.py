"""Publication figure: accuracy against communication rounds and cost per step, NGPD and others.

Redraws ``paper_figs/out/primal_dual{,_sensitivity,_damping}.{pdf,png}`` (``make figs``) from
the committed tables of :mod:`flatlab.studies.primal_dual`
(``results/primal_dual-<scale>/{runs,curves,tuning,timing}.csv``, the full scale when it has
been run, else the small one), with the study's own figure function.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flatlab.studies.primal_dual import STUDY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    for scale in ("full", "small"):
        src = ROOT / "results" / f"primal_dual-{scale}"
        if (src / "runs.csv").is_file():
            break
    else:
        print("error: no primal_dual results; run python -m flatlab.studies primal_dual first",
              file=sys.stderr)
        return 2
    tables = {p.stem: pd.read_csv(p) for p in sorted(src.glob("*.csv"))}
    out = ROOT / "paper_figs" / "out" / "primal_dual"
    for suffix, fig in STUDY.figures(tables, STUDY.scales[scale]).items():
        path = out.with_name(out.name + (f"_{suffix}" if suffix else ""))
        for ext in ("pdf", "png"):
            fig.savefig(path.with_suffix(f".{ext}"), dpi=200)
        print(f"wrote {path}.pdf and .png from {src.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
