"""Figure files of the studies: write a figure, and redraw one from a study's committed tables.

``paper_figs/<study>.py`` scripts call :func:`redraw_study` with the repository root: the
study's own figure function (``Study.figures``) over its committed tables, the same figures a
run of the study writes through the pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flatlab.experiment.io import read_table

__all__ = ["save_figure", "committed_results", "redraw_study"]


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as ``path.pdf`` and ``path.png`` (200 dpi), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".pdf"), dpi=200, metadata={"CreationDate": None})
    fig.savefig(path.with_suffix(".png"), dpi=200)


def committed_results(root: Path, name: str, needs: str) -> Path | None:
    """``results/<name>-full`` if it holds ``needs``, else ``results/<name>-small``, else None."""
    for scale in ("full", "small"):
        d = root / "results" / f"{name}-{scale}"
        if (d / needs).is_file():
            return d
    return None


def redraw_study(root: Path, study: Any) -> int:
    """Redraw a study's figures (``Study.figures``) from its committed tables.

    Reads every table of ``results/<name>-full`` (else ``-small``) and writes
    ``paper_figs/out/<name>[_<suffix>].{pdf,png}``. Returns 0, or 2 after one line when the
    study has not been run.
    """
    src = committed_results(root, study.name, "runs.csv")
    if src is None:
        print(f"error: no {study.name} results; run python -m flatlab.studies {study.name} "
              "first", file=sys.stderr)
        return 2
    scale = study.scales[src.name.rsplit("-", 1)[1]]
    tables = {p.stem: read_table(p) for p in sorted(src.glob("*.csv"))}
    out = root / "paper_figs" / "out" / study.name
    for suffix, fig in study.figures(tables, scale).items():
        save_figure(fig, out.with_name(out.name + (f"_{suffix}" if suffix else "")))
    print(f"wrote {out}*.pdf and .png from {src.relative_to(root)}")
    return 0
