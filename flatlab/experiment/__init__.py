"""Experiments: configs, the runner, the training loop, checkpoints, results and sweeps.

Who owns what: ``config`` (typed configs), ``build`` (a config becomes objects), ``train`` (the
loop, with hooks), ``hooks`` (the runner's hooks), ``rundir`` (the run directory on disk),
``runner`` (the wiring of one run), ``ranks`` (what the processes of a distributed run agree
on), ``many`` (many runs: sweeps, studies, the demo), ``sweep`` (grids), ``study`` (tuning and
summaries over seeds), ``results`` (tables).
"""

from flatlab.experiment.config import (
    BASIC_METRICS,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_overrides,
    to_dict,
    validate,
)
from flatlab.experiment.loop import Hook, Loop, Outcome, train
from flatlab.experiment.many import run_many
from flatlab.experiment.rundir import average_model, final_models, read_status, shown_status
from flatlab.experiment.runner import Run, RunResult, build, run
from flatlab.experiment.schedules import lr_at

__all__ = [
    "RunConfig",
    "load_config",
    "from_dict",
    "to_dict",
    "parse_overrides",
    "apply_overrides",
    "validate",
    "BASIC_METRICS",
    "Run",
    "RunResult",
    "build",
    "run",
    "read_status",
    "shown_status",
    "average_model",
    "final_models",
    "lr_at",
    "train",
    "Hook",
    "Loop",
    "Outcome",
    "run_many",
]
