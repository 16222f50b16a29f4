"""Run the kernel-sensitive tests under every kernel level this CPU offers (``make test-kernels``).

A user's CPU may run other kernels than the one the suite was written on: torch's ATen kernels
come in levels (``DEFAULT``, ``AVX2``, ``AVX512`` on x86), MKL, oneDNN, numpy and OpenBLAS each
dispatch on the CPU too, and every level rounds differently (a float32 ``uniform_`` already
differs by one ulp between DEFAULT and AVX2). Each of them can be told to use a lower level, so
one machine can play the others:

- ``default``: ``ATEN_CPU_CAPABILITY=default``, ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``,
  ``ONEDNN_MAX_CPU_ISA=SSE41``, ``OPENBLAS_CORETYPE=Nehalem``, numpy's baseline only
  (``NPY_DISABLE_CPU_FEATURES`` lists every dispatch target);
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``, ``OPENBLAS_CORETYPE=Haswell``, numpy's AVX-512 targets disabled;
- ``avx512``: nothing set, when it is this CPU's own level.

The top level offered is run with nothing set (the bit-exact comparison with the golden recording
applies there when the recording was made on this kind of machine); the lower ones with every
library held to the level. On an Arm or other CPU the levels are ``default`` and the native one.

For each level the tests marked ``kernels`` run (the golden runs and the float32 comparisons of
``tests/precision.py``: vmap against loops, distributed against simulated) with
``FLATLAB_ULPS_LOG`` set, and the largest measured ratio of each kind of comparison is printed
beside its budget, so that the margins can be read off on any CPU.

Usage: ``python -m tests.kernels [--levels default,avx2] [pytest arguments]``; exit status 0 when
every level passed.

``--demo OUT`` (``make demo-kernels``) runs ``flatlab demo`` instead, once per level into
``OUT/<level>`` (about 5 minutes a level on 2 cores; ``--small``: its seconds-long check), then
compares every level's table with the native one (``python -m flatlab.demo``): how far the
demo's numbers move between CPUs, beside their standard errors.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.golden import KERNEL_ENV, numpy_dispatch

ROOT = Path(__file__).resolve().parents[1]

X86 = ("default", "avx2", "avx512")

#: What holds MKL, oneDNN and OpenBLAS to each x86 level below the native one.
_X86_ENV = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
}


def native_level() -> str:
    """torch's kernel level on this CPU with nothing set (``default``, ``avx2``, ...)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    out = subprocess.run([sys.executable, "-c", "import torch; "
                          "print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().lower()


def _numpy_disabled(level: str) -> str:
    """numpy dispatch targets above ``level`` (for ``NPY_DISABLE_CPU_FEATURES``)."""
    enabled = numpy_dispatch()[1]
    if level == "default":
        return " ".join(enabled)
    return " ".join(k for k in enabled if "512" in k or k == "X86_V4")


def levels_offered() -> list[str]:
    """The kernel levels this CPU can run, lowest first; the last is the native one."""
    top = native_level()
    if platform.machine().lower() in ("x86_64", "amd64") and top in X86:
        return list(X86[:X86.index(top) + 1])
    return ["default", top] if top != "default" else ["default"]


def environment(level: str, native: str) -> dict[str, str]:
    """The environment of the tests at ``level`` (nothing changed at the native level)."""
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    if level == native:
        return env
    if level in _X86_ENV:
        env.update(_X86_ENV[level])
        if platform.machine().lower() not in ("x86_64", "amd64"):
            env.pop("OPENBLAS_CORETYPE")
    else:
        env["ATEN_CPU_CAPABILITY"] = level
    disabled = _numpy_disabled(level)
    if disabled:
        env["NPY_DISABLE_CPU_FEATURES"] = disabled
    return env


def summarize(log: Path) -> list[str]:
    """The largest ratio of each kind of comparison in a ``FLATLAB_ULPS_LOG`` file."""
    worst: dict[str, tuple[float, float, str]] = {}
    if not log.exists():
        return ["  (no comparison logged)"]
    for line in log.read_text().splitlines():
        test, what, ratio, budget = line.split("\t")
        kind = f"golden: {what.split(' | ')[0]}" if test == "golden" else test.split("::")[0]
        r, b = float(ratio), float(budget)
        if kind not in worst or r / max(b, 1e-300) > worst[kind][0] / max(worst[kind][1], 1e-300):
            worst[kind] = (r, b, what.split(" | ")[-1] if test == "golden" else f"{test} {what}")
    return [f"  {kind:48s} worst {r:9.3g} of budget {b:9.3g}   ({where})"
            for kind, (r, b, where) in sorted(worst.items())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", help="comma-separated levels (default: every level offered)")
    p.add_argument("--demo", metavar="OUT", help="run flatlab demo per level into OUT/<level> "
                   "and compare the levels' tables, instead of the tests")
    p.add_argument("--small", action="store_true", help="with --demo: flatlab demo --small, "
                   "a seconds-long check of this command")
    args, pytest_args = p.parse_known_args(argv)
    offered = levels_offered()
    native = offered[-1]
    levels = offered if not args.levels else args.levels.lower().split(",")
    unknown = [lv for lv in levels if lv not in offered]
    if unknown:
        print(f"error: level {unknown[0]!r} is not offered by this CPU; offered: "
              f"{', '.join(offered)}", file=sys.stderr)
        return 2
    if args.demo:
        return _demo(Path(args.demo), levels, native, args.small)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            log = Path(tmp) / f"{level}.log"
            env = environment(level, native) | {"FLATLAB_ULPS_LOG": str(log)}
            held = " ".join(f"{k}={v}" for k, v in sorted(env.items())
                            if k != "FLATLAB_ULPS_LOG" and os.environ.get(k) != v)
            print(f"== level {level}{' (native)' if level == native else ''}: "
                  f"{held or 'nothing set'}", flush=True)
            t0 = time.time()
            rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "kernels",
                                 "-p", "no:cacheprovider", *pytest_args], env=env,
                                cwd=ROOT).returncode
            results[level] = rc
            print(f"-- level {level}: {'passed' if rc == 0 else 'FAILED'} in "
                  f"{time.time() - t0:.0f} s; largest ratios (units of eps x scale):")
            print("\n".join(summarize(log)), flush=True)
    print("kernel levels: " + ", ".join(f"{lv} {'passed' if rc == 0 else 'FAILED'}"
                                        for lv, rc in results.items()))
    return 0 if all(rc == 0 for rc in results.values()) else 1


def _demo(out: Path, levels: list[str], native: str, small: bool = False) -> int:
    """``flatlab demo`` under each level, then the levels' numbers beside the native one's."""
    for level in levels:
        env = environment(level, native)
        print(f"== demo at level {level}{' (native)' if level == native else ''}", flush=True)
        t0 = time.time()
        rc = subprocess.run([sys.executable, "-m", "flatlab", "demo", "--out",
                             str(out / level), "--no-progress", *(["--small"] if small else [])],
                            env=env, cwd=ROOT).returncode
        if rc:
            return rc
        print(f"-- level {level}: {time.time() - t0:.0f} s", flush=True)
    ordered = sorted(levels, key=lambda lv: lv != native)  # the native level is the reference
    return subprocess.run([sys.executable, "-m", "flatlab.demo",
                           *(str(out / lv) for lv in ordered)], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
