"""``flatlab.results``: load run and sweep directories as tidy DataFrames.

This module is the public name of :mod:`flatlab.experiment.results`.
"""

from flatlab.experiment.results import find_runs, flatten, load, summary

__all__ = ["load", "summary", "find_runs", "flatten"]
