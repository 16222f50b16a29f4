"""The study scripts of ``analysis/`` end to end, and what they share (``analysis/common.py``).

The scripts import their shared module as ``common``, as they do when run as
``python analysis/x.py`` (their folder first on ``sys.path``); so it is put there for the tests.
"""

import sys
from pathlib import Path

ANALYSIS = str(Path(__file__).resolve().parents[2] / "analysis")
if ANALYSIS not in sys.path:
    sys.path.insert(0, ANALYSIS)
