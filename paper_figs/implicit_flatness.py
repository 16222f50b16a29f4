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

import pandas as pd

from flatlab.studies.implicit_flatness import STUDY, figures

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Draw the figures; 2 after one line when no committed tables exist."""
    for scale in ("full", "small"):
        folder = ROOT / "results" / f"{STUDY.name}-{scale}"
        if (folder / "runs.csv").is_file():
            break
    else:
        print(f"error: no results/{STUDY.name}-{{full,small}}/runs.csv; run the study first",
              file=sys.stderr)
        return 2
    tables = {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}
    out = ROOT / "paper_figs" / "out" / STUDY.name
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, fig in figures(tables, STUDY.scales[scale]).items():
        path = out.with_name(out.name + (f"_{suffix}" if suffix else ""))
        for ext in ("pdf", "png"):
            fig.savefig(path.with_suffix(f".{ext}"), dpi=200)
        print(f"wrote {path}.pdf and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
