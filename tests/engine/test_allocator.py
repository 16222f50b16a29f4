"""The CPU allocator policy: freed [n, P] memory is reused, not page-faulted in again.

Counted, not timed: the kernel's minor page-fault counter (``getrusage``) for filling a fresh
64 MiB tensor after an equal one was freed. Under glibc's default policy each of its 16,384
pages faults anew; with :func:`reuse_freed_memory` they come from the process's heap.
"""

import os
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr(
    "CS_GNU_LIBC_VERSION") is None, reason="the policy is glibc's mallopt")

PROBE = """
import resource, sys, torch
from flatlab.engine import NodeStack
NodeStack(torch.nn.Linear(2, 2), n=2, device="cpu")
from flatlab.engine.allocator import reuse_freed_memory
on = reuse_freed_memory()
numel = 16 * 2**20  # 64 MiB of float32
torch.ones(numel)  # allocated, filled and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(numel)
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "FLATLAB_MALLOC"}
    if env_value is not None:
        env["FLATLAB_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@glibc
def test_a_cpu_stack_makes_freed_memory_reused():
    on, faults = _probe(None)
    assert on
    assert faults < 1000  # 16,384 pages of 4 KiB if each were faulted in again


@glibc
def test_system_policy_on_request_faults_every_page():
    on, faults = _probe("system")
    assert not on
    assert faults > 8000  # the control: the default policy maps and faults the tensor anew


def test_reuse_is_idempotent():
    from flatlab.engine.allocator import reuse_freed_memory

    assert reuse_freed_memory() == reuse_freed_memory()
