"""The study scripts of ``analysis/`` end to end, and what they share (``analysis/common.py``).

The scripts import their shared module as ``common``, as they do when run as
``python analysis/x.py`` (their folder first on ``sys.path``); so it is put there for the tests.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ANALYSIS = str(Path(__file__).resolve().parents[2] / "analysis")
if ANALYSIS not in sys.path:
    sys.path.insert(0, ANALYSIS)


def load_study(name: str) -> ModuleType:
    """A fresh import of ``analysis/<name>.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(name, Path(ANALYSIS) / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
