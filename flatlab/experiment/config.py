"""Typed run configuration: YAML plus ``key=value`` overrides, validated field by field.

A run is described by a :class:`RunConfig` (DESIGN.md §7). Every error names the field
(``optim.schedule``), what was given and what is accepted, on one line.

Example YAML (every field has a default; see ``configs/`` for complete files)::

    name: ring16-diffusion
    seed: 0
    data: {name: mnist1d, partition: dirichlet, alpha: 0.1, batch_size: 32}
    model: {name: cnn1d}
    topology: {name: ring, nodes: 16}
    algorithm: {name: diffusion}
    optim: {lr: 0.05, schedule: cosine, warmup: 100, weight_decay: 1.0e-4}
    train: {epochs: 20}
    measure: {every: 100, metrics: [loss, accuracy, consensus_distance, grad_norm]}

Seeds: ``data.seed`` fixes the data set (synthetic tasks) and the partition, so runs that differ
only in ``seed`` see the same split; ``seed`` fixes the model initialisation, the minibatch order
and dropout. ``init_from`` (a finished run directory) starts every node at that run's averaged
model ``x̄`` instead (the escape experiment of ``flatlab.studies.tradeoff``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import yaml

from flatlab import algorithms, data, models
from flatlab.comm import MIX_METHODS
from flatlab.errors import ConfigError, FlatlabError
from flatlab.experiment.io import read_yaml, yaml_error_line, yaml_loads
from flatlab.measures import MeasureError, named
from flatlab.topology import make as make_topology
from flatlab.topology.faults import (
    AsyncGossip,
    LinkFailures,
    MessageDelays,
    MessageDrops,
    NodeChurn,
    StaleGradients,
)

__all__ = [
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "TopologyConfig",
    "AlgorithmConfig",
    "OptimConfig",
    "TrainConfig",
    "MeasureConfig",
    "load_config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "parse_overrides",
    "validate",
    "network",
    "Network",
    "BASIC_METRICS",
    "PARTITIONS",
    "SCHEDULES",
]

BASIC_METRICS = ("loss", "accuracy", "consensus_distance", "grad_norm")
BACKENDS = ("simulated", "distributed")
#: Fields that say how a run executes, not what it computes (ignored when resuming a directory).
EXECUTION_FIELDS = ("backend", "timeout", "measure_timeout", "threads", "log", "deterministic")
PARTITIONS = ("iid", "dirichlet", "classes", "shards", "natural")
SCHEDULES = ("constant", "step", "cosine")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class DataConfig:
    """Data set, its split over the nodes and the per-node batch size.

    ``holdout`` > 0 trains on the rest of the training set and evaluates ("test" metrics) on
    that held-out share of it (:func:`flatlab.data.holdout`), for tuning without the test set.
    ``label_noise`` > 0 relabels that share of the training set with a uniformly drawn other
    class before the holdout split (:func:`flatlab.data.label_noise`, seeded by ``seed``); the
    test set keeps its true labels.
    """

    name: str = "mnist1d"
    root: str | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    holdout: float = 0.0
    label_noise: float = 0.0
    partition: str = "iid"
    alpha: float = 1.0
    classes_per_node: int = 2
    shards_per_node: int = 2
    batch_size: int = 32


@dataclass
class ModelConfig:
    """Model name (``flatlab models``) and its options."""

    name: str = "cnn1d"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TopologyConfig:
    """Graph generator (``flatlab topologies``), size, weight rule and generator parameters.

    ``local_steps`` ``H > 1`` takes ``H`` local steps and gossips on the last of them
    (:func:`flatlab.topology.periodic`; ``diffusion`` on ``complete`` is Local SGD).

    ``faults`` (empty: none) makes links or nodes fail, seeded by the run's seed:
    ``{model: link_failures, p: 0.1}`` fails each undirected edge in each round with
    probability ``p`` (:class:`flatlab.topology.faults.LinkFailures`); ``{model: node_churn,
    p: 0.1}`` takes each node offline in a round with probability ``p``
    (:class:`flatlab.topology.faults.NodeChurn`): it neither communicates nor steps, keeping
    its whole state (:func:`flatlab.algorithms.hold`). For both the base's weights are
    recomputed on what is up, so every round stays symmetric and doubly stochastic.
    ``{model: message_drops, p: 0.1}`` loses each directed message with probability ``p``
    (:class:`flatlab.topology.faults.MessageDrops`); on a doubly stochastic graph the receiver
    keeps the lost weight on its own value, so rounds are row-stochastic only and only the
    plain gossip methods (consensus, diffusion) accept them; on push-sum weights the sender
    keeps the share it could not deliver (``keeper: sender``), so rounds stay
    column-stochastic and ``sgp`` conserves its mass. ``{model: async_gossip}`` (optionally
    ``events: m``, default ``n``) is AD-PSGD's asynchronous network: a round is ``m`` ticks, each
    averaging a uniform node with a uniform neighbour (:class:`flatlab.topology.faults.
    AsyncGossip`; ``p``: a tick's exchange is lost with that probability and the pair keeps
    its values); ``algorithm: ad-psgd`` runs on it. The run mixes with the
    resulting time-varying schedule, so a method that needs a static graph refuses it.

    ``delays`` (empty: none), ``{tau: 2, p: 0.5, fixed: false}``: each message of a round
    arrives late with probability ``p`` (default 1), by up to ``tau`` rounds (exactly ``tau``
    when ``fixed``), and its receiver mixes the value its neighbour sent then
    (:class:`flatlab.topology.faults.MessageDelays`, :class:`flatlab.comm.DelayedMixer`);
    composable with ``faults`` (the delays fall on the links of each round). The gossip
    methods that only mix accept them; per-edge exchanges (``ecl``, ``ngpd``), push-sum
    (``sgp``) and the all-reduce (``centralized``) do not. On the ``distributed`` backend the
    graph must be static (no ``faults``, no ``local_steps``; each process keeps the past of the
    rows it receives).
    """

    name: str = "ring"
    nodes: int = 16
    weights: str | None = None
    lazy: bool = False
    local_steps: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)
    delays: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig:
    """Algorithm name (``flatlab algorithms``) and its hyper-parameters."""

    name: str = "diffusion"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Step size, its schedule and weight decay (the runner's, added inside the gradient).

    ``schedule``: ``constant``; ``step`` (multiply by ``gamma`` at each fraction of training in
    ``milestones``); ``cosine`` (from ``lr`` down to ``min_lr`` at the end). ``warmup``: steps of
    linear warm-up from ``lr / warmup`` to ``lr`` before the schedule.

    ``sam_rho`` > 0 makes every node's gradient sharpness-aware (SAM, Foret et al. 2021: taken
    at ``x_i + ρ g_i/‖g_i‖``; ``sam_adaptive`` for ASAM's scale-invariant perturbation, whose
    radii are about 10x SAM's), for any gradient-based algorithm
    (:class:`flatlab.engine.SAMOracle`); one extra forward and backward per step.
    """

    lr: float = 0.05
    schedule: str = "constant"
    warmup: int = 0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    min_lr: float = 0.0
    weight_decay: float = 0.0
    sam_rho: float = 0.0
    sam_adaptive: bool = False


