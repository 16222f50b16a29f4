"""The runner: build a run from its config, train with a progress bar, measure, checkpoint.

A run directory (DESIGN.md §7)::

    config.yaml      the resolved config
    status.json      running | done | diverged | failed, with step, timings, versions, device
    metrics.parquet  long form: step, epoch, metric, scope, value
    checkpoint.pt    everything needed to resume (and the final state, for later measurement)

Every file is written atomically (temporary file, then ``os.replace``), and the checkpoint also
holds the metric rows measured so far, so a run killed at any moment resumes from its last
checkpoint and ends with exactly the metrics of an uninterrupted run (on the CPU; the sampler is a
pure function of the step, the learning rate too, and the torch RNG state is saved).

Metric scopes: ``avg`` (the averaged model ``x̄``), ``mean`` (mean over the node models),
``network`` (a quantity of the whole network) and ``"0" … "n-1"`` (one node).

Backends. With ``backend: simulated`` one process holds all ``n`` nodes and a
:class:`~flatlab.comm.SimulatedMixer` gossips. With ``backend: distributed`` the run is started by
``torchrun --nproc_per_node=K``; rank ``r`` holds the nodes ``r n/K … (r+1) n/K − 1`` (its rows
of the node stack, its minibatches, its initial models) and a
:class:`~flatlab.comm.DistributedMixer` gossips by point-to-point messages. The loop is the same
code: the per-step loss is all-reduced, the averaged model ``x̄`` is all-reduced and evaluated once
(on rank 0), each rank evaluates its own nodes and the per-node metrics are gathered, and
checkpoints hold the gathered state of all ``n`` nodes, so a run directory looks the same either
way and can be resumed under either backend. Rank 0 writes the directory. A rank that dies or
hangs makes the others fail within ``timeout`` seconds with one line naming it
(:class:`~flatlab.comm.process.Watchdog`); the run is then marked ``failed``.
"""

from __future__ import annotations

import importlib
import json
import math
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from flatlab import algorithms as _algorithms
from flatlab import data as _data
from flatlab import models as _models
from flatlab.comm import DistributedMixer, SimulatedMixer
from flatlab.comm.process import PeerLost, Processes, Watchdog, join, leave
from flatlab.engine import GradientOracle, NodeStack
from flatlab.errors import ConfigError, FlatlabError, RankLostError, RunDirError
from flatlab.experiment import rundir
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.io import atomic_write, write_text
from flatlab.experiment.rundir import METRIC_COLUMNS, STATUSES, average_model, final_models
from flatlab.experiment.schedules import lr_at
from flatlab.measures import named
from flatlab.topology import make as make_topology

__all__ = ["Run", "RunResult", "build", "run", "average_model", "final_models", "STATUSES",
           "METRIC_COLUMNS"]



