"""Benchmark: one NGPD step against one diffusion step on the same model, nodes and batches.

NGPD (``flatlab.algorithms.NGPD``) adds to ECL's closed-form primal step the K-FAC work: factors
from an extra forward/backward pass every ``factor_every`` steps, eigendecompositions every
``inverse_every`` steps, and two small matrix products per layer on every step. Measured in the
same run: ``diffusion`` (``W (X − η G)``), ``ecl`` (the first-order primal-dual step), and
``ngpd`` with factor and inverse updates every 10 steps (issue 7's target: at most 2x the
diffusion step), every step, and never after the first (``ngpd/∞``: ECL plus the metric solve,
which separates the per-step cost from the amortized curvature updates). Milliseconds are the
mean over whole update periods (so the amortized factor and inverse cost is included), after
warm-up; the device is printed.

    python benchmarks/ngpd.py            # MLP and 1-D CNN on mnist1d-sized inputs, n = 8, 16
    python benchmarks/ngpd.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from step_time import cpu_name  # noqa: E402 - benchmarks/ is on the path when run as a script

import flatlab  # noqa: E402
from flatlab.comm import SimulatedMixer  # noqa: E402
from flatlab.engine import GradientOracle, NodeStack  # noqa: E402

B = 32
MODELS = {"mlp": ((40,), {"hidden": (64, 64)}), "cnn1d": ((40,), {})}


def ms_per_step(name: str, hp: dict, stack: NodeStack, mixer: SimulatedMixer, batches: list,
                dev: torch.device, steps: int) -> float:
    algo = flatlab.algorithms.make(name, **hp)
    oracle = GradientOracle(stack)
    state = algo.init(stack.initial_params(), oracle, mixer)
    for t in range(10):  # warm-up, including a factor/inverse step
        state = algo.step(state, batches[t % len(batches)], oracle, mixer, 0.05)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for t in range(10, 10 + steps):
        state = algo.step(state, batches[t % len(batches)], oracle, mixer, 0.05)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return 1000 * (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = flatlab.engine.resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (
        f"CPU {cpu_name()}, {torch.get_num_threads()} threads")
    steps = 20 if args.quick else 60  # whole periods of 10
    print(f"device: {name}; torch {torch.__version__}; batch {B} per node; ms per step, mean "
          f"over {steps} steps")
    print(f"{'model':8}{'n':>4}{'diffusion':>11}{'ecl':>9}{'ngpd/10':>10}{'ngpd/1':>9}"
          f"{'ngpd/∞':>9}{'ecl/diff':>10}{'ngpd10/diff':>13}{'ngpd1/diff':>12}"
          f"{'ngpd∞/diff':>12}")
    for model, (shape, opts) in MODELS.items():
        for n in (8, 16):
            template = flatlab.models.make(model, input_shape=shape, num_classes=10, seed=0,
                                           **opts)
            stack = NodeStack(template, n, device=dev)
            mixer = SimulatedMixer(flatlab.topology.make("ring", n), device=dev)
            gen = torch.Generator().manual_seed(0)
            batches = [(torch.randn(n, B, *shape, generator=gen).to(dev),
                        torch.randint(0, 10, (n, B), generator=gen).to(dev)) for _ in range(4)]
            t = {
                "diffusion": ms_per_step("diffusion", {}, stack, mixer, batches, dev, steps),
                "ecl": ms_per_step("ecl", {}, stack, mixer, batches, dev, steps),
                "ngpd10": ms_per_step("ngpd", {}, stack, mixer, batches, dev, steps),
                "ngpd1": ms_per_step("ngpd", {"factor_every": 1, "inverse_every": 1}, stack,
                                     mixer, batches, dev, steps),
                # curvature computed once (in the warm-up) and never refreshed: the solve alone
                "solve": ms_per_step("ngpd", {"factor_every": 10**9, "inverse_every": 10**9},
                                     stack, mixer, batches, dev, steps),
            }
            d = t["diffusion"]
            print(f"{model:8}{n:>4}{d:>11.2f}{t['ecl']:>9.2f}{t['ngpd10']:>10.2f}"
                  f"{t['ngpd1']:>9.2f}{t['solve']:>9.2f}{t['ecl'] / d:>10.2f}"
                  f"{t['ngpd10'] / d:>13.2f}{t['ngpd1'] / d:>12.2f}{t['solve'] / d:>12.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
