"""Studies as specifications, and the one pipeline that runs them.

A study is a :class:`Study` (methods, settings, grids, seeds, measures, claims with their
margins) in one file; :func:`main` runs it: tune → final runs → convergence → verdicts →
tables → figures → report (:mod:`flatlab.studies.pipeline`). The project's five studies live
here as modules (:data:`STUDIES`) and run as ``python -m flatlab.studies <name> --scale small``
(or ``python -m flatlab.studies path/to/my_study.py``, a file that defines ``STUDY``).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from flatlab.errors import FlatlabError
from flatlab.studies.pipeline import main, rejudge, run_study
from flatlab.studies.spec import Scale, Stage, Study

__all__ = ["Scale", "Stage", "Study", "main", "run_study", "rejudge", "load", "STUDIES"]

#: The project's studies (modules of this package that define ``STUDY``).
STUDIES = ("tradeoff", "heterogeneity", "primal_dual", "compression", "implicit_flatness",
           "mechanism", "large_batch", "regime", "faults")


def load(name: str) -> Study:
    """A study by name (one of :data:`STUDIES`) or from a file that defines ``STUDY``.

    Raises:
        FlatlabError: An unknown name, a missing file, or a file without a ``STUDY``.
    """
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FlatlabError(f"study file {name} does not exist")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    elif name in STUDIES:
        mod = importlib.import_module(f"flatlab.studies.{name}")
    else:
        raise FlatlabError(f"study {name!r} is unknown; accepted: {', '.join(STUDIES)}, or a "
                           "path to a .py file that defines STUDY")
    study = getattr(mod, "STUDY", None)
    if not isinstance(study, Study):
        raise FlatlabError(f"{name} defines no STUDY (a flatlab.studies.Study)")
    return study
