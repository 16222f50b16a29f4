"""The command line, figure files and repository paths the study scripts share.

Not library code: it knows this repository's layout (``results/<name>-<scale>/``,
``paper_figs/out/``). The scripts in ``analysis/`` import it as ``common`` (their folder is on
``sys.path`` when they run as ``python analysis/x.py``); ``paper_figs/`` scripts and the notebooks
put ``analysis/`` on ``sys.path`` first. Running, tuning and summarizing runs is the library's:
:func:`flatlab.experiment.run_many` and :mod:`flatlab.experiment.study`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["StudyArgs", "study_args", "save_figure", "committed_results", "redraw",
           "redraw_sensitivity"]


@dataclass(frozen=True)
class StudyArgs:
    """A study script's parsed command line.

    Attributes:
        scale: The chosen scale (a key of the script's ``SCALES``).
        out: Study directory (runs under ``out/runs``, tables next to them).
        fig: Figure path without suffix.
        workers: Runs in parallel; 0 with ``--report`` (read what is on disk, run nothing).
        report: Only rebuild tables and figures.
    """

    scale: str
    out: Path
    fig: Path
    workers: int
    report: bool

    @property
    def runs(self) -> Path:
        """Where the runs live."""
        return self.out / "runs"


def study_args(argv: list[str] | None, doc: str, scales: Sequence[str], name: str,
               root: Path) -> StudyArgs | int:
    """The command line every study script shares, or an exit status (2) after one line.

    ``--scale`` (default ``small``), ``--out`` (default ``results/<name>-<scale>``), ``--fig``
    (default ``paper_figs/out/<name>``; at ``tiny`` scale ``<out>/<name>``), ``--jobs`` and
    ``--report`` (which needs runs on disk).
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(scales), default="small")
    p.add_argument("--out", type=Path, default=None,
                   help=f"study directory (default results/{name}-<scale>)")
    p.add_argument("--fig", type=Path, default=None,
                   help=f"figure path without suffix (default paper_figs/out/{name}; tiny: "
                        f"<out>/{name})")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--report", action="store_true",
                   help="only rebuild tables and figure from the runs on disk")
    a = p.parse_args(argv)
    if a.jobs < 1:
        print(f"error: --jobs must be >= 1 (got {a.jobs})", file=sys.stderr)
        return 2
    out = a.out or root / "results" / f"{name}-{a.scale}"
    fig = a.fig or (out / name if a.scale == "tiny" else root / "paper_figs" / "out" / name)
    args = StudyArgs(a.scale, out, fig, 0 if a.report else a.jobs, a.report)
    if a.report and not args.runs.is_dir():
        print(f"error: no runs under {args.runs}; run without --report first", file=sys.stderr)
        return 2
    return args


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as ``path.pdf`` and ``path.png`` (200 dpi), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("pdf", "png"):
        fig.savefig(path.with_suffix(f".{ext}"), dpi=200)


def committed_results(root: Path, name: str, needs: str) -> Path | None:
    """``results/<name>-full`` if it holds ``needs``, else ``results/<name>-small``, else None."""
    for scale in ("full", "small"):
        d = root / "results" / f"{name}-{scale}"
        if (d / needs).is_file():
            return d
    return None


def redraw(root: Path, name: str, tables: Sequence[str],
           draw: Callable[..., Any], figure: str | None = None) -> int:
    """Redraw ``paper_figs/out/<figure>.{pdf,png}`` from a study's committed tables.

    ``draw`` gets the tables (read with pandas, in the order of ``tables``) of
    :func:`committed_results`; ``figure`` defaults to the study's ``name``. Returns 0, or 2
    after one line when the study has not been run.
    """
    src = committed_results(root, name, tables[0])
    if src is None:
        print(f"error: no {name} results; run python analysis/{name}.py first", file=sys.stderr)
        return 2
    out = root / "paper_figs" / "out" / (figure or name)
    save_figure(draw(*(pd.read_csv(src / t) for t in tables)), out)
    print(f"wrote {out}.pdf and .png from {src.relative_to(root)}")
    return 0


def redraw_sensitivity(root: Path, name: str, table: str, hparam: str,
                       panels: list[str]) -> int:
    """Redraw ``paper_figs/out/<name>_sensitivity.{pdf,png}`` from a study's tuning table.

    The held-out accuracy against ``hparam`` (:func:`flatlab.plots.sensitivity`), one panel per
    value of ``panels``; returns as :func:`redraw`.
    """
    from flatlab.plots import sensitivity

    return redraw(root, name, [table], lambda t: sensitivity(t, hparam, panels=panels),
                  figure=f"{name}_sensitivity")