@dataclass
class TrainConfig:
    """Length of training: ``steps`` or (per-node) ``epochs``, not both.

    When neither is given, 10 epochs. ``stragglers`` ``p``: each node misses a step's gradient
    with probability ``p`` (seeded by the run's seed; it still gossips, its update carries no
    gradient: :class:`flatlab.topology.faults.Stragglers`). ``staleness`` (empty: none),
    ``{tau: 2, p: 1.0, fixed: false}``: each node's gradient is late with probability ``p``,
    taken at the point the method asked about ``d`` steps earlier, ``d`` uniform on
    ``1 … tau`` (or exactly ``tau`` when ``fixed``) (:class:`flatlab.topology.faults.
    StaleGradients`; :class:`flatlab.engine.oracle.DelayedGradients`).
    """

    steps: int | None = None
    epochs: float | None = None
    stragglers: float = 0.0
    staleness: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeasureConfig:
    """What to measure and when.

    ``metrics`` are named measures (``flatlab measures`` lists them:
    :mod:`flatlab.measures.named`), measured at step 0, every ``every`` steps and at the end;
    ``train_subset`` samples of the nodes' training data (fixed for the run, seeded by
    ``data.seed``; ``null`` for all) and ``test_subset`` of the test set are used. ``per_node``
    also records each node's values. ``options`` holds each measure's settings
    (``{hessian_top: {k: 3}}``; ``every``, a multiple of ``every``, thins one measure).
    Curvature, sharpness and landscapes use the first ``curvature_subset`` samples of a fixed
    shuffle of the training evaluation set, in ``curvature_dtype``.
    """

    every: int = 100
    metrics: list[str] = field(default_factory=lambda: list(BASIC_METRICS))
    train_subset: int | None = 2048
    test_subset: int | None = None
    eval_batch: int = 2048
    per_node: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    curvature_subset: int = 512
    curvature_dtype: str = "float32"


