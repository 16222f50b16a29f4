"""Golden runs: the metrics of a fixed set of runs, recorded so that refactors change nothing.

The set (:data:`RUNS`): every registered algorithm for a few steps with measures, one run with
every curvature, landscape and mechanism measure (and its extra tables), a run on least squares with
``loss_gap``, a run stopped and resumed, a two-point sweep, and a 2-process distributed run
(gloo on the loopback) of two algorithms, one of them primal-dual (edge messages). All in
float64 on one thread (the curvature measures in float32, their default), so that they are as
reproducible as the machine allows.

:func:`produce` writes every run into a folder and returns their tables;
``python -m tests.golden.record`` re-records ``tests/golden/data/`` (one parquet per run, and
``machine.json``: the :func:`fingerprint` of where it was recorded).
``tests/experiment/test_golden.py`` compares a fresh production with the recording: **bit for
bit on a machine with the recording's fingerprint** (CPU micro-architecture and instruction sets,
torch and its kernel level, numpy and its SIMD dispatch, the BLAS core type), and elsewhere each
value to the tolerance its own computation allows (:mod:`tests.golden.tolerance`).

Re-record only for an intended change of numbers, in its own commit, saying why.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import torch

DATA = Path(__file__).resolve().parent / "data"

#: every curvature, sharpness, landscape and mechanism measure, on the run that records them all
ALL_MEASURES = ["loss", "accuracy", "consensus_distance", "grad_norm", "comm_bytes",
                "consensus_gap", "hessian_top", "hessian_top_nodes", "hessian_trace",
                "spectral_density", "sharpness_worst", "sharpness_average", "sharpness_sam",
                "sharpness_keskar", "barrier_to_average", "landscape_1d", "landscape_2d",
                "disagreement", "disagreement_alignment", "edge_of_stability",
                "hessian_trace_nodes"]

#: small, cheap settings for the expensive measures
OPTIONS = {"hessian_top": {"k": 2}, "hessian_top_nodes": {"k": 1, "every": 3},
           "hessian_trace": {"num_matvecs": 12},
           "spectral_density": {"num_runs": 2, "lanczos_steps": 8},
           "sharpness_average": {"samples": 4}, "sharpness_worst": {"steps": 3},
           "sharpness_keskar": {"steps": 3}, "barrier_to_average": {"points": 3},
           "landscape_1d": {"points": 5}, "landscape_2d": {"points": 3},
           "disagreement": {"every": 3},
           # a fixed computation (40 steps, never converged in float32) rather than a criterion:
           # the share depends on the Ritz vectors, which a tolerance on Ritz values does not bound
           "disagreement_alignment": {"every": 3, "k": 2, "tol": 1e-10, "max_iter": 40},
           "edge_of_stability": {"every": 3, "nodes": True},
           "hessian_trace_nodes": {"every": 3, "num_matvecs": 12}}


def config(algorithm: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    """A tiny float64 run of ``algorithm``: 4 nodes, digits, an MLP of 8 hidden units."""
    import flatlab

    topo = "ring"
    for t in ("ring", "complete"):  # d2 refuses lambda_min <= -1/3
        try:
            flatlab.algorithms.make(algorithm).check_topology(flatlab.topology.make(t, 4))
            topo = t
            break
        except flatlab.errors.AlgorithmError:
            continue
    cfg: dict[str, Any] = {
        "name": name or algorithm,
        "seed": 3,
        "dtype": "float64",
        "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "batch_size": 8},
        "model": {"name": "mlp", "options": {"hidden": [8]}},
        "topology": {"name": topo, "nodes": 4},
        "algorithm": {"name": algorithm},
        "optim": {"lr": 0.1, "schedule": "cosine", "warmup": 2, "weight_decay": 1e-4},
        "train": {"steps": 6},
        "measure": {"every": 3, "train_subset": 120, "test_subset": 120,
                    "curvature_subset": 60,
                    "metrics": ["loss", "accuracy", "consensus_distance", "grad_norm",
                                "consensus_gap"]},
        "checkpoint_every": 2,
        "init": "different",
        "device": "cpu",
    }
    if algorithm == "ad-psgd":  # its own network, and late gradients (checkpointed points)
        cfg["topology"]["faults"] = {"model": "async_gossip"}
        cfg["train"]["staleness"] = {"tau": 2}
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _tables(path: Path) -> dict[str, pd.DataFrame]:
    """A run folder's metrics and extra tables, by file stem, and a summary of its final state
    (``state``: per state tensor its size, sum, sum of absolute values, sum of squares and first
    entry; the absolute sum and the size are the scales another CPU's rounding is measured on)."""
    got = {p.stem: pd.read_parquet(p) for p in sorted(path.glob("*.parquet"))}
    ck = torch.load(path / "checkpoint.pt", weights_only=True)
    rows = [{"key": k, "numel": v.numel(), "sum": float(v.double().sum()),
             "abs": float(v.double().abs().sum()), "sumsq": float((v.double() ** 2).sum()),
             "first": float(v.reshape(-1)[0]) if v.numel() else 0.0}
            for k, v in sorted(ck["state"].items()) if isinstance(v, torch.Tensor)]
    got["state"] = pd.DataFrame(rows)
    return got


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED = ("dsgdm", "ecl")


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from flatlab.experiment import load_config, run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        for algo in DISTRIBUTED:
            cfg = load_config(config(algo, f"distributed-{algo}", backend="distributed",
                                     timeout=60))
            assert run(cfg, Path(out) / cfg.name, progress=False).status == "done"
    finally:
        dist.destroy_process_group()


def produce(out: Path, *, distributed: bool = True) -> dict[str, pd.DataFrame]:
    """Run the golden set into ``out``; ``{run/table: frame}`` for every table written."""
    import torch.multiprocessing as mp

    import flatlab
    from flatlab.experiment import load_config, run
    from flatlab.experiment.sweep import load_sweep, run_sweep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    got: dict[str, pd.DataFrame] = {}
    try:
        runs = [config(a) for a in flatlab.algorithms.available()]
        runs.append(config("diffusion", "all-measures",
                           measure={"metrics": ALL_MEASURES, "options": OPTIONS,
                                    "per_node": True}))
        runs.append(config("gradient-tracking", "least-squares",
                           data={"name": "least-squares", "partition": "natural",
                                 "batch_size": 8,
                                 "options": {"dim": 5, "samples_per_node": 20}},
                           model={"name": "logistic", "options": {}},
                           measure={"metrics": ["loss", "consensus_gap", "loss_gap"],
                                    "train_subset": None, "test_subset": None}))
        for cfg in runs:
            res = run(load_config(cfg), out / cfg["name"], progress=False)
            assert res.status == "done", (cfg["name"], res)
        # stopped after the checkpoint of step 4, then resumed
        resumed = load_config(config("qg-dsgdm", "resumed"))
        assert run(resumed, out / "resumed", progress=False, stop_after=5).status == "running"
        assert run(resumed, out / "resumed", progress=False).status == "done"
        spec = {"name": "sweep", "base": config("consensus"), "out": str(out / "sweep"),
                "grid": {"optim.lr": [0.05, 0.2]}}
        run_sweep(load_sweep(spec), progress=False, verbose=False)
        for path in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "sweep"):
            got.update({f"{path.name}/{k}": v for k, v in _tables(path).items()})
        for path in sorted(p for p in (out / "sweep").iterdir() if p.is_dir()):
            got.update({f"sweep-{path.name}/{k}": v for k, v in _tables(path).items()})
    finally:
        torch.set_num_threads(threads)
    if distributed:
        dist_out = out / "distributed"
        mp.spawn(_distributed_worker, args=(2, _free_port(), str(dist_out)), nprocs=2,
                 join=True)
        for path in sorted(p for p in dist_out.iterdir() if p.is_dir()):
            got.update({f"{path.name}/{k}": v for k, v in _tables(path).items()})
    return got


