"""Benchmark: the simulated mixer's three forms of ``W X`` against each other, same run.

For each topology and n: milliseconds of ``SimulatedMixer.mix`` with ``W`` dense (``O(n^2 P)``,
the baseline), sparse CSR (``O(nnz P)``) and, for circulant graphs, shifts (``O(deg n P)``,
in-place slices), and which one ``method="auto"`` picks. ``P`` defaults to the MLP's 78,858
parameters. Issue 21 asks for mixing that costs ``O(n · degree · P)``, not ``O(n^2 P)``; the
crossovers measured here set ``flatlab.comm.simulated.DENSE_LIMIT_CPU`` and ``SHIFT_MAX_OFFSETS``.

    python benchmarks/mix.py                       # ring, torus, exponential, erdos-renyi
    python benchmarks/mix.py --sizes 32,256 --P 20000
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from step_time import cpu_name, median_ms  # noqa: E402 - benchmarks/ is on the path

import flatlab  # noqa: E402
from flatlab.comm import SimulatedMixer  # noqa: E402
from flatlab.engine import reuse_freed_memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="8,16,32,64,256")
    ap.add_argument("--topologies", default="ring,torus,exponential,erdos-renyi")
    ap.add_argument("--P", type=int, default=78858)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    dev = flatlab.engine.resolve_device(args.device)
    if dev.type == "cpu":
        reuse_freed_memory()  # what a NodeStack on the CPU sets
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"CPU {cpu_name()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"device: {name}; torch {torch.__version__}; P = {args.P}; ms per mix (median of "
          f"{args.reps}); ratio = dense / auto's choice")
    print(f"{'topology':<13}{'n':>6}{'nnz/row':>9}{'dense':>10}{'sparse':>10}{'shift':>10}"
          f"{'auto':>8}{'dense/auto':>12}")
    gen = torch.Generator().manual_seed(0)
    for top in args.topologies.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            kw = {"seed": 0} if top == "erdos-renyi" else {}
            topo = flatlab.topology.make(top, n, **kw)
            X = torch.randn(n, args.P, generator=gen).to(dev)  # noqa: N806
            ms = {}
            for method in ("dense", "sparse", "shift"):
                if method == "shift" and topo.group is None:
                    continue
                mixer = SimulatedMixer(topo, device=dev, method=method)
                ms[method] = median_ms(lambda m=mixer, x=X: m.mix(x, 0), dev, args.reps)
            auto = SimulatedMixer(topo, device=dev).method
            nnz = topo.matrix(0, sparse=True).nnz / n
            shift = f"{ms['shift']:>10.2f}" if "shift" in ms else f"{'-':>10}"
            print(f"{top:<13}{n:>6}{nnz:>9.1f}{ms['dense']:>10.2f}{ms['sparse']:>10.2f}{shift}"
                  f"{auto:>8}{ms['dense'] / ms[auto]:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
