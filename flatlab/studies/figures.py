"""Figure files of the studies: write a figure, and redraw one from a study's committed tables.

``paper_figs/<study>.py`` scripts call :func:`redraw` with the repository root; a study run
writes its own figures through the pipeline (``Study.figures``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["save_figure", "committed_results", "redraw"]


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


def redraw(root: Path, name: str, tables: Sequence[str], draw: Callable[..., Any],
           figure: str | None = None) -> int:
    """Redraw ``paper_figs/out/<figure>.{pdf,png}`` from a study's committed tables.

    ``draw`` gets the tables (read with pandas, in the order of ``tables``) of
    :func:`committed_results`; ``figure`` defaults to the study's ``name``. Returns 0, or 2
    after one line when the study has not been run.
    """
    src = committed_results(root, name, tables[0])
    if src is None:
        print(f"error: no {name} results; run python -m flatlab.studies {name} first",
              file=sys.stderr)
        return 2
    out = root / "paper_figs" / "out" / (figure or name)
    save_figure(draw(*(pd.read_csv(src / t) for t in tables)), out)
    print(f"wrote {out}.pdf and .png from {src.relative_to(root)}")
    return 0
