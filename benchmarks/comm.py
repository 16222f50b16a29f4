"""Benchmark: the distributed mixer on K gloo processes (loopback), against raw point-to-point.

1. ``mix`` of ``DistributedMixer`` (n nodes on a ring, K processes of n/K nodes, rows of P
   float32 numbers) against a raw ``batch_isend_irecv`` of exactly the same bytes to the same
   peers, measured in the same processes (target overhead <= 1.5x);
2. steps per second of a distributed ``diffusion`` step (MLP, batch 32 per node, the node stack
   of n/K nodes per process) against the simulated run of the same n nodes in one process.

    python benchmarks/comm.py                    # K = 4, n = 16, P = 100,000
    python benchmarks/comm.py --procs 2 --nodes 8 --P 50000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from datetime import timedelta

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import flatlab  # noqa: E402
from flatlab.comm import DistributedMixer, SimulatedMixer  # noqa: E402
from flatlab.engine import GradientOracle, NodeStack  # noqa: E402
from flatlab.models import make as make_model  # noqa: E402

B = 32


def med_ms(fn, reps: int, barrier: bool = True) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        if barrier:
            dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def paired_ms(fn_a, fn_b, reps: int) -> tuple[float, float]:
    """Medians of ``fn_a`` and ``fn_b`` timed alternately, each after a barrier."""
    for _ in range(5):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(ta), statistics.median(tb)


def train_step_fn(n_local: int, mixer, seed_rows: slice | None = None):
    stack = NodeStack(make_model("mlp", input_shape=(40,), num_classes=10, seed=0), n_local,
                      device="cpu")
    oracle = GradientOracle(stack)
    algo = flatlab.algorithms.make("diffusion")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_local, B, 40, generator=gen)
    y = torch.randint(0, 10, (n_local, B), generator=gen)
    state = [algo.init(stack.initial_params(), oracle, mixer)]

    def step() -> None:
        state[0] = algo.step(state[0], (x, y), oracle, mixer, 0.05)

    return step


def worker(rank: int, world: int, port: int, n: int, P: int, reps: int, q) -> None:  # noqa: N803
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    topo = flatlab.topology.make("ring", n)
    mixer = DistributedMixer(topo)
    X = torch.randn(mixer.k, P)
    plan = mixer._rounds[0]  # the same peers and sizes, raw
    sends = {p: torch.randn(len(idx), P) for p, idx in plan.send.items()}
    recvs = {p: torch.empty(len(ids), P) for p, ids in plan.recv.items()}

    def raw() -> None:
        ops = [dist.P2POp(dist.isend, t, p) for p, t in sends.items()]
        ops += [dist.P2POp(dist.irecv, t, p) for p, t in recvs.items()]
        for r in dist.batch_isend_irecv(ops):
            r.wait()

    # interleaved, so both see the same machine (loopback timings drift by 2x over seconds)
    mix_ms, raw_ms = paired_ms(lambda: mixer.mix(X, 0), raw, reps)
    step = train_step_fn(mixer.k, DistributedMixer(topo))
    step_ms = med_ms(step, max(10, reps // 5))
    res = torch.tensor([mix_ms, raw_ms, step_ms])
    dist.all_reduce(res, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    if rank == 0:
        q.put(res.tolist())
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--P", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.spawn(worker, args=(args.procs, port, args.nodes, args.P, args.reps, q),
             nprocs=args.procs, join=True)
    mix_ms, raw_ms, dstep_ms = q.get()
    torch.set_num_threads(1)
    sim_step = train_step_fn(args.nodes, SimulatedMixer(flatlab.topology.make("ring", args.nodes),
                                                         device="cpu"))
    for _ in range(5):
        sim_step()
    ts = []
    for _ in range(max(10, args.reps // 5)):
        t = time.perf_counter()
        sim_step()
        ts.append(1e3 * (time.perf_counter() - t))
    sstep_ms = statistics.median(ts)
    print(f"device: CPU, {os.cpu_count()} cores, gloo on loopback, {args.procs} processes x "
          f"{args.nodes // args.procs} nodes, ring of {args.nodes}; torch {torch.__version__}")
    print(f"mix of {args.P:,} float32 per row: {mix_ms:.3f} ms; raw batch_isend_irecv of the "
          f"same bytes: {raw_ms:.3f} ms; overhead {mix_ms / raw_ms:.2f}x (target <= 1.5x)")
    print(f"diffusion step, MLP, batch {B}/node: distributed {1e3 / dstep_ms:.1f} steps/s "
          f"({dstep_ms:.2f} ms), simulated in one process (1 thread) {1e3 / sstep_ms:.1f} steps/s "
          f"({sstep_ms:.2f} ms); ratio {sstep_ms / dstep_ms:.2f}")


if __name__ == "__main__":
    main()