#: Environment variables that choose kernels: torch's ATen level, MKL's and oneDNN's instruction
#: sets and numerical-reproducibility mode, numpy's SIMD dispatch, OpenBLAS's core type.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE",
              "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES",
              "NPY_ENABLE_CPU_FEATURES", "OPENBLAS_CORETYPE")

#: The instruction-set flags of ``/proc/cpuinfo`` that kernel dispatch reads (x86 and Arm).
_ISA = re.compile(r"^(sse4_2|avx.*|fma|f16c|amx.*|asimd.*|sve.*|bf16|i8mm|fphp)$")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if out:
                    break
                continue
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def numpy_dispatch() -> tuple[list[str], list[str]]:
    """numpy's SIMD baseline and the dispatch targets it enabled (after
    ``NPY_DISABLE_CPU_FEATURES``)."""
    try:
        from numpy._core import _multiarray_umath as um  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import _multiarray_umath as um
    return list(um.__cpu_baseline__), [k for k in um.__cpu_dispatch__
                                       if um.__cpu_features__.get(k)]


def _numpy_simd() -> str:
    baseline, enabled = numpy_dispatch()
    return " ".join(baseline + ["|"] + enabled)


def _blas() -> str:
    """numpy's and scipy's BLAS and the core type it dispatched to (threadpoolctl)."""
    try:
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS, so the answer is whole)
        import threadpoolctl
    except ImportError:  # pragma: no cover - scikit-learn brings both
        return "unknown"
    info = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(sorted(set(info))) or "none"


def fingerprint() -> dict[str, str]:
    """What decides bit equality of the golden runs on this machine.

    Two machines with the same fingerprint run the same instructions in the same order, so the
    golden runs reproduce bit for bit; any difference (another vector width, another BLAS
    kernel) moves the last bits, and the comparison falls back to the tolerances of
    :mod:`tests.golden.tolerance`. The parts:

    - ``cpu``: vendor, family, model and stepping (MKL and OpenBLAS choose kernels by
      micro-architecture, MKL also by vendor), and the instruction-set flags; not the model-name
      string, which a virtual machine may report the same for different CPUs;
    - ``torch`` and its ATen kernel level (``torch.backends.cpu.get_cpu_capability()``: the
      vector width of its elementwise and reduction kernels, and of the float32 ``uniform_``
      that draws every model's start);
    - ``numpy`` and its enabled SIMD dispatch targets, and the BLAS core type it loaded;
    - the environment variables that choose kernels (:data:`KERNEL_ENV`) where set, and one
      thread.
    """
    import numpy

    info = _cpuinfo()
    flags = info.get("flags") or info.get("Features") or ""
    cpu = " ".join(info.get(k, "?") for k in ("vendor_id", "cpu family", "model", "stepping"))
    if not info:
        cpu = platform.processor() or "?"
    env = " ".join(f"{k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k))
    return {"machine": platform.machine(), "cpu": cpu,
            "isa": " ".join(sorted(f for f in flags.split() if _ISA.match(f))),
            "torch": torch.__version__,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": numpy.__version__, "numpy_simd": _numpy_simd(), "blas": _blas(),
            "kernel_env": env, "threads": "1"}


def key_file(key: str) -> str:
    """The file name of a table key (``run/table`` -> ``run__table.parquet``)."""
    return key.replace("/", "__") + ".parquet"
