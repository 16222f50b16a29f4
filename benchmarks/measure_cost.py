"""Benchmark: what measuring curvature costs a run, against the same run without it.

Issue 21's target: a 16-node 1-D CNN run of 1000 steps that measures ``hessian_top``,
``hessian_trace`` and ``sharpness_worst`` every 100 steps takes at most 1.5x the same run
without them. Both runs are real ``flatlab.experiment.run`` calls in this process (mnist1d,
Dirichlet(1), ring, diffusion, batch 32 per node, the measures' default settings on the
default 512-sample curvature subset); each also records ``loss`` every 100 steps, as every run
does. Printed: total and training seconds of each, the ratio, and each measure's seconds from
the run's ``timings_s`` (per call and in all).

    python benchmarks/measure_cost.py                 # 1000 steps, every 100
    python benchmarks/measure_cost.py --steps 200 --every 50
    python benchmarks/measure_cost.py --mechanism     # issue 32's measures and the loss

``--mechanism`` measures instead what the mechanism's measures (``disagreement``,
``disagreement_alignment``, ``edge_of_stability``, ``hessian_top_nodes``,
``hessian_trace_nodes``) cost together at their default settings (target: at most 25% of the
run; the share is their own seconds over the rest of the same run, which load on the machine
moves less than the difference of two runs), and what the ``loss`` measure costs with the node
models on the whole evaluation sets (``node_subset: null``, the old default) and on its default
fixed subset.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from step_time import cpu_name  # noqa: E402 - benchmarks/ is on the path when run as a script

from flatlab.experiment import run  # noqa: E402
from flatlab.measures import named  # noqa: E402

CURVATURE = ["hessian_top", "hessian_trace", "sharpness_worst"]
MECHANISM = ["disagreement", "disagreement_alignment", "edge_of_stability", "hessian_top_nodes",
             "hessian_trace_nodes"]


def one(steps: int, every: int, metrics: list[str], out: Path, device: str,
        options: dict | None = None) -> dict:
    cfg = {"name": "measure-cost", "seed": 0, "device": device, "threads": 1,
           "data": {"name": "mnist1d", "partition": "dirichlet", "alpha": 1.0,
                    "batch_size": 32},
           "model": {"name": "cnn1d"}, "topology": {"name": "ring", "nodes": 16},
           "algorithm": {"name": "diffusion"}, "optim": {"lr": 0.1, "schedule": "constant"},
           "train": {"steps": steps},
           "measure": {"every": every, "metrics": ["loss", *metrics],
                       "options": options or {}},
           "checkpoint_every": 10 * steps}
    res = run(cfg, out, progress=False)
    assert res.status == "done", res.status
    return json.loads((out / "status.json").read_text())["timings_s"]


def mechanism(a: argparse.Namespace, calls: int) -> None:
    """The mechanism's measures and the two ways of evaluating the node models' loss."""
    with tempfile.TemporaryDirectory() as tmp:
        whole = one(a.steps, a.every, [], Path(tmp) / "whole", a.device,
                    {"loss": {"node_subset": None}})
        base = one(a.steps, a.every, [], Path(tmp) / "base", a.device)
        full = one(a.steps, a.every, MECHANISM, Path(tmp) / "full", a.device)
    print(f"device: {a.device} ({cpu_name()}), torch {torch.__version__}, 1 thread; cnn1d, 16 "
          f"nodes, ring, {a.steps} steps, measures every {a.every} ({calls} calls)")
    for label, t in (("loss, nodes on the whole sets", whole), ("loss, nodes on 256 samples",
                                                                 base)):
        loss = t["measures"].get("loss", 0.0)
        print(f"{label}: run {t['total']:.1f} s (train {t['train']:.1f} s), loss {loss:.1f} s "
              f"= {100 * loss / t['total']:.0f}% of the run")
    print(f"with the mechanism's measures: {full['total']:.1f} s (train {full['train']:.1f} s)")
    for name in ["loss", *MECHANISM]:
        s = full["measures"].get(name, 0.0)
        period = a.every * named.get(name).thin  # the default thinning
        n_calls = len({0, a.steps, *range(0, a.steps + 1, period)})
        print(f"  {name:<24} {s:7.1f} s in all, {n_calls:2d} calls, "
              f"{1e3 * s / n_calls:8.1f} ms per call, "
              f"{100 * s / base['total']:5.1f}% of the run without them")
    own = sum(full["measures"].get(name, 0.0) for name in MECHANISM)
    rest = full["total"] - own  # the same run without them: immune to load that moves between runs
    extra = full["total"] - base["total"]
    print(f"the mechanism's measures: {own:.1f} s, {100 * own / rest:.0f}% of the rest of the "
          f"same run ({rest:.1f} s; target <= 25%); the two runs' difference: "
          f"{100 * extra / base['total']:.0f}% of the run without them")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Each run trains a 16-node 1-D CNN: a few minutes on "
                                        "one CPU core at the defaults.")
    ap.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    ap.add_argument("--every", type=int, default=100,
                    help="measurement period in steps (default 100)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--mechanism", action="store_true",
                    help="the mechanism's measures and the loss measure's node subset")
    a = ap.parse_args()
    calls = a.steps // a.every + 1
    if a.mechanism:
        mechanism(a, calls)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = one(a.steps, a.every, [], Path(tmp) / "base", a.device)
        full = one(a.steps, a.every, CURVATURE, Path(tmp) / "full", a.device)
    print(f"device: {a.device} ({cpu_name()}), torch {torch.__version__}, 1 thread; cnn1d, 16 "
          f"nodes, ring, {a.steps} steps, measures every {a.every} ({calls} calls)")
    print(f"without curvature: {base['total']:.1f} s (train {base['train']:.1f} s, loss "
          f"{base['measures'].get('loss', 0.0):.1f} s)")
    print(f"with {', '.join(CURVATURE)}: {full['total']:.1f} s (train {full['train']:.1f} s)")
    for name in ["loss", *CURVATURE]:
        s = full["measures"].get(name, 0.0)
        print(f"  {name:<16} {s:7.1f} s in all, {1e3 * s / calls:8.1f} ms per call")
    print(f"ratio {full['total'] / base['total']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
