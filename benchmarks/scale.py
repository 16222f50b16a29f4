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
    python benchmarks/scale.py --model resnet20 --sizes 1024 --device cuda   # the GPU target

``--model resnet20`` (GroupNorm, the default norm) times the engine's ``diffusion`` step on
random 3 x 32 x 32 images (16 per node by default; no image set ships with flatlab), not a
whole run: issue 21's GPU target is 1024 such nodes at 5 or more steps per second.
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
           "measure": {"every": steps, "metrics": []},  # training alone: its time and memory
           "checkpoint_every": 10 * steps}
    flatlab.data.load("mnist1d", num_samples=samples)  # generate (and cache) outside the timing
    with tempfile.TemporaryDirectory() as out:
        result = run(cfg, Path(out) / "run", progress=False)
        status = json.loads((Path(out) / "run" / "status.json").read_text())
    train_s = status["timings_s"]["train"]
    dev = flatlab.engine.resolve_device(device)
    mixer = flatlab.comm.SimulatedMixer(flatlab.topology.make("ring", n), device=dev).method
    # the limit: one model, the same n * b samples per step
    model = flatlab.models.make("cnn1d", input_shape=(40,), num_classes=10, seed=0).to(dev)
    x = torch.randn(n * batch, 40).to(dev)
    y = torch.randint(0, 10, (n * batch,)).to(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.05 * p.grad)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    limit = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    P = sum(p.numel() for p in model.parameters())  # noqa: N806
    return {"n": n, "status": result.status, "mix": mixer, "step_s": train_s / steps,
            "limit_s": limit, "peak_mib": peak,
            "stack_mib": n * P * 4 / 2**20, "P": P}


def images_child(n: int, steps: int, batch: int, device: str) -> dict:
    """Engine steps of ``n`` ResNet-20-GN nodes on random images, and the one-model limit."""
    import torch

    import flatlab
    from flatlab.comm import SimulatedMixer
    from flatlab.engine import GradientOracle, NodeStack

    dev = flatlab.engine.resolve_device(device)
    template = flatlab.models.make("resnet20", input_shape=(3, 32, 32), num_classes=10, seed=0)
    stack = NodeStack(template, n, device=dev)
    oracle, algo = GradientOracle(stack), flatlab.algorithms.make("diffusion")
    mixer = SimulatedMixer(flatlab.topology.make("ring", n), device=dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, batch, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (n, batch), generator=gen).to(dev)
    state = algo.init(stack.initial_params(), oracle, mixer)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def per_step(fn) -> float:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return (time.perf_counter() - t0) / steps

    holder = [state]
    step_s = per_step(lambda: holder.__setitem__(
        0, algo.step(holder[0], (x, y), oracle, mixer, 0.05)))
    model = flatlab.models.make("resnet20", input_shape=(3, 32, 32), num_classes=10,
                                seed=0).to(dev)
    xs, ys = x.reshape(n * batch, 3, 32, 32), y.reshape(n * batch)

    def limit() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.05 * p.grad)

    limit_s = per_step(limit)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"n": n, "status": "done", "mix": mixer.method, "step_s": step_s, "limit_s": limit_s,
            "peak_mib": peak, "stack_mib": n * stack.P * 4 / 2**20, "P": stack.P}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--per-node", type=int, default=32, help="training samples per node")
    ap.add_argument("--batch", type=int, default=16, help="batch per node")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="cnn1d", choices=("cnn1d", "resnet20"))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        r = child(a.child, a.steps, a.per_node, a.batch, a.device) if a.model == "cnn1d" else \
            images_child(a.child, a.steps, a.batch, a.device)
        print(json.dumps(r))
        return
    from step_time import cpu_name

    what = "a whole run" if a.model == "cnn1d" else "engine steps on random images"
    print(f"device: {a.device} ({cpu_name()}, {os.cpu_count()} cores), 1 thread per run; "
          f"{a.model}, ring, diffusion, batch {a.batch} per node, {a.steps} steps ({what}); "
          f"peak: resident memory on the CPU, allocated GPU memory on CUDA")
    print(f"{'n':>6}{'mix':>7}{'s/step':>9}{'steps/s':>9}{'limit s':>9}{'ratio':>7}"
          f"{'peak MiB':>10}{'stack MiB':>11}")
    for n in (int(s) for s in a.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--steps",
                              str(a.steps), "--per-node", str(a.per_node), "--batch",
                              str(a.batch), "--device", a.device, "--model", a.model],
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