@dataclass
class Run:
    """Everything a run is built from (what :func:`build` returns).

    In a distributed run ``stack``, ``sampler`` and ``mixer`` hold this rank's nodes
    (``rows``); ``n`` is always the number of nodes of the whole network.
    """

    cfg: RunConfig
    dataset: Any
    partition: Any
    sampler: Any
    stack: NodeStack
    oracle: GradientOracle
    mixer: SimulatedMixer | DistributedMixer
    algorithm: _algorithms.Algorithm
    steps_per_epoch: int
    total_steps: int
    train_eval: tuple[torch.Tensor, torch.Tensor]
    test_eval: tuple[torch.Tensor, torch.Tensor]
    n: int = 0
    rows: slice = field(default_factory=lambda: slice(0, 0))
    curvature_eval: tuple[torch.Tensor, torch.Tensor] | None = None

    def lr(self, step: int) -> float:
        """The scheduled step size at ``step``."""
        return lr_at(step, self.total_steps, self.cfg.optim)


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run`: the directory, the final status, the step reached.

    ``main`` is whether this process wrote the directory (rank 0 of a distributed run).
    """

    path: Path
    status: str
    step: int
    message: str = ""
    main: bool = True


def build(cfg: RunConfig, procs: Processes | None = None) -> Run:
    """Build data, partition, sampler, model stack, oracle, mixer and algorithm from ``cfg``.

    Args:
        cfg: The run's config.
        procs: This process's place in a distributed run (from
            :func:`flatlab.comm.process.join`); ``None`` builds the simulated run of all nodes.

    Raises:
        ConfigError: The number of processes does not divide the number of nodes.
    """
    n = cfg.topology.nodes
    world = 1 if procs is None else procs.world_size
    if n % world:
        raise ConfigError(f"topology.nodes = {n} cannot be split over {world} processes; "
                          f"accepted: a number of processes that divides {n}")
    k = n // world
    rows = slice(0, n) if procs is None else slice(procs.rank * k, (procs.rank + 1) * k)
    dataset = _data.load(cfg.data.name, root=cfg.data.root, seed=cfg.data.seed,
                         nodes=n, **cfg.data.options)
    if cfg.data.holdout:
        dataset = _data.holdout(dataset, cfg.data.holdout, seed=cfg.data.seed)
    part = _data.partition(dataset, n, cfg.data.partition, alpha=cfg.data.alpha,
                           classes_per_node=cfg.data.classes_per_node,
                           shards_per_node=cfg.data.shards_per_node, seed=cfg.data.seed)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    device = cfg.device if procs is None else procs.device
    stack_kw: dict[str, Any] = dict(device=device, dtype=dtype,
                                    loss="cross_entropy" if dataset.task == "classification"
                                    else "mse")

    def model(seed: int) -> torch.nn.Module:
        return _models.make(cfg.model.name, input_shape=tuple(dataset.input_shape),
                            num_classes=dataset.num_classes, seed=seed, **cfg.model.options)

    # node i starts from model(seed + i) with init=different, wherever it lives
    stack = NodeStack(model(cfg.seed), k, init=cfg.init, reinit=model, seed=cfg.seed + rows.start,
                      **stack_kw)
    if cfg.init_from is not None:
        try:
            stack.start_from(*average_model(cfg.init_from))
        except (ConfigError, RunDirError) as e:
            raise ConfigError(f"init_from: {e}") from None
        except FlatlabError as e:
            raise ConfigError(f"init_from {cfg.init_from}: {e}; accepted: a run of the same "
                              f"model ({cfg.model.name}) on the same data set") from None
    sampler = _data.NodeSampler(dataset.x_train, dataset.y_train, part, cfg.data.batch_size,
                                seed=cfg.seed, device=stack.device, dtype=dtype,
                                rows=None if procs is None else rows)
    spe = sampler.steps_per_epoch
    total = cfg.train.steps if cfg.train.steps is not None else max(1, math.ceil(
        cfg.train.epochs * spe))
    topo = make_topology(cfg.topology.name, n, weights=cfg.topology.weights,
                         lazy=cfg.topology.lazy, **cfg.topology.params)
    if procs is None:
        mixer: SimulatedMixer | DistributedMixer = SimulatedMixer(
            topo, device=stack.device, dtype=dtype, method=cfg.mix_method)
    else:
        mixer = DistributedMixer(topo, device=stack.device, dtype=dtype)
    method = cfg.oracle
    if cfg.compile and method == "auto":
        method = "vmap"
    oracle = GradientOracle(stack, weight_decay=cfg.optim.weight_decay, method=method,
                            compile=cfg.compile)
    algo = _algorithms.make(cfg.algorithm.name, **cfg.algorithm.params)
    # fixed evaluation subsets: the nodes' training data (the global objective) and the test set
    rng = np.random.default_rng(cfg.data.seed + 7919)
    train_idx = np.asarray(part.indices).reshape(-1)
    if cfg.measure.train_subset is not None and cfg.measure.train_subset < train_idx.size:
        train_idx = np.sort(rng.choice(train_idx, cfg.measure.train_subset, replace=False))
    test_idx = np.arange(dataset.x_test.shape[0])
    if cfg.measure.test_subset is not None and cfg.measure.test_subset < test_idx.size:
        test_idx = np.sort(rng.choice(test_idx, cfg.measure.test_subset, replace=False))

    def take(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return x[torch.as_tensor(idx, dtype=torch.int64)].to(stack.device)

    train_eval = (take(dataset.x_train, train_idx).to(dtype), take(dataset.y_train, train_idx))
    test_eval = (take(dataset.x_test, test_idx).to(dtype), take(dataset.y_test, test_idx))
    if dataset.task != "classification":
        train_eval = (train_eval[0], train_eval[1].to(dtype))
        test_eval = (test_eval[0], test_eval[1].to(dtype))
    # curvature subset: a fixed shuffle of the training evaluation set, the first m samples
    perm = torch.randperm(train_eval[0].shape[0],
                          generator=torch.Generator().manual_seed(cfg.data.seed + 104729))
    pick = perm[:cfg.measure.curvature_subset].to(stack.device)
    curvature_eval = (train_eval[0][pick], train_eval[1][pick])
    if "loss_gap" in cfg.measure.metrics and (
            dataset.optimum is None or "optimum_loss" not in (dataset.info or {})):
        raise ConfigError(f"measure loss_gap needs a task with a known optimum (data.name "
                          f"least-squares or logistic); {cfg.data.name!r} has none")
    return Run(cfg, dataset, part, sampler, stack, oracle, mixer, algo, spe, total, train_eval,
               test_eval, n, rows, curvature_eval)


# ---------------------------------------------------------------------- measurement
def scheduled(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The run's named measures with their resolved settings (what ``measures.json`` holds)."""
    return {name: named.resolve(name, cfg.measure.options.get(name))
            for name in ["comm_bytes", *(m for m in cfg.measure.metrics if m != "comm_bytes")]}


def measure(run: Run, X: torch.Tensor, step: int, *,  # noqa: N803
            alone: Callable[[str, Callable[[], Any]], Any] | None = None,
            tables: dict[str, list[dict[str, Any]]] | None = None
            ) -> list[tuple[str, str, float]]:
    """The scheduled named measures at iterate ``X``: ``(metric, scope, value)`` rows.

    ``X`` holds this process's nodes. Every process computes the node parts of the measures
    (communicating); rank 0 then computes the parts on the averaged model ``x̄`` through
    ``alone`` (the others wait watchfully, not in a collective). The rows are complete on rank 0
    only. Extra tables (spectral densities, landscapes) are appended to ``tables`` with the step.
    """
    cfg, mixer, stack = run.cfg, run.mixer, run.stack
    one, main = mixer.world_size == 1, mixer.rank == 0
    due = {name: s for name, s in scheduled(cfg).items()
           if step == 0 or step == run.total_steps or step % (s["every"] or 1) == 0}
    xbar = X.mean(0) if one else mixer.all_reduce(X.sum(0)) / run.n
    bufs = {k: mixer.gather(v) for k, v in stack.buffers.items()}
    ctx = named.MeasureContext(
        stack=stack, X=X, xbar=xbar, buffers_avg=stack.average_buffers(bufs),
        train=run.train_eval, test=run.test_eval,
        curvature=run.curvature_eval or run.train_eval, dataset=run.dataset, n=run.n,
        rows=run.rows, step=step, mixer=mixer,
        eval_batch=cfg.measure.eval_batch, per_node=cfg.measure.per_node,
        curvature_dtype=getattr(torch, cfg.measure.curvature_dtype),
        comm_bytes=float(mixer.gathered_stats().total_bytes()))
    rows: list[tuple[str, str, float]] = [("lr", "network", run.lr(step))]
    for name, s in due.items():
        part = named.get(name).nodes
        if part is not None:
            rows += part(ctx, s)

    def on_average() -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        for name, s in due.items():
            part = named.get(name).average
            if part is not None:
                out += part(ctx, s)
        return out

    if any(named.get(name).average is not None for name in due):
        rows += (alone or (lambda label, fn: fn()))(
            f"measuring the averaged model at step {step}", on_average) or []
    if main and tables is not None:
        for t, new in ctx.tables.items():
            tables.setdefault(t, []).extend({"step": step, **r} for r in new)
    return rows if main else []


def _agree(mixer, ok: bool) -> bool:
    """``ok`` on every process (one all-reduce in a distributed run)."""
    if mixer.world_size == 1:
        return ok
    dev = mixer.device
    return float(mixer.all_reduce(torch.tensor([0.0 if ok else 1.0], device=dev))) == 0.0


# ---------------------------------------------------------------------- files
def _write_metrics(path: Path, rows: list[tuple]) -> None:
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    df = df.astype({"step": "int64", "epoch": "float64", "metric": "string", "scope": "string",
                    "value": "float64"})
    atomic_write(path, lambda p: df.to_parquet(p, index=False))


def _versions() -> dict[str, str]:
    import flatlab

    return {"flatlab": flatlab.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Terminated(BaseException):
    """SIGTERM (torchrun stops the other workers when one fails)."""


def _rows_of(v: Any, rows: slice, n: int) -> Any:
    """This process's rows of a checkpointed per-node tensor of all ``n`` nodes."""
    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
        return v[rows]
    return v


def _restore(ck: dict[str, Any], out: Path, built: Run, state: Any) -> Any:
    """The state, buffers, communication counts and random stream of a checkpoint.

    The checkpoint is first checked against the run (:func:`rundir.check_fits`): a checkpoint of
    another algorithm, size or model is refused in one line, before anything is written.
    """
    n, own, stack, mixer = built.n, built.rows, built.stack, built.mixer
    path = out / "checkpoint.pt"
    rundir.check_fits(ck, path, state=_algorithms.state_dict(state), buffers=stack.buffers, n=n)
    try:
        saved = {k: _rows_of(v, own, n) for k, v in ck["state"].items()}
        state = _algorithms.load_state(saved, state, device=stack.device)
        stack.load_buffers({k: _rows_of(v, own, n) for k, v in ck["buffers"].items()})
        mixer.stats.load_state_dict({k: _rows_of(v, own, n) for k, v in ck["mixer"].items()})
        rng = ck.get("rng")
        rng = rng if isinstance(rng, list) else [(rng, ck.get("cuda_rng"))]
        if len(rng) == mixer.world_size:  # the same processes: each continues its own stream
            mine = rng[mixer.rank]
            torch.set_rng_state(mine[0])
            if mine[1] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine[1])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, FlatlabError) as e:
        first = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
        raise RunDirError(f"checkpoint {path} cannot be restored ({first}); "
                          f"{rundir.RESTART_HINT}") from None
    return state


# ---------------------------------------------------------------------- the loop
def run(config: RunConfig | dict | str | Path, out: str | Path, *, progress: bool = True,
        resume: bool = True, stop_after: int | None = None) -> RunResult:
    """Train one run into the directory ``out``, resuming from its checkpoint when there is one.

    With ``backend: distributed`` call this in every process of a ``torchrun`` launch (the
    process group is started from its environment unless it already is); every rank returns
    the same :class:`RunResult`.

    Args:
        config: A :class:`RunConfig`, a mapping or a YAML path (validated).
        out: The run directory (created).
        progress: Show a tqdm progress bar (rank 0 only).
        resume: Continue from ``out/checkpoint.pt`` when the run there is unfinished; a finished
            run (done or diverged) is returned as it is. With ``False`` the run starts over.
        stop_after: Stop (as if killed, without a final checkpoint) once this many steps are done;
            for tests of resumption.

    Returns:
        The :class:`RunResult`. A diverging run ends with status ``diverged`` (not an error).

    Raises:
        RunDirError: The directory holds a run with a different config, a damaged or foreign
            status, config or checkpoint (read safely: ``weights_only=True``), or a run that is
            alive in another process; nothing is written then.
        RankLostError: A distributed run lost a process (the message names it; the run is
            marked ``failed``).
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    out = Path(out)
    cfg_dict = to_dict(cfg)
    procs = join(cfg.device, cfg.timeout) if cfg.backend == "distributed" else None
    failed = False
    try:
        return _run(cfg, cfg_dict, out, procs, progress=progress, resume=resume,
                    stop_after=stop_after)
    except BaseException:
        failed = True
        raise
    finally:
        if procs is not None:
            leave(procs, failed=failed)


def _run(cfg: RunConfig, cfg_dict: dict[str, Any], out: Path, procs: Processes | None, *,
         progress: bool, resume: bool, stop_after: int | None) -> RunResult:
    main = procs is None or procs.rank == 0
    if procs is None:
        decision = rundir.decide(out, cfg_dict, resume)
    elif main:  # every rank must hear the decision, even when reading the directory fails
        try:
            decision = rundir.decide(out, cfg_dict, resume)
        except FlatlabError as e:  # reported on every rank below
            decision = "error", str(e)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            decision = "error", f"cannot resume from {out}: {type(e).__name__}: {e}"
    else:
        decision = None
    if procs is not None:
        import torch.distributed as dist

        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    kind, payload = decision
    if kind == "error":
        raise RunDirError(payload)
    if kind == "finished":
        return RunResult(out, payload["status"], payload["step"], payload.get("message", ""),
                         main)
    ck = payload
    watchdog, box = None, []
    if procs is not None:  # heartbeats from here on, so that a slow setup is not a hang
        watchdog = Watchdog(procs.rank, procs.world_size,
                            lambda: box[0].calls if box else 0, timeout=cfg.timeout,
                            run_id=_run_id(procs.rank), solo_timeout=cfg.measure_timeout)
    try:
        built = build(cfg, procs)
        mixer, stack = built.mixer, built.stack
        box.append(mixer)
        world, rank = mixer.world_size, mixer.rank
        torch.manual_seed(cfg.seed + rank)
        state = built.algorithm.init(stack.initial_params(), built.oracle, mixer)
        if ck is not None:  # everything in the checkpoint is checked before anything is written
            state = _restore(ck, out, built, state)
    except BaseException:
        if watchdog is not None:
            watchdog.close()
        raise
    term = threading.Event()  # set by SIGTERM in a distributed run
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ck is None:
            rundir.clear_results(out)
        write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
        write_text(out / "measures.json", json.dumps({
            "measures": scheduled(cfg), "every": cfg.measure.every,
            "train_eval_size": int(built.train_eval[0].shape[0]),
            "test_eval_size": int(built.test_eval[0].shape[0]),
            "curvature_eval_size": int(built.curvature_eval[0].shape[0]),
            "curvature_dtype": cfg.measure.curvature_dtype, "eval_mode": True}, indent=1) + "\n")
    rows: list[tuple] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    start, elapsed, loss_acc = 0, 0.0, [0.0, 0]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if ck is not None:
        rows, start, elapsed = list(ck["metrics"]), int(ck["step"]), float(ck["elapsed"])
        tables = {k: list(v) for k, v in ck.get("tables", {}).items()}
        loss_acc, started = list(ck["loss_acc"]), ck.get("started", started)
    total, spe, every = built.total_steps, built.steps_per_epoch, cfg.measure.every
    device = _device_name(stack.device) + (f", {world} processes ({procs.backend})"
                                           if procs is not None else "")
    base_status = {"name": cfg.name, "total_steps": total, "steps_per_epoch": spe,
                   "started": started, "device": device, "backend": cfg.backend,
                   "processes": world, "versions": _versions(), "nodes": built.n,
                   "parameters": stack.P,
                   "train_eval_size": int(built.train_eval[0].shape[0]),
                   "test_eval_size": int(built.test_eval[0].shape[0]),
                   "curvature_eval_size": int(built.curvature_eval[0].shape[0])}

    status = rundir.StatusWriter(out, base_status, spe)

    def write_status(st: str, step: int, message: str = "") -> None:
        status.write(st, step, elapsed, message)

    def gathered(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        return mixer.gather(v.to(stack.device)).cpu() if world > 1 else v.detach().cpu().clone()

    def checkpoint(step: int) -> None:
        """Save everything needed to resume (every process takes part; rank 0 writes)."""
        rng = (torch.get_rng_state(),
               torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        rngs = mixer.gather_object(rng)
        ck = {"step": step,
              "state": {k: gathered(v) for k, v in _algorithms.state_dict(state).items()},
              "buffers": {k: gathered(v) for k, v in stack.buffers.items()},
              "mixer": mixer.gathered_stats().state_dict(), "rng": rngs,
              "processes": world, "metrics": rows, "tables": tables, "elapsed": elapsed,
              "loss_acc": loss_acc,
              "started": started, "config": cfg_dict}
        def write() -> None:
            rundir.save_checkpoint(out, ck)
            _write_metrics(out / "metrics.parquet", rows)
            for t, trows in tables.items():
                atomic_write(out / f"{t}.parquet",
                              lambda p, r=trows: pd.DataFrame(r).to_parquet(p, index=False))

        alone(f"writing the checkpoint of step {step}", write)

    def record(step: int) -> bool:
        """Measure at ``step``; False (on every process) when anything is not finite."""
        if not _agree(mixer, bool(torch.isfinite(state.x).all())):
            return False
        new = measure(built, state.x, step, alone=alone, tables=tables)
        if step > 0 and loss_acc[1]:
            new.append(("batch_loss", "mean", loss_acc[0] / loss_acc[1]))
            loss_acc[0], loss_acc[1] = 0.0, 0
        if main:
            rows.extend((step, step / spe, m, s, float(v)) for m, s, v in new)
        return _agree(mixer, all(math.isfinite(v) for _, _, v in new))

    def diverged(step: int, msg: str) -> RunResult:
        """Record divergence: a ``diverged`` row, the checkpoint, the status."""
        nonlocal elapsed
        if main:
            rows.append((step, step / spe, "diverged", "network", 1.0))
        elapsed += time.perf_counter() - t0
        checkpoint(step)
        if main:
            write_status("diverged", step, msg)
        return RunResult(out, "diverged", step, msg, main)

    def alone(label: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 while the other processes wait watchfully (not in a collective)."""
        if watchdog is None:
            return fn()
        return watchdog.alone(label, fn, stop=term.is_set)

    if main:
        write_status("running", start)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=cfg.name, disable=not (progress and main),
               dynamic_ncols=True, leave=False)
    step, t0 = start, time.perf_counter()
    old_term = _catch_sigterm(term) if procs is not None else None
    try:
        if watchdog is not None:
            # torch.func imports torch._dynamo on first use (1-3 s): pay it here, before the
            # ranks line up, not inside the first step while the peers wait in a collective
            importlib.import_module("torch._dynamo")

            watchdog.barrier("setting up", stop=term.is_set)
        if start == 0 and not rows and not record(0):
            return diverged(0, "non-finite parameters or metrics at the initial point")
        while step < total:
            if term.is_set():
                raise _Terminated("terminated (SIGTERM)")
            state = built.algorithm.step(state, built.sampler.batch(step), built.oracle,
                                         mixer, built.lr(step))
            step += 1
            if state.loss is not None:  # one scalar per step; x itself is checked when measured
                if world == 1:
                    bl = float(state.loss.mean())
                else:
                    bl = float(mixer.all_reduce(state.loss.sum().reshape(1))) / built.n
                finite = math.isfinite(bl)
                loss_acc[0] += bl
                loss_acc[1] += 1
            else:
                finite = _agree(mixer, bool(torch.isfinite(state.x).all()))
            bar.update(1)
            if not finite:
                return diverged(step, f"non-finite loss at step {step}")
            if step % every == 0 or step == total:
                if not record(step):
                    return diverged(step, f"non-finite parameters or metrics at step {step}")
                if state.loss is not None and main:
                    bar.set_postfix(loss=f"{rows[-1][4]:.4g}", refresh=False)
            if stop_after is not None and step >= stop_after and step < total:
                if main:  # as after a kill: no process is on this directory any more
                    status.release()
                return RunResult(out, "running", step, "stopped (stop_after)", main)
            if step % cfg.checkpoint_every == 0 or step == total:
                now = time.perf_counter()
                elapsed, t0 = elapsed + now - t0, now
                checkpoint(step)
                if step < total and main:
                    write_status("running", step)
        if main:
            write_status("done", step)
        return RunResult(out, "done", step, main=main)
    except BaseException as e:
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else \
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        lost = None
        if isinstance(e, PeerLost):
            msg = lost = e.verdict
        elif watchdog is not None:
            if mixer.waiting or isinstance(e, _Terminated):
                msg = lost = watchdog.verdict(e, terminated=isinstance(e, _Terminated))
            elif not isinstance(e, KeyboardInterrupt):
                watchdog.blame_self(msg)
        if main or (out / "status.json").is_file():  # rank 0 may be the one that was lost
            write_status("failed", step, msg)
        if watchdog is not None:
            watchdog.close()
            watchdog.mark_exited()
        if lost is not None:
            raise RankLostError(f"{lost}; the run in {out} is marked failed") from None
        raise
    finally:
        bar.close()
        status.stop()
        if watchdog is not None:
            watchdog.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run_id(rank: int) -> int:
    """How many runs this process has started in its group.

    The same on every rank (all ranks run the same sequence), so one run's store keys never
    meet another's.
    """
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    return int(store.add(f"flatlab/runs/{rank}", 1))


def _catch_sigterm(flag: threading.Event):
    """Let SIGTERM set ``flag`` (checked at every step) instead of killing the process.

    torchrun stops the other workers with SIGTERM when one fails; they must still record the
    verdict and mark the run failed. Returns the previous handler (``None`` off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
