"""``flatlab.results``: load run and sweep directories as tidy DataFrames.

This module is the public name of :mod:`flatlab.experiment.results`.
"""

from flatlab.experiment.results import (
    Readout,
    Unreadable,
    find_runs,
    flatten,
    load,
    load_readable,
    summary,
    summary_readable,
)

__all__ = ["load", "summary", "find_runs", "flatten", "load_readable", "summary_readable",
           "Readout", "Unreadable"]
