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
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from flatlab import algorithms as _algorithms
from flatlab import data as _data
from flatlab import models as _models
from flatlab.comm import SimulatedMixer
from flatlab.engine import GradientOracle, NodeStack, evaluate, full_gradient
from flatlab.errors import ConfigError
from flatlab.experiment.config import RunConfig, load_config, to_dict
from flatlab.experiment.schedules import lr_at
from flatlab.topology import make as make_topology

__all__ = ["Run", "RunResult", "build", "run", "STATUSES", "METRIC_COLUMNS"]

STATUSES = ("running", "done", "diverged", "failed")
METRIC_COLUMNS = ("step", "epoch", "metric", "scope", "value")


@dataclass
class Run:
    """Everything a run is built from (what :func:`build` returns)."""

    cfg: RunConfig
    dataset: Any
    partition: Any
    sampler: Any
    stack: NodeStack
    oracle: GradientOracle
    mixer: SimulatedMixer
    algorithm: _algorithms.Algorithm
    steps_per_epoch: int
    total_steps: int
    train_eval: tuple[torch.Tensor, torch.Tensor]
    test_eval: tuple[torch.Tensor, torch.Tensor]

    def lr(self, step: int) -> float:
        """The scheduled step size at ``step``."""
        return lr_at(step, self.total_steps, self.cfg.optim)


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run`: the directory, the final status, the step reached."""

    path: Path
    status: str
    step: int
    message: str = ""


def build(cfg: RunConfig) -> Run:
    """Build data, partition, sampler, model stack, oracle, mixer and algorithm from ``cfg``."""
    dataset = _data.load(cfg.data.name, root=cfg.data.root, seed=cfg.data.seed,
                         nodes=cfg.topology.nodes, **cfg.data.options)
    n = cfg.topology.nodes
    part = _data.partition(dataset, n, cfg.data.partition, alpha=cfg.data.alpha,
                           classes_per_node=cfg.data.classes_per_node,
                           shards_per_node=cfg.data.shards_per_node, seed=cfg.data.seed)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    stack_kw: dict[str, Any] = dict(device=cfg.device, dtype=dtype,
                                    loss="cross_entropy" if dataset.task == "classification"
                                    else "mse")

    def model(seed: int) -> torch.nn.Module:
        return _models.make(cfg.model.name, input_shape=tuple(dataset.input_shape),
                            num_classes=dataset.num_classes, seed=seed, **cfg.model.options)

    stack = NodeStack(model(cfg.seed), n, init=cfg.init, reinit=model, seed=cfg.seed, **stack_kw)
    sampler = _data.NodeSampler(dataset.x_train, dataset.y_train, part, cfg.data.batch_size,
                                seed=cfg.seed, device=stack.device, dtype=dtype)
    spe = sampler.steps_per_epoch
    total = cfg.train.steps if cfg.train.steps is not None else max(1, math.ceil(
        cfg.train.epochs * spe))
    topo = make_topology(cfg.topology.name, n, weights=cfg.topology.weights,
                         lazy=cfg.topology.lazy, **cfg.topology.params)
    mixer = SimulatedMixer(topo, device=stack.device, dtype=dtype, method=cfg.mix_method)
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
    return Run(cfg, dataset, part, sampler, stack, oracle, mixer, algo, spe, total, train_eval,
               test_eval)


# ---------------------------------------------------------------------- measurement
def measure(run: Run, X: torch.Tensor, step: int) -> list[tuple[str, str, float]]:  # noqa: N803
    """The scheduled basic measures at iterate ``X``: ``(metric, scope, value)`` rows."""
    cfg = run.cfg
    wanted = set(cfg.measure.metrics)
    rows: list[tuple[str, str, float]] = [("lr", "network", run.lr(step)),
                                          ("comm_bytes", "network",
                                           float(run.mixer.stats.total_bytes()))]
    if wanted & {"loss", "accuracy"}:
        for split, (x, y) in (("train", run.train_eval), ("test", run.test_eval)):
            ev = evaluate(run.stack, X, x, y, batch_size=cfg.measure.eval_batch)
            if "loss" in wanted:
                rows += [(f"{split}_loss", "avg", ev.loss_avg),
                         (f"{split}_loss", "mean", float(ev.loss_nodes.mean()))]
                if cfg.measure.per_node:
                    rows += [(f"{split}_loss", str(i), float(v))
                             for i, v in enumerate(ev.loss_nodes)]
            if "accuracy" in wanted and ev.accuracy_avg is not None:
                rows += [(f"{split}_accuracy", "avg", ev.accuracy_avg),
                         (f"{split}_accuracy", "mean", float(ev.accuracy_nodes.mean()))]
                if cfg.measure.per_node:
                    rows += [(f"{split}_accuracy", str(i), float(v))
                             for i, v in enumerate(ev.accuracy_nodes)]
    if "consensus_distance" in wanted:
        X64 = X.double()  # noqa: N806 - accumulate in float64
        xbar = X64.mean(0)
        xi2 = float((X64 - xbar).pow(2).sum() / X.shape[0])
        rows += [("consensus_distance", "network", xi2),
                 ("consensus_distance_rel", "network", xi2 / max(float(xbar.pow(2).sum()), 1e-300))]
    if "grad_norm" in wanted:
        g = full_gradient(run.stack, X.mean(0), *run.train_eval,
                          batch_size=cfg.measure.eval_batch)
        rows.append(("grad_norm", "avg", float(g.norm())))
    return rows


# ---------------------------------------------------------------------- files
def _atomic_write(path: Path, writer) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer(tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda p: p.write_text(text))


def _write_metrics(path: Path, rows: list[tuple]) -> None:
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    df = df.astype({"step": "int64", "epoch": "float64", "metric": "string", "scope": "string",
                    "value": "float64"})
    _atomic_write(path, lambda p: df.to_parquet(p, index=False))


def _versions() -> dict[str, str]:
    import flatlab

    return {"flatlab": flatlab.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The ``status.json`` of a run directory, or ``None`` when there is none."""
    p = Path(path) / "status.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())


# ---------------------------------------------------------------------- the loop
def run(config: RunConfig | dict | str | Path, out: str | Path, *, progress: bool = True,
        resume: bool = True, stop_after: int | None = None) -> RunResult:
    """Train one run into the directory ``out``, resuming from its checkpoint when there is one.

    Args:
        config: A :class:`RunConfig`, a mapping or a YAML path (validated).
        out: The run directory (created).
        progress: Show a tqdm progress bar.
        resume: Continue from ``out/checkpoint.pt`` when the run there is unfinished; a finished
            run (done or diverged) is returned as it is. With ``False`` the run starts over.
        stop_after: Stop (as if killed, without a final checkpoint) once this many steps are done;
            for tests of resumption.

    Returns:
        The :class:`RunResult`. A diverging run ends with status ``diverged`` (not an error).

    Raises:
        ConfigError: The directory holds a run with a different config.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    out = Path(out)
    cfg_dict = to_dict(cfg)
    status = read_status(out)
    ckpt_path = out / "checkpoint.pt"
    if status is not None and resume:
        old = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() \
            else None
        if old is not None and old != cfg_dict:
            raise ConfigError(f"run directory {out} holds a run with a different config; "
                              "choose another output directory or delete it")
        if status["status"] in ("done", "diverged"):
            return RunResult(out, status["status"], status["step"], status.get("message", ""))
    built = build(cfg)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    torch.manual_seed(cfg.seed)
    state = built.algorithm.init(built.stack.initial_params(), built.oracle, built.mixer)
    rows: list[tuple] = []
    start, elapsed, loss_acc = 0, 0.0, [0.0, 0]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if resume and status is not None and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        state = _algorithms.load_state(ck["state"], state, device=built.stack.device)
        built.stack.load_buffers(ck["buffers"])
        built.mixer.stats.load_state_dict(ck["mixer"])
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        rows, start, elapsed = list(ck["metrics"]), int(ck["step"]), float(ck["elapsed"])
        loss_acc, started = list(ck["loss_acc"]), ck.get("started", started)
    total, spe, every = built.total_steps, built.steps_per_epoch, cfg.measure.every
    base_status = {"name": cfg.name, "total_steps": total, "steps_per_epoch": spe,
                   "started": started, "device": _device_name(built.stack.device),
                   "versions": _versions(), "nodes": built.stack.n, "parameters": built.stack.P,
                   "train_eval_size": int(built.train_eval[0].shape[0]),
                   "test_eval_size": int(built.test_eval[0].shape[0])}

    def write_status(st: str, step: int, message: str = "") -> None:
        d = dict(base_status, status=st, step=step, epoch=step / spe,
                 updated=time.strftime("%Y-%m-%dT%H:%M:%S"), elapsed_s=round(elapsed, 3),
                 message=message)
        _write_text(out / "status.json", json.dumps(d, indent=1) + "\n")

    def checkpoint(step: int) -> None:
        ck = {"step": step, "state": _algorithms.state_dict(state),
              "buffers": {k: v.cpu() for k, v in built.stack.buffers_state().items()},
              "mixer": built.mixer.stats.state_dict(), "rng": torch.get_rng_state(),
              "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
              "metrics": rows, "elapsed": elapsed, "loss_acc": loss_acc, "started": started,
              "config": cfg_dict}
        _atomic_write(ckpt_path, lambda p: torch.save(ck, p))
        _write_metrics(out / "metrics.parquet", rows)

    def record(step: int) -> bool:
        """Measure at ``step``; False when a measured value or a parameter is not finite."""
        if not bool(torch.isfinite(state.x).all()):
            return False
        new = measure(built, state.x, step)
        if step > 0 and loss_acc[1]:
            new.append(("batch_loss", "mean", loss_acc[0] / loss_acc[1]))
            loss_acc[0], loss_acc[1] = 0.0, 0
        rows.extend((step, step / spe, m, s, float(v)) for m, s, v in new)
        return all(math.isfinite(v) for _, _, v in new)

    def diverged(step: int, msg: str) -> RunResult:
        """Record divergence: a ``diverged`` row, the checkpoint, the status."""
        nonlocal elapsed
        rows.append((step, step / spe, "diverged", "network", 1.0))
        elapsed += time.perf_counter() - t0
        checkpoint(step)
        write_status("diverged", step, msg)
        return RunResult(out, "diverged", step, msg)

    write_status("running", start)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=cfg.name, disable=not progress,
               dynamic_ncols=True, leave=False)
    step, t0 = start, time.perf_counter()
    try:
        if start == 0 and not rows and not record(0):
            return diverged(0, "non-finite parameters or metrics at the initial point")
        while step < total:
            state = built.algorithm.step(state, built.sampler.batch(step), built.oracle,
                                         built.mixer, built.lr(step))
            step += 1
            if state.loss is not None:  # one scalar per step; x itself is checked when measured
                bl = float(state.loss.mean())
                finite = math.isfinite(bl)
                loss_acc[0] += bl
                loss_acc[1] += 1
            else:
                finite = bool(torch.isfinite(state.x).all())
            bar.update(1)
            if not finite:
                return diverged(step, f"non-finite loss at step {step}")
            if step % every == 0 or step == total:
                if not record(step):
                    return diverged(step, f"non-finite parameters or metrics at step {step}")
                if state.loss is not None:
                    bar.set_postfix(loss=f"{rows[-1][4]:.4g}", refresh=False)
            if stop_after is not None and step >= stop_after and step < total:
                return RunResult(out, "running", step, "stopped (stop_after)")
            if step % cfg.checkpoint_every == 0 or step == total:
                now = time.perf_counter()
                elapsed, t0 = elapsed + now - t0, now
                checkpoint(step)
                if step < total:
                    write_status("running", step)
        write_status("done", step)
        return RunResult(out, "done", step)
    except BaseException as e:
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else \
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        write_status("failed", step, msg)
        raise
    finally:
        bar.close()