@dataclass
class LogConfig:
    """Live logging besides the run directory's own files.

    ``tensorboard``: write every metric, the timings and the Hessian spectra as TensorBoard
    event files into the run directory (:mod:`flatlab.experiment.tensorboard`; needs the
    optional ``tensorboard`` package).
    """

    tensorboard: bool = False


@dataclass
class ClockConfig:
    """A simulated wall clock (:class:`flatlab.comm.clock.WallClock`): time, not only steps.

    Each step every node computes for a time drawn from a log-normal distribution of mean
    ``compute`` seconds and coefficient of variation ``compute_cv`` (0: always ``compute``),
    then sends what the algorithm sends this step at ``bandwidth`` bytes per second (``null``:
    no transfer time); a round that exchanges anything adds ``latency`` seconds. A synchronous
    round ends when its slowest node is done. The run records the cumulative ``sim_time``
    (scope ``network``) wherever it measures. All zero (the default): no clock.

    ``deadline`` (seconds; ``null``: none) closes a synchronous round's computation there: a
    node whose compute time exceeds it is a straggler that step (no gradient, as
    ``train.stragglers``; it still gossips), and the round waits ``min(c_i, deadline)``.
    Slow nodes, not a coin, decide who straggles.
    """

    compute: float = 0.0
    compute_cv: float = 0.0
    latency: float = 0.0
    bandwidth: float | None = None
    deadline: float | None = None

    @property
    def on(self) -> bool:
        """Whether the clock runs."""
        return bool(self.compute or self.latency or self.bandwidth is not None)


@dataclass
class RunConfig:
    """One run: everything the runner needs to build and train, and nothing else.

    Engine options: ``mix_method`` (auto, dense, sparse, shift), ``oracle`` (auto, vmap,
    autograd; see :class:`flatlab.engine.GradientOracle`) and ``compile`` (``torch.compile`` the
    vmapped gradient: faster steps for MLPs after tens of seconds of compilation).

    Execution: ``backend`` is ``simulated`` (one process holds every node) or ``distributed``
    (run under ``torchrun --nproc_per_node=K``, each of ``K`` processes holds ``n / K`` nodes and
    gossip is real point-to-point communication); ``timeout`` is how many seconds a process waits
    for a lost peer before the run fails; ``measure_timeout`` how long the other processes wait
    for rank 0 measuring the averaged model (or writing files) alone before they call it hung.
    ``threads`` is the number of CPU threads torch uses in this process during the run:
    ``auto`` (the default, :func:`flatlab.experiment.runner.resolve_threads`: one thread, never
    far from the best measured on 2 cores, idle or shared; see "Threads" in
    docs/guide/runs.md) or a whole number. None of these changes the numbers beyond float32
    rounding, so a run directory may be resumed under another backend or thread count. ``log``
    (live logging) is an execution setting too, and so is ``deterministic``: on a GPU,
    deterministic kernels only (:func:`flatlab.engine.precision.deterministic`; off by default,
    it costs speed), so that a resumed run continues bit for bit there too; on the CPU it
    changes nothing.

    Initialisation: ``init`` is ``same`` (every node starts from ``model(seed)``) or
    ``different`` (node ``i`` from ``model(seed_for(seed, "init", i))``, :mod:`flatlab.seeds`);
    ``init_from`` names a run directory whose checkpoint (with the same model and data set)
    gives the start instead: every node starts at its averaged model ``x̄``, with averaged
    buffers.
    """

    name: str = "run"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    init: str = "same"
    init_from: str | None = None
    mix_method: str = "auto"
    oracle: str = "auto"
    compile: bool = False
    checkpoint_every: int = 500
    backend: str = "simulated"
    timeout: float = 60.0
    measure_timeout: float = 3600.0
    threads: int | str = "auto"
    deterministic: bool = False
    log: LogConfig = field(default_factory=LogConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)


# ---------------------------------------------------------------------- dict <-> dataclass
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(path, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"config field {path}: {value!r} is not {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config field {path}: {value!r} is not a list")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field {path}: {value!r} is not a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value):  # "1e-3" given as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field {path}: {value!r} is not a number")
        if not math.isfinite(value):
            raise ConfigError(f"config field {path}: {value!r} is not a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config field {path}: {value!r} is not an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field {path}: {value!r} is not true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field {path}: {value!r} is not a string")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    return value


