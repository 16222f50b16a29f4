"""CPU threads per run: how long a run takes with 1, 2, ... torch threads, idle and beside load.

flatlab's default (``threads: auto``, :func:`flatlab.experiment.runner.resolve_threads`) is
chosen from this table. Two workloads of ``configs/ring16.yaml`` (16-node ring, 1-D CNN on
mnist1d), each run in a fresh process with ``threads: T``:

- ``train``: ``--steps`` steps, measured (loss, accuracy, consensus, gradient norm) at the start
  and the end;
- ``curvature``: the same run with the top Hessian eigenvalue (Lanczos) and the trace
  (Hutch++) at the start and the end as well.

Each is timed idle and with ``--busy`` other processes spinning on the CPU (as when a sweep's
other worker, or anything else, shares the machine). Seconds are the run's own wall time
(``flatlab.experiment.run``, without the interpreter's start); the ratio is against the
fastest thread count of the same workload and load, measured in the same invocation. Repeats
are interleaved and the median is kept.

Usage::

    python benchmarks/threads.py                      # threads 1..cores, idle and 1 busy
    python benchmarks/threads.py --threads 1,2,4,8 --busy 0,1,4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from step_time import cpu_name  # benchmarks/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from flatlab.experiment import load_config, run
cfg = load_config(sys.argv[1], json.loads(sys.argv[3]))
t0 = time.perf_counter()
res = run(cfg, sys.argv[2], progress=False, resume=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "status": res.status}))
"""

SPIN = "while True:\n    pass\n"


def overrides(workload: str, steps: int, threads: int) -> list[str]:
    """The ``key=value`` overrides of one workload."""
    base = [f"train.steps={steps}", f"measure.every={steps}", f"checkpoint_every={steps}",
            f"threads={threads}", "device=cpu", "measure.train_subset=1000"]
    if workload == "curvature":
        base += ["measure.metrics=[loss,accuracy,consensus_distance,grad_norm,hessian_top,"
                 "hessian_trace]", "measure.curvature_subset=512"]
    return base


def time_run(workload: str, steps: int, threads: int) -> float:
    """Seconds of one run in a fresh process."""
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT / "configs" / "ring16.yaml"),
             str(Path(d) / "run"), json.dumps(overrides(workload, steps, threads))],
            capture_output=True, text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if r["status"] != "done":
            raise RuntimeError(f"{workload} with {threads} threads ended {r['status']}")
        return float(r["seconds"])


def main() -> None:
    """Print the table."""
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default=",".join(str(t) for t in range(1, cores + 1)),
                   help="thread counts, comma-separated (default 1..cores)")
    p.add_argument("--busy", default="0,1", help="numbers of spinning processes (default 0,1)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workloads", default="train,curvature")
    a = p.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    busies = [int(b) for b in a.busy.split(",")]
    import torch

    print(f"{time.strftime('%Y-%m-%d')}, device: CPU {cpu_name()}, "
          f"{cores} logical CPUs, torch {torch.__version__} (default threads "
          f"{torch.get_num_threads()}), {a.steps} steps of configs/ring16.yaml, median of "
          f"{a.repeats}")
    print(f"{'workload':>10} {'busy':>4} {'threads':>7} {'seconds':>8} {'/best':>6}")
    for busy in busies:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            for w in a.workloads.split(","):
                times: dict[int, list[float]] = {t: [] for t in threads}
                for _ in range(a.repeats):  # interleaved
                    for t in threads:
                        times[t].append(time_run(w, a.steps, t))
                med = {t: statistics.median(v) for t, v in times.items()}
                best = min(med.values())
                for t in threads:
                    print(f"{w:>10} {busy:>4} {t:>7} {med[t]:>8.1f} {med[t] / best:>6.2f}",
                          flush=True)
        finally:
            for s in spinners:
                s.kill()
                s.wait()


if __name__ == "__main__":
    main()
