"""Exceptions (and a warning) that carry one clear line for the user.

Every error that bad input can cause derives from :class:`FlatlabError`. Its message is a single
line naming what is wrong and what is accepted; the command line prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

__all__ = [
    "FlatlabError",
    "TopologyError",
    "TheoryError",
    "DataError",
    "ModelError",
    "AlgorithmError",
    "ConfigError",
    "MeasureError",
    "CurvatureError",
    "ObjectiveError",
    "RunDirError",
    "RunBusyError",
    "RankLostError",
    "UnreadableRunWarning",
    "EXIT_USAGE",
    "OneLineParser",
]

#: The exit status of bad input, on every command line of flatlab.
EXIT_USAGE = 2


class FlatlabError(ValueError):
    """Bad input to flatlab: the message says what is wrong and what is accepted."""


class TopologyError(FlatlabError):
    """A graph, a weight rule or a mixing matrix that flatlab refuses."""


class TheoryError(FlatlabError):
    """Inputs a spectral calculator or a bound cannot use."""


class DataError(FlatlabError):
    """A dataset, partition or sampler request flatlab refuses, or data files that are missing."""


class ModelError(FlatlabError):
    """An unknown model or model options that do not fit the data."""


class AlgorithmError(FlatlabError):
    """An unknown algorithm or hyper-parameters it does not accept."""


class ConfigError(FlatlabError):
    """A run or sweep configuration with a field that is missing, unknown or out of range."""


class MeasureError(FlatlabError):
    """Inputs a measurement refuses (a radius that is not positive, shapes that do not match)."""


class CurvatureError(FlatlabError):
    """A curvature request flatlab refuses (bad shapes, methods or settings)."""


class ObjectiveError(MeasureError, CurvatureError):
    """An evaluation objective (:class:`flatlab.engine.Objective`) refuses its data or a point.

    Measures and curvature both take objectives, so this is a :class:`MeasureError` and a
    :class:`CurvatureError`: callers of either catch it as they did before the objective was shared.
    """


class RunDirError(FlatlabError):
    """A run directory whose files flatlab cannot use (damaged, foreign, or in use elsewhere).

    The message names the file and what to do (``--restart``, another directory).
    """


class RunBusyError(RunDirError):
    """A run directory that another live process is writing (it holds the directory's lock).

    A sweep or study leaves such a run to its writer and reports it as skipped; ``flatlab run``
    refuses it in one line. Nothing is read or written in the directory.
    """


class RankLostError(RuntimeError):
    """A distributed run lost one of its processes; the message names it (exit status 1).

    Not a :class:`FlatlabError`: the input was fine, the run failed.
    """


class UnreadableRunWarning(UserWarning):
    """A run of a sweep was left out of a results table because its files cannot be read.

    Issued by :func:`flatlab.results.load` and :func:`flatlab.results.summary`, once per run left
    out; the message is the one line of the :class:`RunDirError` that reading the run raised.
    """


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit status :data:`EXIT_USAGE`.

    Flags are taken only as spelled (no prefixes: ``--thread`` is not ``--threads``). The
    ``flatlab`` command and ``python -m flatlab.studies NAME`` both parse with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
