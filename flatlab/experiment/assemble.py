"""Building a run from its config: data, partition, sampler, node stack, oracle, mixer, algorithm.

:func:`build` is the one place where a :class:`~flatlab.experiment.config.RunConfig` becomes
objects; it writes nothing. In a distributed run each process builds its own rows of the network
(its nodes' stack, sampler and mixer); ``n`` stays the size of the whole network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from flatlab import algorithms as _algorithms
from flatlab import data as _data
from flatlab import models as _models
from flatlab.comm import DelayedMixer, DistributedMixer, SimulatedMixer
from flatlab.comm.clock import WallClock
from flatlab.comm.delayed import DelayedDistributedMixer
from flatlab.comm.process import Processes
from flatlab.engine import GradientOracle, NodeStack
from flatlab.engine.oracle import DelayedGradients, Oracle, sam_oracle
from flatlab.errors import ConfigError, FlatlabError, MeasureError, RunDirError
from flatlab.experiment.config import RunConfig, network
from flatlab.experiment.rundir import average_model
from flatlab.experiment.schedules import lr_at
from flatlab.measures import named
from flatlab.measures.schedule import Schedule, scheduled
from flatlab.seeds import seed_for
from flatlab.topology.faults import NodeChurn, Stragglers

__all__ = ["Run", "build"]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Run:
    """Everything a run is built from (what :func:`build` returns).

    In a distributed run ``stack``, ``sampler`` and ``mixer`` hold this process's nodes
    (``rows``); ``n`` is always the number of nodes of the whole network.

    Attributes:
        train_eval: The fixed evaluation subset of the nodes' training data (the global
            objective).
        test_eval: The fixed test evaluation subset.
        curvature_eval: The curvature subset of ``train_eval`` (its first
            ``measure.curvature_subset`` samples in a fixed shuffle).
        offline: Under node churn, ``offline(t)``: which of this process's nodes are offline
            at step ``t`` (they keep their state, :func:`flatlab.algorithms.hold`); else None.
        delayed: With ``train.staleness``, the stale points and each step's delays
            (:class:`~flatlab.engine.oracle.DelayedGradients`; its ``past`` is checkpointed).
        straggling: With ``train.stragglers``, ``straggling(t)``: which of this process's
            nodes miss step ``t``'s gradient (:class:`~flatlab.engine.oracle.SkippingOracle`).
    """

    cfg: RunConfig
    dataset: Any
    partition: Any
    sampler: Any
    stack: NodeStack
    oracle: Oracle
    mixer: SimulatedMixer | DistributedMixer
    algorithm: _algorithms.Algorithm
    steps_per_epoch: int
    total_steps: int
    train_eval: Pair
    test_eval: Pair
    n: int = 0
    rows: slice = field(default_factory=lambda: slice(0, 0))
    curvature_eval: Pair | None = None
    offline: Callable[[int], torch.Tensor] | None = None
    straggling: Callable[[int], torch.Tensor] | None = None
    delayed: DelayedGradients | None = None

    def lr(self, step: int) -> float:
        """The scheduled step size at ``step``."""
        return lr_at(step, self.total_steps, self.cfg.optim)

    @cached_property
    def schedule(self) -> Schedule:
        """The run's measurement schedule (resolved once; asked at every step)."""
        m = self.cfg.measure
        return Schedule(scheduled(m.metrics, m.options, m.every), m.every, self.total_steps)


def _rows(n: int, procs: Processes | None) -> slice:
    """The nodes this process holds."""
    world = 1 if procs is None else procs.world_size
    if n % world:
        raise ConfigError(f"topology.nodes = {n} cannot be split over {world} processes; "
                          f"accepted: a number of processes that divides {n}")
    k = n // world
    return slice(0, n) if procs is None else slice(procs.rank * k, (procs.rank + 1) * k)