def _from_dict(cls: type, d: Any, prefix: str = "") -> Any:
    where = prefix or "config"
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config field {where}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        full = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        hint = ("; this looks like a sweep spec (base, grid): run it with flatlab sweep"
                if not prefix and {"grid", "base"} & set(unknown) else "")
        raise ConfigError(f"config field {full} is unknown; accepted fields of {where}: "
                          f"{', '.join(names)}{hint}")
    kw = {}
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        kw[k] = _coerce(path, v, hints[k])
    return cls(**kw)


def from_dict(d: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a nested mapping (types checked, unknown fields refused)."""
    cfg = _from_dict(RunConfig, d)
    if cfg.train.steps is None and cfg.train.epochs is None:
        cfg.train.epochs = 10.0
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as a nested plain dict (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------- overrides
def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=0.1", "algorithm.name=consensus"]`` -> ``{"optim.lr": 0.1, ...}``.

    Values are parsed as YAML (numbers, ``1e-3`` included, booleans, ``null``, lists
    ``[a, b]``), by the strict safe loader of :mod:`flatlab.experiment.io`.

    Raises:
        ConfigError: An item that is not ``key=value``, or a key given twice.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example optim.lr=0.1)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key or key part; accepted: "
                              "dotted field names such as optim.lr")
        if key in out:
            raise ConfigError(f"override {key} is given twice; give each field once")
        try:
            value = yaml_loads(raw) if raw.strip() else ""
        except yaml.constructor.ConstructorError as e:  # a tag, or a key given twice
            raise ConfigError(f"override {key}: {yaml_error_line(e)}") from None
        except yaml.YAMLError:  # not YAML: the text itself
            value = raw
        out[key] = value
    return out


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested mapping ``d`` with dotted-key ``overrides`` set.

    The length of training is one choice: overriding ``train.steps`` drops ``train.epochs``
    from ``d`` and the other way round (unless both are overridden).
    """
    d = copy.deepcopy(d)
    for a, b in (("train.steps", "train.epochs"), ("train.epochs", "train.steps")):
        if a in overrides and b not in overrides and isinstance(d.get("train"), dict):
            d["train"].pop(b.split(".")[1], None)
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return d


def load_config(source: str | Path | dict[str, Any] | RunConfig | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (or take a mapping), apply overrides, build and :func:`validate`.

    Raises:
        ConfigError: A missing file, bad YAML, an unknown field or a value out of range.
    """
    if isinstance(source, RunConfig):
        d = to_dict(source)
    elif source is None:
        d = {}
    elif isinstance(source, dict):
        d = copy.deepcopy(source)
    else:
        d = read_yaml(source, "config file", error=ConfigError)
    if overrides:
        ov = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
        d = apply_overrides(d, ov)
    cfg = from_dict(_shortened(d))
    validate(cfg)
    return cfg


#: Environment variable that shortens every run loaded from a config (for trying examples).
MAX_STEPS_ENV = "FLATLAB_MAX_STEPS"


def _shortened(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with at most ``$FLATLAB_MAX_STEPS`` training steps, when that is set.

    ``FLATLAB_MAX_STEPS=N`` makes every run loaded from a config train ``N`` steps (its own
    ``train.steps`` when fewer; ``train.epochs`` is replaced): a way to try the manual's
    examples, a sweep or a study's configs in seconds. The shortened length is the run's
    config (``config.yaml`` says it), so a shortened run is never mistaken for a full one.
    """
    raw = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not raw:
        return d
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"environment variable {MAX_STEPS_ENV}={raw!r} is not accepted; "
                          "accepted: an integer >= 1 (or unset)")
    cap = int(raw)
    train = dict(d.get("train") or {})
    steps = train.get("steps")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps <= cap):
        train = {k: v for k, v in train.items() if k != "epochs"} | {"steps": cap}
    return {**d, "train": train}


# ---------------------------------------------------------------------- validation
def _need(cond: bool, path: str, value: Any, accepted: str) -> None:
    if not cond:
        raise ConfigError(f"config field {path}: {value!r} is not accepted; accepted: {accepted}")


def _one_of(path: str, value: Any, choices: list[str] | tuple[str, ...]) -> None:
    _need(value in choices, path, value, ", ".join(choices))


def is_plain_name(name: str) -> bool:
    """A run name that stays inside the runs folder: one path component, not ``.`` or ``..``."""
    return (bool(name.strip()) and name not in (".", "..") and not any(c in name for c in "/\\")
            and all(c.isprintable() for c in name) and name == name.strip())


