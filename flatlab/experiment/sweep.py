"""Sweeps: a grid over config fields, run one after another (by run_many), resumable.

A sweep spec (YAML)::

    name: ring-vs-algorithms
    base: ring16.yaml              # a run config (path relative to this file) or a mapping
    out: runs/ring-vs-algorithms   # default: runs/<name>
    overrides: {train.epochs: 5}   # applied to every run
    grid:                          # the Cartesian product of these lists
      algorithm.name: [centralized, consensus, diffusion]
      seed: [0, 1, 2]

On the command line, ``key=value`` overrides apply to every run, and ``grid.KEY=[v1,v2]``
replaces (or adds) one axis of the grid: ``flatlab sweep SPEC 'grid.seed=[0,1,2]'
train.steps=40 --jobs 2``. An override of a field that is a grid axis is refused (the grid
would silently replace it).

Each grid point is a run directory ``out/<key=value,...>``. Running the sweep again skips finished
runs (``done`` and ``diverged``) whose config is the point's, resumes unfinished ones from their
checkpoints and retries failed ones; a run that diverges or fails is recorded and the sweep goes
on. A folder that holds a run of another config (the same sweep with a changed override, say) is
refused before anything runs, and ``sweep.yaml`` is written only then, so it never claims settings
the runs did not use.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flatlab.errors import ConfigError
from flatlab.experiment.config import (
    RunConfig,
    apply_overrides,
    is_plain_name,
    load_config,
    parse_overrides,
)
from flatlab.experiment.io import read_yaml, write_text
from flatlab.experiment.many import run_many
from flatlab.experiment.slurm import SlurmResources, check_slurm

__all__ = ["SweepSpec", "load_sweep", "expand", "run_sweep"]


@dataclass
class SweepSpec:
    """A parsed sweep: base config mapping, common overrides, grid and output directory."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    out: Path = Path("runs")


def load_sweep(source: str | Path | dict[str, Any], overrides: list[str] | None = None
               ) -> SweepSpec:
    """Read a sweep spec (file or mapping); ``overrides`` (``key=value``) apply to every run.

    Raises:
        ConfigError: A missing or malformed spec or base config (the file and line named), an
            unknown field, a grid that is not field -> non-empty list, an override given twice,
            or a name that would leave the runs folder.
    """
    here = Path(".")
    if isinstance(source, dict):
        d = copy.deepcopy(source)
    else:
        d = read_yaml(source, "sweep spec", error=ConfigError)
        here = Path(source).parent
    if not isinstance(d, dict):
        raise ConfigError("sweep spec must be a mapping with base, grid, overrides, out, name")
    unknown = sorted(set(d) - {"name", "base", "grid", "overrides", "out"})
    if unknown:
        raise ConfigError(f"sweep field {unknown[0]} is unknown; accepted: name, base, grid, "
                          "overrides, out")
    base = d.get("base", {})
    if isinstance(base, str):
        bp = (here / base) if not Path(base).is_absolute() else Path(base)
        base = read_yaml(bp, "sweep field base: config file", error=ConfigError)
    if not isinstance(base, dict):
        raise ConfigError("sweep field base: expected a config file path or a mapping")
    grid = d.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("sweep field grid: expected a mapping of field -> non-empty list")
    for key, values in grid.items():
        _check_axis(str(key), values)
    ov = d.get("overrides") or {}
    if not isinstance(ov, dict):
        raise ConfigError("sweep field overrides: expected a mapping of field -> value")
    ov, grid = dict(ov), dict(grid)
    for key, value in parse_overrides(overrides or []).items():
        if key.startswith("grid."):  # grid.seed=[0,1,2]: one axis of the grid, replaced or added
            axis = key[len("grid."):]
            values = value if isinstance(value, list) else []
            if not axis or not values:
                raise ConfigError(f"override {key}: expected grid.FIELD=[v1,v2,...] with at "
                                  "least one value")
            grid[axis] = values
            _check_axis(axis, values)
        else:
            ov[key] = value
    for key in ov:
        if key in grid:
            raise ConfigError(f"override {key} is a grid axis of this sweep (its values "
                              f"{grid[key]!r} would replace it); set the axis with "
                              f"grid.{key}=[...]")
    name = str(d.get("name") or (Path(source).stem if not isinstance(source, dict) else "sweep"))
    if not is_plain_name(name):
        raise ConfigError(f"sweep field name: {name!r} is not accepted; accepted: one folder name "
                          "(not . or .., no / or \\)")
    out = Path(str(d["out"])) if d.get("out") else Path("runs") / name
    return SweepSpec(name=name, base=base, grid=grid, overrides=ov, out=out)


