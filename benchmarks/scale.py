"""Benchmark: many nodes in one process: steps per second and peak memory of real runs.

Issue 21's scale check: the 1-D CNN on a ring of 256 and 1024 nodes in one process, trained by
``flatlab run`` machinery (``flatlab.experiment.run``: sampler, oracle, ``diffusion``, ring
mixing in ``O(n · degree · P)``), on a generated mnist1d set large enough for every node to
hold ``--per-node`` samples (mnist1d's default 4,000 would leave 4 per node at n = 1024). Each
size runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.

Printed per n: the mixing form, train seconds per step (from the run's ``timings_s``), steps per
second, peak memory, the size of the node stack ``n P`` floats, and the baseline measured in the
same process: one model's step (forward, backward, SGD update) on the whole ``n b`` batch, the
single-model limit; ``ratio = flatlab step / limit step``.

    python benchmarks/scale.py                      # n = 256, 1024; 30 steps each
    python benchmarks/scale.py --sizes 64,256 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def child(n: int, steps: int, per_node: int, batch: int, device: str) -> dict:
    """One run of ``n`` nodes (in this process) and the single-model limit on its batch."""
    import torch

    import flatlab
    from flatlab.experiment import run

    samples = int(n * per_node / 0.8) + 1  # mnist1d keeps 80% for training
    cfg = {"name": f"scale-{n}", "seed": 0, "device": device, "threads": 1,
           "data": {"name": "mnist1d", "options": {"num_samples": samples},
                    "partition": "iid", "batch_size": batch},
           "model": {"name": "cnn1d"}, "topology": {"name": "ring", "nodes": n},
           "algorithm": {"name": "diffusion"}, "optim": {"lr": 0.05, "schedule": "constant"},
           "train": {"steps": steps},
           "measure": {"every": steps, "metrics": ["loss"], "train_subset": 256},
           "checkpoint_every": 10 * steps}
    flatlab.data.load("mnist1d", num_samples=samples)  # generate (and cache) outside the timing
    with tempfile.TemporaryDirectory() as out:
        result = run(cfg, Path(out) / "run", progress=False)
        status = json.loads((Path(out) / "run" / "status.json").read_text())
    train_s = status["timings_s"]["train"]
    mixer = flatlab.comm.SimulatedMixer(flatlab.topology.make("ring", n), device="cpu").method
    # the limit: one model, the same n * b samples per step
    model = flatlab.models.make("cnn1d", input_shape=(40,), num_classes=10, seed=0)
    x = torch.randn(n * batch, 40)
    y = torch.randint(0, 10, (n * batch,))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.05 * p.grad)
        times.append(time.perf_counter() - t0)
    limit = sorted(times)[len(times) // 2]
    P = sum(p.numel() for p in model.parameters())  # noqa: N806
    return {"n": n, "status": result.status, "mix": mixer, "step_s": train_s / steps,
            "limit_s": limit, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "stack_mib": n * P * 4 / 2**20, "P": P}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--per-node", type=int, default=32, help="training samples per node")
    ap.add_argument("--batch", type=int, default=16, help="batch per node")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.steps, a.per_node, a.batch, a.device)))
        return
    from step_time import cpu_name

    print(f"device: {a.device} ({cpu_name()}, {os.cpu_count()} cores), 1 thread per run; "
          f"cnn1d, ring, diffusion, batch {a.batch} per node, {a.steps} steps")
    print(f"{'n':>6}{'mix':>7}{'s/step':>9}{'steps/s':>9}{'limit s':>9}{'ratio':>7}"
          f"{'peak MiB':>10}{'stack MiB':>11}")
    for n in (int(s) for s in a.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--steps",
                              str(a.steps), "--per-node", str(a.per_node), "--batch",
                              str(a.batch), "--device", a.device],
                             capture_output=True, text=True, cwd=Path(__file__).parent)
        if out.returncode:
            print(f"{n:>6} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>6}{r['mix']:>7}{r['step_s']:>9.3f}{1 / r['step_s']:>9.2f}"
              f"{r['limit_s']:>9.3f}{r['step_s'] / r['limit_s']:>7.2f}{r['peak_mib']:>10.0f}"
              f"{r['stack_mib']:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
