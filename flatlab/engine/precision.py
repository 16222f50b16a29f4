"""Numerics a GPU changes: TF32 in float32 products, and kernels that are not deterministic.

On the CPU both are no-ops: float32 is float32 and every kernel flatlab uses is deterministic, so
a resumed run continues bit for bit (the tests check it). On a GPU

* cuDNN convolutions use TF32 by default (10 mantissa bits), so float32 curvature of a conv model
  would be TF32 curvature: :func:`full_float32` turns TF32 off for matrix products and
  convolutions, and every measurement runs inside it (:func:`flatlab.measures.schedule.measure`);
  training keeps the device's default (TF32 convolutions: faster, and within SGD's noise);
* atomics make some kernels' sums land in another order on every call (``index_add_``, the
  backward of gathers and of some convolutions): :func:`deterministic` (a run's
  ``deterministic: true``) asks PyTorch for deterministic kernels only, cuDNN's deterministic
  algorithms and no autotuning, and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless it is set.
  It is off by default: it costs speed on a GPU (not measured yet on this project's models) and
  an operation without a deterministic kernel then raises instead of running. With it on, a
  resumed GPU run is meant to continue bit for bit as a CPU run does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["full_float32", "deterministic"]


@contextmanager
def full_float32() -> Iterator[None]:
    """Matrix products and cuDNN convolutions in full float32 (no TF32), undone afterwards."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


@contextmanager
def deterministic(on: bool = True) -> Iterator[None]:
    """Deterministic kernels only while inside (``on``), every setting restored afterwards."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]
