"""PyHessian 0.1 as an optional backend, for numbers comparable with the literature.

PyHessian (Yao et al. 2020; docs/reference/measures.md §14.1) is the independent reference in the
tests and the benchmark. Its 0.1 release has side effects and one break on current torch, which
these wrappers contain:

- it puts the model in eval mode and leaves ``.grad`` fields behind: it gets a *copy* of the
  stack's template module with the parameters ``x`` (and the buffers) loaded, never the stack's;
- ``density()`` calls ``torch.eig``, removed from torch: a shim built on ``torch.linalg.eigh``
  (``T`` is symmetric tridiagonal) is installed for the call and removed afterwards;
- its probes come from the global torch RNG: it is seeded for the call and restored afterwards;
- its vectors are created in the default dtype: the default dtype is the stack's for the call;
- it reports no product counts: its ``hessian_vector_product`` is wrapped to count them.

Power iteration finds the eigenvalue of largest magnitude, and PyHessian's trace stops on a
running-mean rule (both documented pitfalls); the residuals reported here are computed afterwards
with flatlab's own operator (``k`` extra products, not counted in ``num_matvecs``).
"""

from __future__ import annotations

import copy
import math
import sys
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from flatlab.curvature.density import SpectralDensity, smooth_density
from flatlab.curvature.lanczos import EigenResult
from flatlab.curvature.model import model_hessian
from flatlab.curvature.trace import TraceResult
from flatlab.engine.stack import NodeStack
from flatlab.errors import CurvatureError

__all__ = ["pyhessian_eigenvalues", "pyhessian_trace", "pyhessian_density"]


def _module():
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        raise CurvatureError("backend pyhessian needs the pyhessian package (pip install "
                             "pyhessian==0.1)") from None
    return sys.modules["pyhessian.hessian"]  # the package __init__ shadows the module's name


@contextmanager
def _contained(dtype: torch.dtype, seed: int, device: torch.device | None = None):
    """Seed, default dtype, torch.eig shim and an HVP counter, all undone afterwards.

    On a GPU the stack's device is made the current one for the call (PyHessian's ``cuda=True``
    moves its vectors with ``.cuda()``, to the current device, which is not the stack's on
    ``cuda:1``), and that device's RNG is seeded and restored along with the CPU's.
    """
    mod = _module()
    counter = [0]
    original_hvp = mod.hessian_vector_product

    def counted(gradsH, params, v):  # noqa: N803
        counter[0] += 1
        return original_hvp(gradsH, params, v)

    def eig_shim(T, eigenvectors=False):  # noqa: N803
        ev, V = torch.linalg.eigh(T)  # noqa: N806
        return torch.stack([ev, torch.zeros_like(ev)], 1), (V if eigenvectors else None)

    had_eig = hasattr(torch, "eig")
    old_eig = getattr(torch, "eig", None)
    old_dtype, rng = torch.get_default_dtype(), torch.get_rng_state()
    gpu = device is not None and device.type == "cuda"
    current = torch.cuda.device(device) if gpu else nullcontext()
    cuda_rng = torch.cuda.get_rng_state(device) if gpu else None
    torch.set_default_dtype(dtype)
    torch.random.default_generator.manual_seed(seed)
    torch.eig = eig_shim
    mod.hessian_vector_product = counted
    try:
        with current:
            if gpu:
                torch.cuda.manual_seed(seed)  # the stack's device's generator only
            yield mod, counter
    finally:
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        mod.hessian_vector_product = original_hvp
        if had_eig:
            torch.eig = old_eig
        else:
            del torch.eig
        torch.set_default_dtype(old_dtype)
        torch.set_rng_state(rng)


def _copy_at(stack: NodeStack, x: torch.Tensor,
             buffers: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """A copy of the template module holding parameters ``x`` and the (averaged) buffers."""
    if x.dim() != 1 or x.shape[0] != stack.P:
        raise CurvatureError(f"PyHessian measures one model: x must be [P = {stack.P}], got "
                             f"{tuple(x.shape)}")
    model = copy.deepcopy(stack.module)
    views = stack.layout.unflatten(x.detach())
    bufs = stack.average_buffers() if buffers is None else buffers
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(views[name])
        for name, b in model.named_buffers():
            b.copy_(bufs[name])
    return model


def _hessian(mod, stack: NodeStack, x, inputs, targets, buffers):
    model = _copy_at(stack, x, buffers)
    data = (inputs.to(stack.device, stack.dtype), targets.to(stack.device))
    return mod.hessian(model, stack.loss_fn, data=data, cuda=stack.device.type == "cuda")


def pyhessian_eigenvalues(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                          targets: torch.Tensor, *, k: int = 1, max_iter: int = 100,
                          tol: float = 1e-3, buffers: dict[str, torch.Tensor] | None = None,
                          seed: int = 0) -> EigenResult:
    """PyHessian's top-``k`` eigenvalues (largest magnitude) of the loss on one batch at ``x``."""
    with _contained(stack.dtype, seed, stack.device) as (mod, counter):
        vals, vecs = _hessian(mod, stack, x, inputs, targets, buffers).eigenvalues(
            maxIter=max_iter, tol=tol, top_n=k)
    ev = torch.tensor(vals, dtype=stack.dtype, device="cpu")
    V = torch.stack([torch.cat([t.reshape(-1) for t in v])  # noqa: N806 - on the host
                     for v in vecs]).to(device="cpu", dtype=stack.dtype)
    op = model_hessian(stack, x, inputs, targets, buffers=buffers)
    res = torch.stack([(op.matvec(V[i].to(stack.device)).cpu() - ev[i] * V[i]).norm()
                       for i in range(len(vals))])
    return EigenResult(ev, res, torch.full((len(vals),), float("nan"), device="cpu") == 0,
                       counter[0], V, "largest", float(tol), "pyhessian")


def pyhessian_trace(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                    targets: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-3,
                    buffers: dict[str, torch.Tensor] | None = None,
                    seed: int = 0) -> TraceResult:
    """PyHessian's Hutchinson trace (its running-mean stopping rule) with a standard error."""
    with _contained(stack.dtype, seed, stack.device) as (mod, counter):
        samples = _hessian(mod, stack, x, inputs, targets, buffers).trace(maxIter=max_iter,
                                                                           tol=tol)
    s = torch.tensor(samples, dtype=torch.float64, device="cpu")
    err = float(s.std(correction=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")
    return TraceResult(float(s.mean()), err, s, counter[0], "pyhessian", "rademacher")


def pyhessian_density(stack: NodeStack, x: torch.Tensor, inputs: torch.Tensor,
                      targets: torch.Tensor, *, iter: int = 100, n_v: int = 1,  # noqa: A002
                      num_grid_points: int = 1000, sigma: float | None = None,
                      buffers: dict[str, torch.Tensor] | None = None,
                      seed: int = 0) -> SpectralDensity:
    """PyHessian's SLQ nodes and weights, smoothed as flatlab's ``spectral_density``."""
    with _contained(stack.dtype, seed, stack.device) as (mod, counter):
        nodes, weights = _hessian(mod, stack, x, inputs, targets, buffers).density(iter=iter,
                                                                                   n_v=n_v)
    th = torch.tensor(np.asarray(nodes, dtype=np.float64), device="cpu")
    tau = torch.tensor(np.asarray(weights, dtype=np.float64), device="cpu")
    grid, dens, sig = smooth_density(th, tau, sigma=sigma, steps=int(iter),
                                     num_grid_points=num_grid_points)
    tr = stack.P * float((tau * th).sum(1).mean())
    return SpectralDensity(grid, dens, th, tau, sig, tr, counter[0])