def validate(cfg: RunConfig) -> None:
    """Check every field's value, registries included, section by section.

    Raises:
        ConfigError: On the first bad field, naming it and the accepted values.
    """
    _validate_run(cfg)
    _validate_data(cfg.data)
    _one_of("model.name", cfg.model.name, models.available())
    network(cfg, rounds=FAULT_CHECK_ROUNDS)  # the network and the method: built is checked
    _validate_optim(cfg.optim)
    _validate_train(cfg)
    _validate_measure(cfg.measure)
    c = cfg.clock
    _need(c.compute >= 0, "clock.compute", c.compute, "seconds >= 0 (a step's mean compute)")
    _need(c.compute_cv >= 0, "clock.compute_cv", c.compute_cv, "a number >= 0")
    _need(c.latency >= 0, "clock.latency", c.latency, "seconds >= 0 per round")
    _need(c.bandwidth is None or c.bandwidth > 0, "clock.bandwidth", c.bandwidth,
          "bytes per second > 0, or null (no transfer time)")
    _need(c.deadline is None or (c.deadline > 0 and c.compute > 0), "clock.deadline",
          c.deadline, "seconds > 0 beside a clock.compute > 0, or null (no deadline)")
    if c.deadline is not None and cfg.topology.faults.get("model") == "async_gossip":
        raise ConfigError("config field clock.deadline: an asynchronous network has no round "
                          "to close (each node steps at its own pace); accepted: null")
    if c.deadline is not None and cfg.algorithm.name in ("ngpd", "centralized"):
        raise ConfigError(f"config field clock.deadline: its late nodes are stragglers, which "
                          f"{cfg.algorithm.name} cannot have (see train.stragglers); "
                          "accepted: another method, or null")


