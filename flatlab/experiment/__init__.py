"""Experiments: typed configs, the runner, checkpoints, the results store, many runs, sweeps."""

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
    "run_many",
]
