"""Benchmark: what a GPU run waits for on the host, and what determinism costs (issue 37).

For each case (an algorithm on a model, through :func:`flatlab.experiment.train` with the
runner's divergence check), measured in the same run:

1. **waits/step**: the host's waits for the GPU per step, counted by CUDA's synchronization
   debugging (``torch.cuda.set_sync_debug_mode("warn")``: every device read and every copy from
   pageable host memory warns), with the lines of flatlab that caused them;
2. **ms/step, lagged**: the divergence flag read one step late (the default on a GPU:
   :class:`flatlab.experiment.hooks.Divergence`), against **immediate** (read at its own step,
   the CPU's default): the ratio is what the lag saves;
3. **deterministic**: the same steps under ``deterministic: true``
   (:func:`flatlab.engine.precision.deterministic`): the ratio is determinism's cost.

On the CPU there is nothing to wait for (waits are not counted) and ``deterministic`` changes
nothing; the script still runs there, to check it (``--device cpu``).

    python benchmarks/host_waits.py --device cuda
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
import warnings

import torch

from flatlab.engine.precision import deterministic
from flatlab.experiment import build, load_config, train
from flatlab.experiment.hooks import Divergence

CASES = [("diffusion", "mlp", []), ("gradient-tracking", "mlp", []), ("choco", "mlp", []),
         ("ngpd", "mlp", []), ("diffusion", "cnn1d", []),
         ("consensus", "mlp", ["train.stragglers=0.2"])]


def config(algorithm: str, model: str, nodes: int, device: str, extra: list[str]):
    data = "mnist1d" if model == "cnn1d" else "digits"
    spec = {"name": "waits", "device": device, "dtype": "float32", "seed": 0,
            "data": {"name": data, "batch_size": 16}, "model": {"name": model},
            "topology": {"name": "ring", "nodes": nodes}, "algorithm": {"name": algorithm},
            "optim": {"lr": 0.01}, "train": {"steps": 10_000}}
    return load_config(spec, extra)


def steps_of(built, state, start: int, total: int, lag: bool):
    """``train`` as the runner calls it, with only the divergence check as a hook."""
    return train(built.algorithm, state, built.sampler, built.oracle, built.mixer, built.lr,
                 [Divergence(built.mixer, lag=lag)], total=total, start=start,
                 offline=built.offline, straggling=built.straggling, delayed=built.delayed)[0]


def timed(built, steps: int, lag: bool) -> float:
    """Median milliseconds per step over ``steps`` steps (after 5 warm-up steps), 3 repeats."""
    dev = built.stack.device
    state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
    state = steps_of(built, state, 0, 5, lag)
    out, t = [], 5
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        state = steps_of(built, state, t, t + steps, lag)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        out.append((time.perf_counter() - t0) / steps * 1e3)
        t += steps
    return statistics.median(out)


def waits(built, steps: int) -> tuple[float, str]:
    """Host waits per step (lagged check) and the three lines that waited most."""
    if built.stack.device.type != "cuda":
        return float("nan"), "-"
    state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
    state = steps_of(built, state, 0, 3, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            steps_of(built, state, 3, 3 + steps, True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = collections.Counter(f"{w.filename.rsplit('/flatlab/', 1)[-1]}:{w.lineno}"
                                for w in caught if "synchroniz" in str(w.message))
    top = "; ".join(f"{k} x{v / steps:.2g}" for k, v in lines.most_common(3)) or "-"
    return sum(lines.values()) / steps, top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, {args.nodes} nodes, ring, float32, "
          f"batch 16 a node; median ms/step of 3 x {args.steps} steps")
    print(f"{'case':36s} {'waits/step':>10s} {'lagged':>8s} {'immediate':>9s} {'lag gain':>8s} "
          f"{'determ.':>8s} {'cost':>6s}  lines that waited")
    for algorithm, model, extra in CASES:
        built = build(config(algorithm, model, args.nodes, args.device, extra))
        per_step, top = waits(built, args.steps)
        lagged = timed(built, args.steps, lag=True)
        immediate = timed(built, args.steps, lag=False)
        with deterministic(True):
            built_det = build(config(algorithm, model, args.nodes, args.device, extra))
            det = timed(built_det, args.steps, lag=True)
        label = f"{algorithm}/{model}" + (f" {' '.join(extra)}" if extra else "")
        print(f"{label:36s} {per_step:10.2f} {lagged:8.2f} {immediate:9.2f} "
              f"{immediate / lagged:7.2f}x {det:8.2f} {det / lagged:5.2f}x  {top}", flush=True)


if __name__ == "__main__":
    main()
