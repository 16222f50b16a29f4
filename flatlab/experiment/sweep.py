"""Sweeps: a grid over config fields, run one after another, resumable.

A sweep spec (YAML)::

    name: ring-vs-algorithms
    base: ring16.yaml              # a run config (path relative to this file) or a mapping
    out: runs/ring-vs-algorithms   # default: runs/<name>
    overrides: {train.epochs: 5}   # applied to every run
    grid:                          # the Cartesian product of these lists
      algorithm.name: [centralized, consensus, diffusion]
      seed: [0, 1, 2]

Each grid point is a run directory ``out/<key=value,...>``. Running the sweep again skips finished
runs (``done`` and ``diverged``), resumes unfinished ones from their checkpoints and retries
failed ones; a run that diverges or fails is recorded and the sweep goes on.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flatlab.errors import ConfigError, FlatlabError
from flatlab.experiment.config import RunConfig, apply_overrides, load_config, parse_overrides
from flatlab.experiment.runner import read_status, run

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
    """Read a sweep spec (file or mapping); ``overrides`` (``key=value``) apply to every run."""
    here = Path(".")
    if isinstance(source, dict):
        d = copy.deepcopy(source)
    else:
        p = Path(source)
        if not p.is_file():
            raise ConfigError(f"sweep spec {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep spec {p} is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
        here = p.parent
    if not isinstance(d, dict):
        raise ConfigError("sweep spec must be a mapping with base, grid, overrides, out, name")
    unknown = sorted(set(d) - {"name", "base", "grid", "overrides", "out"})
    if unknown:
        raise ConfigError(f"sweep field {unknown[0]} is unknown; accepted: name, base, grid, "
                          "overrides, out")
    base = d.get("base", {})
    if isinstance(base, str):
        bp = (here / base) if not Path(base).is_absolute() else Path(base)
        if not bp.is_file():
            raise ConfigError(f"sweep field base: config file {bp} does not exist")
        base = yaml.safe_load(bp.read_text()) or {}
    if not isinstance(base, dict):
        raise ConfigError("sweep field base: expected a config file path or a mapping")
    grid = d.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("sweep field grid: expected a mapping of field -> non-empty list")
    ov = dict(d.get("overrides") or {})
    if overrides:
        ov.update(parse_overrides(overrides))
    name = str(d.get("name") or (Path(source).stem if not isinstance(source, dict) else "sweep"))
    out = Path(d["out"]) if d.get("out") else Path("runs") / name
    return SweepSpec(name=name, base=base, grid=grid, overrides=ov, out=out)


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


def run_sweep(spec: SweepSpec, *, progress: bool = True, verbose: bool = True) -> pd.DataFrame:
    """Run every grid point into ``spec.out/<name>``; returns one row per run (name, status).

    Configs are all validated before anything runs. A run that raises is marked ``failed``
    (with the error in its status) and the sweep continues; bad input (a
    :class:`~flatlab.errors.FlatlabError`) is recorded the same way.
    """
    points = expand(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": spec.name, "base": spec.base, "grid": spec.grid, "overrides": spec.overrides},
        sort_keys=False))
    rows = []
    for i, (name, cfg) in enumerate(points):
        path = spec.out / name
        st = read_status(path)
        if st is not None and st["status"] in ("done", "diverged"):
            rows.append({"run": name, "status": st["status"], "step": st["step"],
                         "message": st.get("message", ""), "skipped": True})
            continue
        if verbose:
            print(f"[{i + 1}/{len(points)}] {name}", flush=True)
        try:
            res = run(cfg, path, progress=progress)
            rows.append({"run": name, "status": res.status, "step": res.step,
                         "message": res.message, "skipped": False})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if verbose and not isinstance(e, FlatlabError):
                traceback.print_exc()
            st = read_status(path) or {}
            rows.append({"run": name, "status": "failed", "step": st.get("step", 0),
                         "message": f"{type(e).__name__}: {msg}", "skipped": False})
            if st.get("status") != "failed":
                _mark_failed(path, cfg, f"{type(e).__name__}: {msg}")
    return pd.DataFrame(rows)


def _mark_failed(path: Path, cfg: RunConfig, message: str) -> None:
    """Record a run that failed before its directory existed (e.g. missing data files)."""
    from flatlab.experiment.config import to_dict

    path.mkdir(parents=True, exist_ok=True)
    if not (path / "config.yaml").is_file():
        (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (path / "status.json").write_text(json.dumps(
        {"name": cfg.name, "status": "failed", "step": 0, "message": message}, indent=1) + "\n")