def _dataset(cfg: RunConfig, n: int) -> tuple[Any, Any]:
    """The data set (with its holdout split) and its partition over ``n`` nodes."""
    dataset = _data.load(cfg.data.name, root=cfg.data.root, seed=cfg.data.seed,
                         nodes=n, **cfg.data.options)
    if cfg.data.label_noise:
        dataset = _data.label_noise(dataset, cfg.data.label_noise, seed=cfg.data.seed)
    if cfg.data.holdout:
        dataset = _data.holdout(dataset, cfg.data.holdout, seed=cfg.data.seed)
    part = _data.partition(dataset, n, cfg.data.partition, alpha=cfg.data.alpha,
                           classes_per_node=cfg.data.classes_per_node,
                           shards_per_node=cfg.data.shards_per_node, seed=cfg.data.seed)
    if "loss_gap" in cfg.measure.metrics:
        try:
            named.check_optimum(dataset)
        except MeasureError as e:
            raise ConfigError(f"measure {e}") from None
    return dataset, part


def _stack(cfg: RunConfig, dataset: Any, rows: slice, device: Any) -> NodeStack:
    """This process's node stack, started as ``cfg.init`` and ``cfg.init_from`` say."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32

    def model(seed: int) -> torch.nn.Module:
        return _models.make(cfg.model.name, input_shape=tuple(dataset.input_shape),
                            num_classes=dataset.num_classes, seed=seed, **cfg.model.options)

    # with init=different, node i starts from its own stream, wherever it lives
    stack = NodeStack(model(cfg.seed), rows.stop - rows.start, init=cfg.init, reinit=model,
                      seed=cfg.seed, first_node=rows.start, device=device, dtype=dtype,
                      loss="cross_entropy" if dataset.task == "classification" else "mse")
    if cfg.init_from is not None:
        try:
            stack.start_from(*average_model(cfg.init_from))
        except (ConfigError, RunDirError) as e:
            raise ConfigError(f"init_from: {e}") from None
        except FlatlabError as e:
            raise ConfigError(f"init_from {cfg.init_from}: {e}; accepted: a run of the same "
                              f"model ({cfg.model.name}) on the same data set") from None
    return stack


def _eval_sets(cfg: RunConfig, dataset: Any, part: Any, stack: NodeStack
               ) -> tuple[Pair, Pair, Pair]:
    """The fixed evaluation subsets: training data of the nodes, test data, curvature subset."""
    rng = np.random.default_rng(seed_for(cfg.data.seed, "eval_subset"))
    train_idx = np.asarray(part.indices).reshape(-1)
    if cfg.measure.train_subset is not None and cfg.measure.train_subset < train_idx.size:
        train_idx = np.sort(rng.choice(train_idx, cfg.measure.train_subset, replace=False))
    test_idx = np.arange(dataset.x_test.shape[0])
    if cfg.measure.test_subset is not None and cfg.measure.test_subset < test_idx.size:
        test_idx = np.sort(rng.choice(test_idx, cfg.measure.test_subset, replace=False))

    def take(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return x[torch.as_tensor(idx, dtype=torch.int64, device="cpu")].to(stack.device)

    dtype = stack.dtype
    train = (take(dataset.x_train, train_idx).to(dtype), take(dataset.y_train, train_idx))
    test = (take(dataset.x_test, test_idx).to(dtype), take(dataset.y_test, test_idx))
    if dataset.task != "classification":
        train = (train[0], train[1].to(dtype))
        test = (test[0], test[1].to(dtype))
    # curvature subset: a fixed shuffle of the training evaluation set, the first m samples
    perm = torch.randperm(train[0].shape[0], device="cpu",
                          generator=torch.Generator().manual_seed(
                              seed_for(cfg.data.seed, "curvature_subset")))
    pick = perm[:cfg.measure.curvature_subset].to(stack.device)
    return train, test, (train[0][pick], train[1][pick])


def wall_clock(cfg: RunConfig) -> WallClock:
    """The simulated wall clock of ``cfg.clock`` (asynchronous under ``async_gossip``)."""
    c = cfg.clock
    return WallClock(int(cfg.topology.nodes), c.compute, c.compute_cv, c.latency, c.bandwidth,
                     seed=cfg.seed,
                     asynchronous=cfg.topology.faults.get("model") == "async_gossip",
                     deadline=c.deadline)


def _stragglers(cfg: RunConfig, n: int) -> Callable[[int], np.ndarray] | None:
    """Who misses step ``t``'s gradient: ``train.stragglers``' coin, or past ``clock.deadline``."""
    coin = Stragglers(n, cfg.train.stragglers, seed=cfg.seed).skips \
        if cfg.train.stragglers else None
    late = wall_clock(cfg).late if cfg.clock.deadline is not None else None
    if coin is None or late is None:
        return coin or late
    return lambda t: coin(t) | late(t)


def _local(draw: Callable[[int], np.ndarray], rows: slice) -> Callable[[int], torch.Tensor]:
    """``draw(t)``, booleans over all nodes (the same on every process), at this process's rows."""
    return lambda t: torch.as_tensor(draw(t), device="cpu")[rows]