def _validate_run(cfg: RunConfig) -> None:
    """The top-level fields: seed, precision, device, execution, checkpoints and the name."""
    _need(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _one_of("dtype", cfg.dtype, ("float32", "float64"))
    _need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
          "device", cfg.device, "auto, cpu, cuda, cuda:K")
    _one_of("init", cfg.init, ("same", "different"))
    _one_of("mix_method", cfg.mix_method, MIX_METHODS)
    _one_of("oracle", cfg.oracle, ("auto", "vmap", "autograd"))
    _need(not cfg.compile or cfg.oracle in ("auto", "vmap"), "compile", cfg.compile,
          "true only with oracle auto (on a model without convolutions) or vmap")
    _need(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    _one_of("backend", cfg.backend, BACKENDS)
    _need(math.isfinite(cfg.timeout) and cfg.timeout > 0, "timeout", cfg.timeout,
          "a number of seconds > 0")
    _need(math.isfinite(cfg.measure_timeout) and cfg.measure_timeout > 0, "measure_timeout",
          cfg.measure_timeout, "a number of seconds > 0")
    _need(cfg.threads == "auto" or (isinstance(cfg.threads, int) and cfg.threads >= 1),
          "threads", cfg.threads, "auto or an integer >= 1")
    _need(is_plain_name(cfg.name), "name", cfg.name,
          "a name that is one folder name (not . or .., no / or \\, no control characters)")


def _validate_data(d: DataConfig) -> None:
    """``data``: a registered data set, its partition and batch size."""
    _one_of("data.name", d.name, data.available())
    _one_of("data.partition", d.partition, PARTITIONS)
    _need(d.alpha > 0, "data.alpha", d.alpha, "a number > 0")
    _need(0 <= d.holdout < 1, "data.holdout", d.holdout, "a fraction in [0, 1)")
    _need(0 <= d.label_noise < 1, "data.label_noise", d.label_noise, "a fraction in [0, 1)")
    _need(d.classes_per_node >= 1, "data.classes_per_node", d.classes_per_node, "an integer >= 1")
    _need(d.shards_per_node >= 1, "data.shards_per_node", d.shards_per_node, "an integer >= 1")
    _need(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
    _need(d.seed >= 0, "data.seed", d.seed, "an integer >= 0")


@dataclass(frozen=True)
class Network:
    """The network and the method a config names, built and checked against each other.

    What :func:`network` returns: the one place where ``topology`` (its graph, faults and
    delays), ``train.staleness`` and ``algorithm`` become objects. Validation is this build
    (over the first :data:`FAULT_CHECK_ROUNDS` rounds); :func:`flatlab.experiment.assemble.build`
    calls it again for the run's whole length.

    Attributes:
        base: The graph ``topology.name`` makes (its generator checked its parameters).
        topology: What the mixers follow: ``base``, or under ``topology.faults`` the schedule
            of rounds its fault model plays.
        faults: The fault model of ``topology.faults`` (None without faults).
        delays: The :class:`~flatlab.topology.faults.MessageDelays` of ``topology.delays``
            (None: every message arrives in its round).
        staleness: The :class:`~flatlab.topology.faults.StaleGradients` of
            ``train.staleness`` (None: fresh gradients).
        algorithm: The method of ``algorithm``, checked against ``topology``.
    """

    base: Any
    topology: Any
    faults: Any
    delays: Any
    staleness: Any
    algorithm: Any


def network(cfg: RunConfig, *, rounds: int) -> Network:
    """The network and the method of ``cfg`` for ``rounds`` gossip rounds, checked together.

    Every draw (faults, delays, staleness) is seeded by ``cfg.seed``.

    Raises:
        ConfigError: A bad topology, fault model, delay or staleness model, an unknown
            algorithm or one of its hyper-parameters, or a method the network cannot carry, in
            one line naming the config field.
    """
    t = cfg.topology
    _need(t.nodes >= 1, "topology.nodes", t.nodes, "an integer >= 1")
    _need(t.local_steps >= 1, "topology.local_steps", t.local_steps,
          "an integer >= 1 (steps between gossip rounds)")
    try:
        base = make_topology(t.name, t.nodes, weights=t.weights, lazy=t.lazy,
                             local_steps=t.local_steps, **t.params)
    except FlatlabError as e:
        raise ConfigError(f"config field topology: {e}") from None
    except TypeError as e:
        raise ConfigError(f"config field topology.params: {e}") from None
    faults = fault_model(t.faults, base, seed=cfg.seed) if t.faults else None
    topology = base if faults is None else fault_schedule(faults, rounds)
    algorithm = _algorithm(cfg.algorithm, topology)
    delays = message_delays(t.delays, t.nodes, seed=cfg.seed)
    if delays is not None:
        _check_delays(cfg, topology)
    staleness = stale_gradients(cfg.train.staleness, t.nodes, seed=cfg.seed)
    return Network(base, topology, faults, delays, staleness, algorithm)


#: Fault models a run can train under (``topology.faults.model``).
FAULT_MODELS = ("link_failures", "node_churn", "message_drops", "async_gossip")
#: Rounds of the schedule that validation builds to check the algorithm against it.
FAULT_CHECK_ROUNDS = 64


def fault_schedule(model: Any, rounds: int) -> Any:
    """The time-varying topology a fault ``model`` (:func:`fault_model`) plays for ``rounds``.

    The drawn rounds need not join every node (connectivity is the base graph's,
    :attr:`flatlab.topology.Topology.drawn`).

    Raises:
        ConfigError: The model cannot play ``rounds`` rounds (``topology.faults``' line).
    """
    try:
        return model.topology(rounds)
    except FlatlabError as e:
        raise ConfigError(f"config field topology.faults: {e}") from None


def fault_model(faults: dict[str, Any], base: Any, *, seed: int) -> Any:
    """The fault model of ``topology.faults`` over ``base`` (:mod:`flatlab.topology.faults`).

    Raises:
        ConfigError: An unknown model or key, a ``p`` outside ``[0, 1)``, or a base the model
            cannot fail.
    """
    if not isinstance(faults, dict):
        raise ConfigError(f"config field topology.faults must be a mapping such as "
                          f"{{model: link_failures, p: 0.1}}, got {faults!r}")
    unknown = sorted(set(faults) - {"model", "p", "keeper", "events"})
    if unknown:
        raise ConfigError(f"config field topology.faults.{unknown[0]} is unknown; accepted: "
                          "model, p, keeper (message_drops), events (async_gossip)")
    model = faults.get("model")
    _one_of("topology.faults.model", model, FAULT_MODELS)
    if "keeper" in faults and model != "message_drops":
        raise ConfigError(f"config field topology.faults.keeper: only message_drops has one "
                          f"(who keeps a lost message's share); {model} does not")
    if "events" in faults and model != "async_gossip":
        raise ConfigError(f"config field topology.faults.events: only async_gossip has ticks "
                          f"per round; {model} does not")
    if model == "async_gossip":
        try:
            return AsyncGossip(base, events=faults.get("events"), seed=seed,
                               p=faults.get("p", 0.0))
        except FlatlabError as e:
            raise ConfigError(f"config field topology.faults: {e}") from None
    extra = {"keeper": faults["keeper"]} if "keeper" in faults else {}
    kind = {"link_failures": LinkFailures, "node_churn": NodeChurn,
            "message_drops": MessageDrops}[model]
    try:
        return kind(base, p=faults.get("p", 0.0), seed=seed, **extra)
    except FlatlabError as e:
        raise ConfigError(f"config field topology.faults: {e}") from None


def _algorithm(a: AlgorithmConfig, topology: Any) -> Any:
    """``algorithm``: a registered name, its hyper-parameters, and the topology it accepts."""
    try:
        algorithm = algorithms.make(a.name, **a.params)
        algorithm.check_topology(topology)
    except FlatlabError as e:
        raise ConfigError(f"config field algorithm: {e}") from None
    if a.name == "centralized" and "faults" in getattr(topology, "params", {}):
        raise ConfigError("config field topology.faults: centralized averages with an exact "
                          "all-reduce, which no link or node failure touches; accepted: a "
                          "decentralized method, or no faults")
    return algorithm


def _validate_optim(o: OptimConfig) -> None:
    """``optim``: step size, schedule and weight decay."""
    _need(o.lr > 0, "optim.lr", o.lr, "a number > 0")
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    _need(o.warmup >= 0, "optim.warmup", o.warmup, "an integer >= 0 (steps)")
    _need(all(0 < m < 1 for m in o.milestones) and o.milestones == sorted(o.milestones),
          "optim.milestones", o.milestones, "increasing fractions of training in (0, 1)")
    _need(0 < o.gamma <= 1, "optim.gamma", o.gamma, "a number in (0, 1]")
    _need(0 <= o.min_lr <= o.lr, "optim.min_lr", o.min_lr, "a number in [0, optim.lr]")
    _need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _need(o.sam_rho >= 0, "optim.sam_rho", o.sam_rho, "a number >= 0 (0: no SAM)")


def _validate_train(cfg: RunConfig) -> None:
    """``train``: exactly one of steps or epochs."""
    tr = cfg.train
    _need((tr.steps is None) != (tr.epochs is None), "train", to_dict(cfg)["train"],
          "exactly one of train.steps or train.epochs")
    if tr.steps is not None:
        _need(tr.steps >= 1, "train.steps", tr.steps, "an integer >= 1")
    if tr.epochs is not None:
        _need(tr.epochs > 0, "train.epochs", tr.epochs, "a number > 0")
    _need(0 <= tr.stragglers < 1, "train.stragglers", tr.stragglers,
          "a probability in [0, 1) that a node misses a step's gradient")
    if tr.staleness and cfg.algorithm.name in ("ngpd", "centralized"):
        raise ConfigError(f"config field train.staleness: {cfg.algorithm.name} "
                          + ("asks the oracle for curvature factors besides gradients, which "
                             "a late gradient would not carry" if cfg.algorithm.name == "ngpd"
                             else "averages every gradient in one synchronous all-reduce")
                          + "; accepted: another method, or no train.staleness")
    if cfg.topology.delays and cfg.algorithm.name in DELAY_REFUSED:
        raise ConfigError(f"config field topology.delays: {cfg.algorithm.name} "
                          f"{DELAY_REFUSED[cfg.algorithm.name]}; accepted: a gossip method that "
                          "mixes (consensus, diffusion, tracking, momentum, choco, ...), or no "
                          "topology.delays")
    if tr.stragglers and cfg.algorithm.name in ("ngpd", "centralized"):
        raise ConfigError(f"config field train.stragglers: {cfg.algorithm.name} "
                          + ("asks the oracle for curvature factors besides gradients, which a "
                             "straggler would not have" if cfg.algorithm.name == "ngpd" else
                             "averages every gradient exactly (no node straggles behind an "
                             "all-reduce)")
                          + "; accepted: another method, or train.stragglers: 0")


def _check_delays(cfg: RunConfig, topology: Any) -> None:
    """``topology.delays`` against the network it falls on (``topology``: what validation built).

    Raises:
        ConfigError: Row-stochastic rounds (message drops), or a time-varying network on the
            distributed backend, in one line naming the cause.
    """
    if topology.stochastic != "doubly":
        raise ConfigError(f"config field topology.delays: late messages need doubly stochastic "
                          f"gossip, but {cfg.topology.faults.get('model', cfg.topology.name)} "
                          f"makes the rounds {topology.stochastic}-stochastic; accepted: "
                          "link_failures, node_churn or async_gossip, or no topology.delays")
    if cfg.backend == "distributed" and topology.time_varying:
        cause = (f"topology.faults ({cfg.topology.faults.get('model')}) makes it vary"
                 if cfg.topology.faults else f"topology.local_steps={cfg.topology.local_steps} "
                 "makes it vary" if cfg.topology.local_steps > 1 else
                 f"{cfg.topology.name} varies")
        raise ConfigError("config field topology.delays: on the distributed backend the graph "
                          "must be static (the rows a process receives may not change between "
                          f"rounds), and {cause}; accepted: backend=simulated, or a static "
                          "graph")


#: Algorithms that cannot run with late messages, and why.
DELAY_REFUSED = {
    "centralized": "averages in one synchronous all-reduce, no message to delay",
    "ecl": "exchanges per-edge duals (only mixing is delayed)",
    "ngpd": "exchanges per-edge duals (only mixing is delayed)",
    "sgp": "mixes column-stochastic push-sum weights, whose mass a late value would not conserve",
}


def _lateness(name: str, value: Any, model: type, n: int, seed: int, unit: str,
              example: str) -> Any:
    """A lateness model (``tau``, ``p``, ``fixed``) from config field ``name`` (None: empty)."""
    if not isinstance(value, dict):
        raise ConfigError(f"config field {name} must be a mapping such as {example}, got "
                          f"{value!r}")
    if not value:
        return None
    unknown = sorted(set(value) - {"tau", "p", "fixed"})
    if unknown:
        raise ConfigError(f"config field {name}.{unknown[0]} is unknown; accepted: tau, p, "
                          "fixed")
    if "tau" not in value:
        raise ConfigError(f"config field {name} needs tau, the largest delay in {unit} (an "
                          "integer >= 1)")
    try:
        return model(n, value["tau"], p=value.get("p", 1.0), fixed=value.get("fixed", False),
                     seed=seed)
    except FlatlabError as e:
        raise ConfigError(f"config field {name}: {e}") from None


def message_delays(delays: dict[str, Any], n: int, *, seed: int) -> Any:
    """The :class:`~flatlab.topology.faults.MessageDelays` of ``topology.delays`` (None: empty).

    Raises:
        ConfigError: Not a mapping, an unknown key, no ``tau``, or a value out of range.
    """
    return _lateness("topology.delays", delays, MessageDelays, n, seed, "rounds",
                     "{tau: 2, p: 0.5}")


def stale_gradients(staleness: dict[str, Any], n: int, *, seed: int) -> Any:
    """The :class:`~flatlab.topology.faults.StaleGradients` of ``train.staleness`` (None: empty).

    Raises:
        ConfigError: Not a mapping, an unknown key, or a bad ``tau``, ``p`` or ``fixed``.
    """
    return _lateness("train.staleness", staleness, StaleGradients, n, seed, "steps",
                     "{tau: 2}")


def _validate_measure(m: MeasureConfig) -> None:
    """``measure``: the schedule, the named metrics and their options, the evaluation sets."""
    _need(m.every >= 1, "measure.every", m.every, "an integer >= 1")
    for i, name in enumerate(m.metrics):
        _one_of(f"measure.metrics[{i}]", name, tuple(named.available()))
    _need(len(set(m.metrics)) == len(m.metrics), "measure.metrics", m.metrics,
          "a list without repeats")
    for name, given in m.options.items():
        _validate_measure_options(name, given, m.every)
        _need(name in m.metrics, f"measure.options.{name}", given,
              f"settings of a scheduled measure: add {name} to measure.metrics (scheduled: "
              f"{', '.join(m.metrics)})")
    _need(m.curvature_subset >= 1, "measure.curvature_subset", m.curvature_subset,
          "an integer >= 1")
    _one_of("measure.curvature_dtype", m.curvature_dtype, ("float32", "float64"))
    for f in ("train_subset", "test_subset"):
        v = getattr(m, f)
        _need(v is None or v >= 1, f"measure.{f}", v, "an integer >= 1 or null (all)")
    _need(m.eval_batch >= 1, "measure.eval_batch", m.eval_batch, "an integer >= 1")


def _validate_measure_options(name: str, given: Any, every: int) -> None:
    """``measure.options.<name>``: a known measure's settings, on the measurement schedule."""
    _one_of("measure.options", name, tuple(named.available()))
    _need(isinstance(given, dict), f"measure.options.{name}", given,
          "a mapping of settings (flatlab measures lists them)")
    try:
        own = named.resolve(name, given, field=f"config field measure.options.{name}")["every"]
    except MeasureError as e:
        raise ConfigError(str(e)) from None
    _need(own is None or own % every == 0, f"measure.options.{name}.every", own,
          f"a multiple of measure.every = {every}")
