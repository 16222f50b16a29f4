"""Refactors change no number: the golden runs (tests/golden) against their recording.

Bit for bit on a machine with the recording's fingerprint (``tests/golden/data/machine.json``:
the CPU's vendor, family, model and instruction sets, torch and its ATen kernel level, numpy and
its SIMD dispatch, the BLAS core type, the kernel-choosing environment); elsewhere each value to
the tolerance of its own computation (``tests/golden/tolerance.py``: exact, one sample, a Lanczos
criterion, an invariant, or ``budget · eps32 · scale`` with a budget above the growth measured
between kernel levels). ``make test-kernels`` runs this under every kernel level the CPU offers.
"""

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.golden import DATA, fingerprint, key_file, produce
from tests.golden.tolerance import EPS32, checks

pytestmark = pytest.mark.kernels


def _recorded() -> dict:
    return json.loads((DATA / "machine.json").read_text())


def _report(failures) -> str:
    worst = sorted(failures, key=lambda c: -(c.diff / c.allowed if c.allowed else math.inf))
    lines = [f"{len(failures)} golden values moved beyond their tolerance:"]
    lines += [f"  {c.table} {c.what}: |diff| {c.diff:.3g} > allowed {c.allowed:.3g} ({c.rule})"
              for c in worst[:25]]
    return "\n".join(lines)


def test_golden_runs_reproduce_their_recording(tmp_path):
    recorded = _recorded()
    got = produce(tmp_path)
    assert sorted(got) == recorded["tables"]
    here = fingerprint()
    same = {k: recorded.get(k) for k in here} == here
    failures = []
    for key, frame in got.items():
        want = pd.read_parquet(DATA / key_file(key))
        if same:
            pd.testing.assert_frame_equal(frame, want, check_exact=True, obj=key)
        else:
            failures += [c for c in checks(key, frame, want) if not c.ok]
    assert not failures, _report(failures)


# ------------------------------------------------------------------ the rules themselves
@pytest.fixture(autouse=True)
def _measured_only(request, monkeypatch):
    """The rules' own tests move values on purpose: keep them out of FLATLAB_ULPS_LOG, which
    ``make test-kernels`` reads for the rounding measured between kernel levels."""
    if request.node.name != "test_golden_runs_reproduce_their_recording":
        monkeypatch.delenv("FLATLAB_ULPS_LOG", raising=False)


def _tables() -> dict[str, pd.DataFrame]:
    return {k: pd.read_parquet(DATA / key_file(k)) for k in _recorded()["tables"]}


def test_every_recorded_value_has_a_rule_and_equals_itself():
    for key, frame in _tables().items():
        out = checks(key, frame, frame)
        assert out and all(c.ok and c.diff == 0 for c in out), key


def _moved(frame: pd.DataFrame, column: str, where, by) -> pd.DataFrame:
    out = frame.copy()
    out.loc[where(out), column] = by(out.loc[where(out), column])
    return out


def test_rounding_of_the_start_passes_and_real_changes_fail():
    t = _tables()
    m = t["diffusion/metrics"]
    is_loss = lambda f: f["metric"] == "train_loss"  # noqa: E731
    # float32 rounding of the start: a few eps32 relative
    ok = _moved(m, "value", is_loss, lambda v: v * (1 + 3 * EPS32))
    assert all(c.ok for c in checks("diffusion/metrics", ok, m))
    # a real change: 1e-4 relative, some 800 eps32
    bad = _moved(m, "value", is_loss, lambda v: v * (1 + 1e-4))
    assert not all(c.ok for c in checks("diffusion/metrics", bad, m))
    # one flipped prediction of 120 passes, two do not
    acc = lambda f: (f["metric"] == "test_accuracy") & (f["scope"] == "avg")  # noqa: E731
    assert all(c.ok for c in checks("diffusion/metrics",
                                    _moved(m, "value", acc, lambda v: v + 1 / 120), m))
    assert not all(c.ok for c in checks("diffusion/metrics",
                                        _moved(m, "value", acc, lambda v: v + 2 / 120), m))
    # bytes sent are counts
    comm = lambda f: (f["metric"] == "comm_bytes") & (f["value"] > 0)  # noqa: E731
    assert not all(c.ok for c in checks("diffusion/metrics",
                                        _moved(m, "value", comm, lambda v: v + 1), m))


def test_lanczos_values_move_within_their_stopping_criterion_only():
    m = _tables()["all-measures/metrics"]
    top = lambda f: (f["metric"] == "hessian_top") & (f["scope"] == "avg")  # noqa: E731
    # a converged Ritz value lies within its residual (<= tol |theta|) of an eigenvalue
    assert all(c.ok for c in checks("m/metrics", _moved(m, "value", top,
                                                         lambda v: v * (1 + 1.5e-3)), m))
    assert not all(c.ok for c in checks("m/metrics", _moved(m, "value", top,
                                                             lambda v: v * (1 + 3e-3)), m))
    steps = lambda f: f["metric"] == "hessian_top_matvecs"  # noqa: E731
    assert all(c.ok for c in checks("m/metrics", _moved(m, "value", steps, lambda v: v + 1), m))
    assert not all(c.ok for c in checks("m/metrics",
                                        _moved(m, "value", steps, lambda v: v + 2), m))


def test_ngpd_basis_is_compared_by_its_invariants_only():
    s = _tables()["ngpd/state"]
    basis = lambda f: f["key"] == "basis"  # noqa: E731
    # another orthonormal basis of a repeated eigenspace: sum, abs and first move, sumsq not
    rotated = s.copy()
    for col in ("sum", "abs", "first"):
        rotated = _moved(rotated, col, basis, lambda v: v + 0.5)
    assert all(c.ok for c in checks("ngpd/state", rotated, s))
    # the eigenvalues or the number of eigenvectors changed: sumsq moves (1e-4 relative)
    assert not all(c.ok for c in checks("ngpd/state", _moved(s, "sumsq", basis,
                                                             lambda v: v * (1 + 1e-4)), s))
    # the other state tensors are compared whole
    x = lambda f: f["key"] == "x"  # noqa: E731
    assert not all(c.ok for c in checks("ngpd/state", _moved(s, "sum", x, lambda v: v + 1e-3),
                                        s))


# ------------------------------------------------------------------------ the fingerprint
def test_fingerprint_names_the_kernels_not_the_model_name():
    here = fingerprint()
    assert here["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert here["torch"] == torch.__version__ and here["threads"] == "1"
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines()
             if line.startswith("model name")]
    if names:  # a virtual machine may report "AMD EPYC" for several CPUs
        assert names[0] not in here.values()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="this CPU runs the DEFAULT kernels already")
def test_a_lower_kernel_level_is_another_fingerprint():
    code = "import json; from tests.golden import fingerprint; print(json.dumps(fingerprint()))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=DATA.parents[2]).stdout
    lower = json.loads(out)
    assert lower["torch_capability"] == "DEFAULT" and "ATEN_CPU_CAPABILITY=default" in \
        lower["kernel_env"]
    assert lower != fingerprint()
