"""The command-line options of the SLURM engine, declared without importing torch.

Every ``flatlab`` command's parser is built before the command runs, so the options of
``flatlab run``, ``flatlab sweep`` and a study's command live here, apart from the engine itself
(:mod:`flatlab.experiment.slurm`, whose :func:`~flatlab.experiment.slurm.resources_from` reads
them): ``flatlab spectral`` or ``flatlab results`` must not pay for loading torch.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser, what: str, *, one_run: bool = False,
                  no_wait: bool = True) -> None:
    """The command-line options of the SLURM engine (``flatlab sweep``, a study's command).

    Args:
        parser: The command's parser.
        what: What ``--engine slurm`` sends as array elements (for the help).
        one_run: The options of ``flatlab run``: one distributed run as one job (``--nodes``,
            ``--tasks-per-node``, ``--gpus-per-node``) instead of an array.
        no_wait: Offer ``--no-wait`` (submit and return); a study waits for each phase.
    """
    g = parser.add_argument_group("on a SLURM cluster (--engine slurm; flatlab[cluster])")
    g.add_argument("--engine", choices=("local", "slurm"), default="local",
                   help=f"local: runs on this machine; slurm: {what}, through submitit")
    options: dict[str, tuple[str, Any]] = {}  # dest -> (flag, default): what --engine local

    def option(flag: str, **kw: Any) -> None:  # must leave untouched (resources_from)
        action = g.add_argument(flag, **kw)
        options[action.dest] = (flag, action.default)

    option("--partition", help="SLURM partition (default: the cluster's)")
    option("--time", type=int, default=60, help="minutes per run (default 60)")
    option("--cpus", type=int, default=1,
           help=f"CPUs per {'process' if one_run else 'run'} (default 1)")
    option("--mem", type=float,
           help=f"GB of memory per {'node' if one_run else 'run'} (default: the partition's)")
    option("--account", help="account to charge (default: yours)")
    if one_run:
        option("--nodes", type=int, default=1, help="machines (default 1)")
        option("--tasks-per-node", type=int,
               help="processes on each machine (default: --gpus-per-node, or 1)")
        option("--gpus-per-node", dest="gpus", type=int, default=0,
               help="GPUs on each machine (default 0)")
    else:
        option("--gpus", type=int, default=0, help="GPUs per run (default 0)")
        option("--max-running", type=int, help="runs of the array at once (default: all)")
    if no_wait:
        option("--no-wait", action="store_true",
               help="submit and return; the same command later skips what is still queued "
                    "and waits for it")
    parser.set_defaults(slurm_options=options)
