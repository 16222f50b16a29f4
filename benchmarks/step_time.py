"""Benchmark: one training step of n nodes, three ways, measured in the same run.

1. **loop**: n separate ``nn.Module``s, each its own forward/backward on its minibatch, an SGD
   update, then gossip with the ring neighbours (what a straightforward simulator does);
2. **flatlab**: the node stack's vectorized oracle plus one ``diffusion`` step (``W (X − η G)``);
3. **limit**: one model on a batch of n·b samples (forward, backward, SGD update): the cost of
   the same arithmetic with no per-node structure at all.

Targets (issue 3), at n = 32 on 2 CPU cores: flatlab >= 2.5x faster than the loop and within
2.5x of the limit; on a GPU: >= 10x and within 1.5x. Prints the device, milliseconds (median of
``--reps`` steps after warm-up) and the ratios.

    python benchmarks/step_time.py                 # MLP and 1-D CNN, n = 8, 32, 64
    python benchmarks/step_time.py --quick         # n = 8, 32, fewer repetitions
    python benchmarks/step_time.py --compile       # also the torch.compile'd oracle (MLP)
    python benchmarks/step_time.py --sizes 32,256  # issue 21's sizes
    python benchmarks/step_time.py --system-malloc # glibc's default policy (engine/allocator.py)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import flatlab  # noqa: E402
from flatlab.comm import SimulatedMixer  # noqa: E402
from flatlab.engine import GradientOracle, NodeStack  # noqa: E402
from flatlab.models import make as make_model  # noqa: E402

B = 32


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_ms(fn, dev, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def bench(model_name: str, n: int, dev: torch.device, reps: int,
          compiled: bool = False) -> dict[str, float]:
    template = make_model(model_name, input_shape=(40,), num_classes=10, seed=0).to(dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, B, 40, generator=gen).to(dev)
    y = torch.randint(0, 10, (n, B), generator=gen).to(dev)
    lr = 0.05
    topo = flatlab.topology.make("ring", n)

    # 1. loop of modules with neighbour gossip
    models = [copy.deepcopy(template) for _ in range(n)]
    W = topo.matrix(0)
    nbrs = [[(j, float(W[i, j])) for j in range(n) if W[i, j] != 0] for i in range(n)]

    def loop_step() -> None:
        for i, m in enumerate(models):
            m.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x[i]), y[i]).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p.sub_(lr * p.grad)
        with torch.no_grad():
            params = [list(m.parameters()) for m in models]
            new = [[sum(w * params[j][k] for j, w in nbrs[i]) for k in range(len(params[i]))]
                   for i in range(n)]
            for i in range(n):
                for p, q in zip(params[i], new[i], strict=True):
                    p.copy_(q)

    # 2. flatlab
    stack = NodeStack(copy.deepcopy(template), n, device=dev)
    oracle = GradientOracle(stack)
    mixer = SimulatedMixer(topo, device=dev)
    algo = flatlab.algorithms.make("diffusion")
    state = [algo.init(stack.initial_params(), oracle, mixer)]

    def flatlab_step() -> None:
        state[0] = algo.step(state[0], (x, y), oracle, mixer, lr)

    # 3. the limit: one model, batch n * b
    single = copy.deepcopy(template)
    xs, ys = x.reshape(n * B, 40), y.reshape(n * B)

    def limit_step() -> None:
        single.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(single(xs), ys).backward()
        with torch.no_grad():
            for p in single.parameters():
                p.sub_(lr * p.grad)

    out = {"loop": median_ms(loop_step, dev, reps), "flatlab": median_ms(flatlab_step, dev, reps),
           "limit": median_ms(limit_step, dev, reps)}
    if compiled:  # the opt-in compiled oracle (vmap method); warm-up includes the compilation
        coracle = GradientOracle(stack, method="vmap", compile=True)
        cstate = [algo.init(stack.initial_params(), coracle, mixer)]

        def compiled_step() -> None:
            cstate[0] = algo.step(cstate[0], (x, y), coracle, mixer, lr)

        sync(dev)
        t0 = time.perf_counter()
        compiled_step()  # the first call compiles
        sync(dev)
        out["warmup_s"] = time.perf_counter() - t0
        out["compiled"] = median_ms(compiled_step, dev, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="mlp,cnn1d")
    ap.add_argument("--sizes", default=None, help="comma-separated n (default 8,32,64)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the torch.compile'd oracle (tens of seconds to compile)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own, one per core)")
    ap.add_argument("--system-malloc", action="store_true",
                    help="keep the C library's allocation policy (FLATLAB_MALLOC=system)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.system_malloc:
        os.environ[flatlab.engine.allocator.MALLOC_ENV] = "system"
    dev = flatlab.engine.resolve_device(args.device)
    sizes = [int(s) for s in (args.sizes or ("8,32" if args.quick else "8,32,64")).split(",")]
    reps = 10 if args.quick else 30
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU {cpu_name()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"device: {name}; torch {torch.__version__}; batch {B} per node; ms per step "
          f"(median of {reps}); allocator: "
          f"{'system' if args.system_malloc else 'reuse freed memory'}; ring mixing: "
          + ", ".join(f"n={n} {SimulatedMixer(flatlab.topology.make('ring', n), device=dev).method}"
                      for n in sizes))
    head = (f"{'model':<7}{'n':>4}{'loop':>10}{'flatlab':>10}{'limit':>10}"
            f"{'loop/flatlab':>14}{'flatlab/limit':>15}")
    if args.compile:
        head += f"{'compiled':>10}{'compiled/limit':>16}{'warm-up s':>11}"
    print(head)
    for model in args.models.split(","):
        for n in sizes:
            r = bench(model, n, dev, reps, compiled=args.compile and model == "mlp")
            line = (f"{model:<7}{n:>4}{r['loop']:>10.2f}{r['flatlab']:>10.2f}{r['limit']:>10.2f}"
                    f"{r['loop'] / r['flatlab']:>14.2f}{r['flatlab'] / r['limit']:>15.2f}")
            if "compiled" in r:
                line += (f"{r['compiled']:>10.2f}{r['compiled'] / r['limit']:>16.2f}"
                         f"{r['warmup_s']:>11.1f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
