"""Benchmark: top Hessian eigenvalue, flatlab's Lanczos against PyHessian, and n nodes batched.

In one run, on the same model and evaluation data:

1. the top eigenvalue to 1e-3 relative accuracy: flatlab (Lanczos, ``tol=1e-3`` on the residual)
   against PyHessian 0.1 (power iteration, ``tol=1e-3``), time and Hessian-vector products, the
   error measured against a tight Lanczos run (``tol=1e-9``); target: at most 0.5x PyHessian's time;
2. the top eigenvalue of each of n = 16 node models: one batched call against 16 one-at-a-time
   calls; target: at most 0.3x the sequential time.

    python benchmarks/curvature.py                       # MLP on mnist1d, 2000 samples
    python benchmarks/curvature.py --samples 1000 --nodes 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import flatlab.curvature as C  # noqa: E402
from flatlab import data, models  # noqa: E402
from flatlab.curvature.pyhessian import pyhessian_eigenvalues  # noqa: E402
from flatlab.engine import NodeStack  # noqa: E402


def timed(fn, reps: int = 3):
    """(best time in s, last result) over ``reps`` calls."""
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = data.load("mnist1d")
    x, y = ds.x_train[:args.samples], ds.y_train[:args.samples]

    def make(seed: int) -> torch.nn.Module:
        return models.make(args.model, input_shape=tuple(ds.input_shape),
                           num_classes=ds.num_classes, seed=seed)

    stack = NodeStack(make(0), args.nodes, device=args.device, init="different", reinit=make,
                      seed=0)
    X = stack.initial_params()  # noqa: N806
    xbar = X.mean(0)
    ref = C.lanczos(C.model_hessian(stack, xbar, x, y), tol=1e-9, max_iter=200)
    lam = float(ref.eigenvalues[0])

    t_ours, ours = timed(lambda: C.lanczos(C.model_hessian(stack, xbar, x, y), tol=1e-3))
    t_ph, ph = timed(lambda: pyhessian_eigenvalues(stack, xbar, x, y, tol=1e-3))
    err_ours = abs(float(ours.eigenvalues[0]) - lam) / abs(lam)
    err_ph = abs(float(ph.eigenvalues[0]) - lam) / abs(lam)

    def sequential():
        out = []
        for i in range(stack.n):
            bufs = {k: v[i] for k, v in stack.buffers.items()}
            op = C.model_hessian(stack, X[i], x, y, buffers=bufs)
            out.append(C.lanczos(op, tol=1e-3).eigenvalues[0])
        return torch.stack(out)

    t_seq, seq = timed(sequential, reps=1)
    t_bat, bat = timed(lambda: C.lanczos(C.model_hessian(stack, X, x, y), tol=1e-3), reps=1)
    dev = (torch.cuda.get_device_name() if stack.device.type == "cuda" else
           f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {dev}; torch {torch.__version__}; {args.model} P = {stack.P:,}, "
          f"{args.samples} samples of mnist1d, float32")
    print(f"top eigenvalue {lam:.6g} (Lanczos tol 1e-9, {ref.num_matvecs} HVPs)")
    print(f"flatlab Lanczos: {t_ours * 1e3:.1f} ms, {ours.num_matvecs} HVPs, rel. error "
          f"{err_ours:.1e}; PyHessian: {t_ph * 1e3:.1f} ms, {ph.num_matvecs} HVPs, rel. error "
          f"{err_ph:.1e}; time ratio {t_ours / t_ph:.2f} (target <= 0.5)")
    print(f"{stack.n} node models: batched {t_bat * 1e3:.0f} ms, sequential {t_seq * 1e3:.0f} ms; "
          f"ratio {t_bat / t_seq:.2f} (target <= 0.3); max |difference| "
          f"{float((bat.eigenvalues[:, 0] - seq).abs().max()):.1e}")


if __name__ == "__main__":
    main()
