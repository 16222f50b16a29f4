"""How long a study's scale will train on this device, from steps measured here.

``python -m flatlab.studies NAME --scale S --estimate`` builds one run of every distinct shape
the scale trains (its model, data, batch, nodes and algorithm; the tuning runs hold out
``study.holdout``), times ``steps`` training steps of each with the runner itself (nothing
measured, no checkpoint), and multiplies by every run's length and count:

    hours = Σ over run shapes of (seconds per step) × (steps of the run) × (runs of that shape)

What it leaves out, and says so: the measurements (curvature measures can cost as much as
training at some scales), the grid extensions that bracketing adds when a best value sits at
an edge, the phases after the final runs, and parallel jobs (divide by ``--jobs`` where the
device has the cores or memory for them). Seconds per step come from two short runs (2 and
``2 + k`` steps, ``k`` from ``steps`` up until the difference reaches a second), so set-up,
data loading and the first step's one-time costs cancel.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flatlab.errors import FlatlabError
from flatlab.experiment.rundir import read_status
from flatlab.experiment.runner import run
from flatlab.studies.spec import Scale, Study

__all__ = ["planned_runs", "seconds_per_step", "estimate", "estimate_text", "SAFE_LR"]

#: The step size of every timing run: small, so that no timing run diverges (a step's time
#: does not depend on its size).
SAFE_LR = 1e-4


def planned_runs(study: Study, scale: Scale) -> list[dict[str, Any]]:
    """Every tuning and final run of a scale, before any value is chosen.

    Each tuning stage's grid over the tuning seeds, then the final runs over the scale's seeds.
    Before a stage, the hyper-parameters of earlier ones stand at the first value of their grid
    (a step's time does not depend on the value), and a method the stage does not tune takes
    the stage's ``fixed`` value from those first values (a step shared with a reference). One
    row per (phase, setting, method, value) with ``runs``, the number of seeds, and ``config``,
    the run config of its first seed.
    """
    rows = []
    for s in scale.settings:
        ms = [m for m in scale.methods if study.runs(s, m, scale)]
        base: dict[str, dict[str, Any]] = {m: {**s, "method": m} for m in ms}
        for stage in study.stages:
            grids = {m: tuple(stage.grid(base[m], scale)) for m in ms}
            first = {m: float(g[0]) for m, g in grids.items() if g}
            for m in ms:
                for v in grids[m]:
                    point = {**base[m], stage.hparam: float(v)}
                    rows.append({"phase": f"tune {stage.hparam}", "setting": study.label(s),
                                 "method": m, "value": float(v), "runs": len(scale.tune_seeds),
                                 "config": study.config(point, scale, scale.tune_seeds[0],
                                                        study.holdout)})
            for m in ms:
                if m in first:
                    base[m][stage.hparam] = first[m]
                elif stage.fixed is not None:
                    v = stage.fixed(base[m], first)
                    if v is not None:
                        base[m][stage.hparam] = float(v)
        rows += [{"phase": "final", "setting": study.label(s), "method": m,
                  "value": float("nan"), "runs": len(scale.seeds),
                  "config": study.config(base[m], scale, scale.seeds[0], 0.0)} for m in ms]
    return rows


def _shape(config: dict[str, Any], *, holdout: bool = False) -> str:
    """What a step's time depends on: the config less name, seeds, step, length, measures.

    ``holdout``: keep the held-out share, which changes the evaluation sets alone (not a
    step's time) but also the steps of an epoch.
    """
    c = copy.deepcopy(config)
    for key in ("name", "seed", "measure", "checkpoint_every", "train"):
        c.pop(key, None)
    for key in ("seed",) if holdout else ("seed", "holdout"):
        c.get("data", {}).pop(key, None)
    c.get("optim", {}).pop("lr", None)
    return json.dumps(c, sort_keys=True, default=str)


def _timed(config: dict[str, Any], steps: int, out: Path) -> tuple[float, int, str]:
    """Train seconds of ``steps`` steps, the run's full length, and the device."""
    c = copy.deepcopy(config)
    c["name"] = "estimate"
    c["train"] = {**{k: v for k, v in c.get("train", {}).items() if k not in ("steps", "epochs")},
                  "steps": steps}
    c["measure"] = {"every": steps, "metrics": []}
    c["checkpoint_every"] = 10 * steps
    c.pop("init_from", None)
    c.setdefault("optim", {})["lr"] = SAFE_LR  # a step's time does not depend on its size
    run(c, out, progress=False)
    st = read_status(out)
    if st is None or st.get("status") != "done":
        raise FlatlabError(f"a timing run of {config.get('name')} ended "
                           f"{st and st.get('status')} after {st and st.get('step')} steps; "
                           "accepted: a config that trains a few steps at a small step size")
    return float(st["timings_s"]["train"]), int(st["steps_per_epoch"]), str(st["device"])


def seconds_per_step(config: dict[str, Any], steps: int = 10, *, at_least: float = 1.0
                     ) -> tuple[float, int, str]:
    """Seconds per training step of ``config`` on its device, its steps per epoch, the device.

    Two runs of the config, ``2`` and ``2 + k`` steps with nothing measured: the difference of
    their training time over ``k``, so set-up and the first steps' one-time costs cancel. ``k``
    starts at ``steps`` and grows tenfold (to 10,000 at most) until the difference is at least
    ``at_least`` seconds, so that fast steps are not lost in the timer's noise.
    """
    with tempfile.TemporaryDirectory(prefix="flatlab-estimate-") as tmp:
        short, spe, _ = _timed(config, 2, Path(tmp) / "short")
        k = steps
        while True:
            long, _, device = _timed(config, 2 + k, Path(tmp) / f"long{k}")
            if long - short >= at_least or k >= 10_000:
                return max(long - short, 0.0) / k, spe, device
            k *= 10


def estimate(study: Study, scale: Scale, steps: int = 10, *, at_least: float = 1.0
             ) -> tuple[pd.DataFrame, str]:
    """Expected training hours of every planned run (:func:`planned_runs`) on this device.

    Returns:
        One row per (phase, setting, method, value): ``runs``, ``steps`` of each run,
        ``s_per_step`` (measured once per run shape) and ``hours`` for all its runs; and the
        device the steps were measured on.
    """
    rows, per_step, per_epoch, device = [], {}, {}, ""
    for r in planned_runs(study, scale):
        cfg, key = r["config"], _shape(r["config"])
        if key not in per_step:
            per_step[key], spe, device = seconds_per_step(cfg, steps, at_least=at_least)
            per_epoch[_shape(cfg, holdout=True)] = spe
        s, train = per_step[key], cfg.get("train", {})
        n = int(train["steps"]) if train.get("steps") else int(train["epochs"]) * \
            _steps_per_epoch(cfg, per_epoch)
        rows.append({k: r[k] for k in ("phase", "setting", "method", "value", "runs")}
                    | {"steps": n, "s_per_step": s, "hours": s * n * r["runs"] / 3600})
    return pd.DataFrame(rows), device


def _steps_per_epoch(config: dict[str, Any], known: dict[str, int]) -> int:
    """Steps per epoch of ``config`` (its held-out share included): known, or a one-step run's."""
    key = _shape(config, holdout=True)
    if key not in known:
        with tempfile.TemporaryDirectory(prefix="flatlab-estimate-") as tmp:
            known[key] = _timed(config, 1, Path(tmp) / "epoch")[1]
    return known[key]


def estimate_text(study: Study, scale_name: str, table: pd.DataFrame, device: str,
                  steps: int) -> str:
    """The estimate as a table with its totals and what it leaves out."""
    lines = [f"Expected training time of {study.name} --scale {scale_name} on "
             f"{device}, from at least {steps} steps (and a second) timed per run shape:", "",
             "| phase | setting | method | value | runs | steps each | s per step | hours |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        value = "" if pd.isna(r.value) else f"{r.value:g}"
        lines.append(f"| {r.phase} | {r.setting} | {r.method} | {value} | {r.runs} | "
                     f"{r.steps} | {r.s_per_step:.3g} | {r.hours:.2f} |")
    tune = table.loc[table["phase"] != "final", "hours"].sum()
    final = table.loc[table["phase"] == "final", "hours"].sum()
    lines += ["", f"Total: {tune + final:.1f} hours of training in one process "
                  f"({tune:.1f} tuning, {final:.1f} final runs; {int(table['runs'].sum())} "
                  "runs).",
              "Not counted: measurements, grid extensions (each adds its runs), the phases "
              "after the final runs, and parallel jobs (divide by --jobs where the device "
              "has room for them)."]
    return "\n".join(lines)

