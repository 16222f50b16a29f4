"""Keep freed CPU memory in the process, so that ``[n, P]`` temporaries cost no page faults.

Every step of the engine makes a few fresh ``[n, P]`` tensors (the gradients, the update, the
mix) and per-layer ``[n, out, in]`` weight gradients; the single-model limit makes ``[P]`` ones.
glibc's ``malloc`` serves a request above its mmap threshold (128 KiB to 32 MiB, adjusted as the
process runs) with a fresh ``mmap`` and returns it to the system on ``free``, so each such tensor
is page-faulted and zeroed by the kernel anew: measured on 2 AMD EPYC cores (torch 2.13 CPU),
cloning a 32 x 78,858 float32 stack took 0.4 ms from reused memory and a 256-node one 65 ms
fresh against 12 ms reused, and the MLP oracle at n = 256 went from 204 ms to 103 ms per call
(``benchmarks/step_time.py``, ``--system-malloc`` for the comparison).

:func:`reuse_freed_memory` asks glibc (``mallopt``) to serve every request from its heap and to
keep freed memory there: the process's resident size stays at its peak instead of shrinking
between steps, which a training process reaches on its first step anyway. The arithmetic is
untouched. :class:`~flatlab.engine.NodeStack` calls it once per process when it is built on the
CPU; set ``FLATLAB_MALLOC=system`` before starting Python to keep the C library's defaults.
Elsewhere (macOS, Windows, a C library without ``mallopt``) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["reuse_freed_memory", "MALLOC_ENV"]

MALLOC_ENV = "FLATLAB_MALLOC"
"""Environment variable: ``system`` keeps the C library's allocation policy."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_state: bool | None = None


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; once per process.

    Sets ``M_MMAP_MAX = 0`` (no request gets its own mapping) and a trim threshold of 2 GiB (the
    top of the heap is not handed back after every step).

    Returns:
        Whether the policy is in force (``False`` off Linux/glibc or with
        ``FLATLAB_MALLOC=system``).
    """
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "system" \
            or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # no mallopt (musl, say)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _state = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _state
