"""The CPU allocator policy: freed [n, P] memory is reused, not page-faulted in again.

Counted, not timed: the kernel's minor page-fault counter (``getrusage``) for filling a fresh
64 MiB tensor after an equal one was freed, in a fresh process, first under glibc's default
policy (each of the tensor's 16,384 pages faults anew: the control) and then after a CPU
``NodeStack`` has set :func:`reuse_freed_memory` (the pages come from the process's heap). The
fewest faults over four cycles each: under the reuse policy one cycle in a few still faults
once, when a small allocation lands in the freed block and the heap grows past it (measured:
16,384 in the first or second cycle of some processes, 0 in every later one), the steady state
of a training loop.
"""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
def cycle():
    torch.ones(16 * 2**20)  # 64 MiB of float32, allocated, filled and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def faults():
    return min(cycle() for _ in range(4))
system = faults()
from flatlab.engine import NodeStack
from flatlab.engine.allocator import reuse_freed_memory
NodeStack(torch.nn.Linear(2, 2), n=2, device="cpu")
print(reuse_freed_memory(), system, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="the policy is glibc's mallopt")
def test_a_cpu_stack_makes_freed_memory_reused():
    env = {k: v for k, v in os.environ.items() if k != "FLATLAB_MALLOC"}
    on, system, reused = subprocess.run([sys.executable, "-c", PROBE], env=env, text=True,
                                        capture_output=True, check=True).stdout.split()
    assert on == "True"
    assert int(system) > 8000  # the control: the default policy maps the tensor anew
    assert int(reused) < 1000  # 16,384 pages of 4 KiB if each were faulted in again


def test_system_policy_on_request_and_reuse_is_idempotent(monkeypatch):
    from flatlab.engine import allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv(allocator.MALLOC_ENV, "system")
    assert allocator.reuse_freed_memory() is False
    assert allocator.reuse_freed_memory() is False  # decided once per process