def _check_axis(key: str, values: list[Any]) -> None:
    """A grid axis gives each value once (each value is a run directory name)."""
    slugs = [_slug(key, v) for v in values]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"sweep field grid.{key}: {values!r} repeats a value (or two values "
                          "share a run directory name); give each value once")


def _slug(key: str, value: Any) -> str:
    v = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    s = f"{key}={v}".replace("/", "_")
    return re.sub(r"[^A-Za-z0-9_.=+\-\[\],]", "_", s)


def expand(spec: SweepSpec) -> list[tuple[str, RunConfig]]:
    """``(run directory name, validated config)`` for every grid point (all validated first)."""
    keys = list(spec.grid)
    out = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        d = apply_overrides(apply_overrides(spec.base, spec.overrides), point)
        name = ",".join(_slug(k, v) for k, v in point.items()) or "run"
        d["name"] = name
        try:
            cfg = load_config(d)
        except ConfigError as e:
            raise ConfigError(f"sweep point {name}: {e}") from None
        out.append((name, cfg))
    return out


def run_sweep(spec: SweepSpec, *, progress: bool = True, verbose: bool = True, jobs: int = 1,
              slurm: SlurmResources | None = None, wait: bool = True) -> pd.DataFrame:
    """Run every grid point into ``spec.out/<name>``, ``jobs`` at a time, with :func:`run_many`.

    With ``jobs`` above one the points run in that many spawned processes (each run with its
    config's ``threads``, one by default) and one line is printed as each ends, with the time
    so far and an estimate of the time left.

    Before anything runs or is written, every config is validated and every existing run
    directory is checked: a finished run is skipped only when its config equals the point's
    (otherwise the sweep is refused, as ``run`` refuses, naming the directory), and a run alive
    in another process is left to it. Then ``sweep.yaml`` is written. A run that raises is
    marked ``failed`` (with the error in its status) and the sweep continues; bad input (a
    :class:`~flatlab.errors.FlatlabError`) is recorded the same way.

    With ``slurm`` the points go to a SLURM cluster as one job array
    (:mod:`flatlab.experiment.slurm`), after the same checks; ``wait`` waits for them.

    Returns:
        One row per run: ``run`` (its name), ``status``, ``step``, ``message``, ``skipped``.

    Raises:
        ConfigError: A point's config is invalid, or ``spec.out`` holds a run of another config.
        RunDirError: A run directory's status or config cannot be read.
    """
    points = expand(spec)
    if spec.out.exists() and not spec.out.is_dir():
        raise ConfigError(f"sweep output {spec.out} is a file; accepted: a directory")
    if (spec.out / "status.json").exists():
        raise ConfigError(f"sweep output {spec.out} is a run directory (it holds status.json); "
                          "accepted: a new folder or a sweep folder")
    if spec.out.is_dir():
        names = {p.name for p in spec.out.iterdir()}
        known = {name for name, _ in points} | {"sweep.yaml", "curves.png", "curves.pdf"}
        stray = sorted(n for n in names - known
                       if not (spec.out / n).is_dir() and not n.startswith("."))
        if stray:
            raise ConfigError(f"sweep output {spec.out} holds other files ({stray[0]}); "
                              "accepted: a new or empty folder, or a sweep folder")
    if slurm is not None:
        check_slurm(slurm)
    return run_many([(spec.out / name, cfg) for name, cfg in points], jobs,
                    progress=progress and jobs == 1 and slurm is None, verbose=verbose,
                    headings=True, threads=None, label="sweep point",
                    before=lambda: _write_spec(spec), slurm=slurm, wait=wait)


def _write_spec(spec: SweepSpec) -> None:
    """Write ``spec.out/sweep.yaml`` (the settings the runs use), creating the folder."""
    spec.out.mkdir(parents=True, exist_ok=True)
    write_text(spec.out / "sweep.yaml", yaml.safe_dump(
        {"name": spec.name, "base": spec.base, "grid": spec.grid, "overrides": spec.overrides},
        sort_keys=False))