def build(cfg: RunConfig, procs: Processes | None = None) -> Run:
    """Build data, partition, sampler, model stack, oracle, mixer and algorithm from ``cfg``.

    Args:
        cfg: The run's config.
        procs: This process's place in a distributed run (from
            :func:`flatlab.comm.process.join`); ``None`` builds the simulated run of all nodes.

    Raises:
        ConfigError: The number of processes does not divide the number of nodes, or the
            config asks for what its data cannot give.
    """
    n = cfg.topology.nodes
    rows = _rows(n, procs)
    dataset, part = _dataset(cfg, n)
    stack = _stack(cfg, dataset, rows, cfg.device if procs is None else procs.device)
    sampler = _data.NodeSampler(dataset.x_train, dataset.y_train, part, cfg.data.batch_size,
                                seed=cfg.seed, device=stack.device, dtype=stack.dtype,
                                rows=None if procs is None else rows)
    spe = sampler.steps_per_epoch
    total = cfg.train.steps if cfg.train.steps is not None else max(1, math.ceil(
        cfg.train.epochs * spe))
    net = network(cfg, rounds=total)  # every round of the run, replayed alike by either mixer
    topo, delays, offline = net.topology, net.delays, None
    if isinstance(net.faults, NodeChurn) and net.faults.p > 0:
        if stack.buffers:
            raise ConfigError("config field topology.faults: node churn freezes an offline "
                              "node's state, but this model's buffers (batch-norm statistics) "
                              "move in every forward pass; accepted: a model without buffers "
                              "(norm: group or none), or link_failures")
        offline = _local(net.faults.offline, rows)
    if delays is not None and procs is None:
        mixer: SimulatedMixer | DistributedMixer = DelayedMixer(
            topo, delays, device=stack.device, dtype=stack.dtype)
    elif delays is not None:
        mixer = DelayedDistributedMixer(topo, delays, device=stack.device, dtype=stack.dtype)
    elif procs is None:
        mixer = SimulatedMixer(topo, device=stack.device, dtype=stack.dtype,
                               method=cfg.mix_method)
    else:
        mixer = DistributedMixer(topo, device=stack.device, dtype=stack.dtype)
    method = "vmap" if cfg.compile and cfg.oracle == "auto" else cfg.oracle
    oracle = sam_oracle(GradientOracle(stack, weight_decay=cfg.optim.weight_decay,
                                       method=method, compile=cfg.compile),
                        cfg.optim.sam_rho, adaptive=cfg.optim.sam_adaptive)
    train, test, curvature = _eval_sets(cfg, dataset, part, stack)
    skips = _stragglers(cfg, n)
    straggling = None if skips is None else _local(skips, rows)
    stale = net.staleness
    delayed = None if stale is None else DelayedGradients(_local(stale.delays, rows), stale.tau)
    return Run(cfg=cfg, dataset=dataset, partition=part, sampler=sampler, stack=stack,
               oracle=oracle, mixer=mixer, algorithm=net.algorithm, steps_per_epoch=spe,
               total_steps=total, train_eval=train, test_eval=test, n=n, rows=rows,
               curvature_eval=curvature, offline=offline, straggling=straggling,
               delayed=delayed)
