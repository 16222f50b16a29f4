"""The algorithm contract and the registry.

Every algorithm is a small frozen dataclass of hyper-parameters with two methods (DESIGN.md §4):

    state = algo.init(X0, oracle, mixer)
    state = algo.step(state, batch, oracle, mixer, lr)

``X0`` is the ``[n, P]`` node stack, ``oracle(X, batch) -> (losses [n], G [n, P])`` the gradient
oracle (:class:`~flatlab.engine.Oracle`), ``mixer`` the only way to communicate
(:class:`~flatlab.comm.Mixer`: ``mix``, ``exchange``, ``mean``, edge slots, ``require``); an
algorithm never sees a process group or a graph object. The state is plain data: a dataclass of
tensors shaped like ``X`` plus the step counter ``t``, so it checkpoints (:func:`state_dict` /
:func:`load_state`), moves between devices and compares in tests. Fields marked :func:`derived`
hold what ``init`` works out from the mixer and the oracle (edge slots, a metric's block
structure): they are never saved, and :func:`load_state` keeps them from its template.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch

from flatlab.comm.protocols import Mixer
from flatlab.engine.oracle import Oracle
from flatlab.engine.stack import to_device
from flatlab.errors import AlgorithmError
from flatlab.topology import Topology

__all__ = [
    "Algorithm",
    "State",
    "derived",
    "is_derived",
    "register",
    "make",
    "available",
    "aliases",
    "get",
    "state_dict",
    "load_state",
    "hold",
]


def derived(default: Any = None) -> Any:
    """A state field that ``init`` derives from the mixer or the oracle, never checkpointed.

    For per-process data that follows from the run's setup (a node's edge slots, a metric's
    block structure): :func:`state_dict` leaves it out, so checkpoints hold the same keys with
    or without it, and :func:`load_state` takes it from the freshly initialised template.
    """
    return field(default=default, repr=False, compare=False, metadata={"derived": True})


def is_derived(f: dataclasses.Field) -> bool:
    """Whether the dataclass field ``f`` was declared with :func:`derived`."""
    return bool(f.metadata.get("derived", False))


@dataclass(kw_only=True)
class State:
    """What every algorithm carries between steps.

    Every saved tensor field is stacked by node (its leading dimension indexes the nodes this
    process holds), so a distributed run can split a state into ranks' blocks and gather it back
    for a checkpoint; subclasses keep to this rule. Fields declared with :func:`derived` are this
    process's setup (indices, structure), rebuilt by ``init`` and never saved.

    Attributes:
        x: ``[n, P]`` node parameters.
        t: Number of steps taken (the round index of the next gossip).
        loss: ``[n]`` minibatch losses at the last oracle call of the last step (``None`` when
            the oracle gives none, or before the first step).
    """

    x: torch.Tensor
    t: int = 0
    loss: torch.Tensor | None = None

    def replace(self, **changes: Any) -> State:
        """A copy with some fields replaced (states are treated as immutable)."""
        return dataclasses.replace(self, **changes)


S = TypeVar("S", bound=State)


@dataclass(frozen=True)
class Algorithm:
    """Base of all algorithms: hyper-parameters as frozen fields, plus ``init`` and ``step``.

    Class attributes:
        name: Registry name.
        exact: True when the method reaches the exact minimizer with a constant step and exact
            gradients (no heterogeneity bias).
        vectors_per_neighbor: Vectors each node sends to each neighbour per step.
        hparam_aliases: Other names :func:`make` accepts for a hyper-parameter (the reference's
            ``beta`` for ``momentum``).
        mixing: Kinds of mixing matrices the update is correct for
            (:attr:`flatlab.topology.Topology.stochastic`): ``("doubly",)`` for every method
            whose average ``x̄`` is preserved by ``W`` because ``1ᵀ W = 1ᵀ`` and ``W 1 = 1``;
            push-sum methods (``sgp``) add ``"column"``, and so does ``centralized``, which
            never mixes (it takes exact network averages, whatever the topology); the plain
            gossip methods (consensus, diffusion) add ``"row"``: rounds that lost messages
            still bring the nodes to agreement, on a value that drifts (what they measure).
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = False
    vectors_per_neighbor: ClassVar[int] = 1
    hparam_aliases: ClassVar[dict[str, str]] = {}
    mixing: ClassVar[tuple[str, ...]] = ("doubly",)

    def init(self, X0: torch.Tensor, oracle: Oracle, mixer: Mixer) -> State:  # noqa: N803
        """Initial state from the ``[n, P]`` starting point."""
        raise NotImplementedError

    def step(self, state: State, batch: Any, oracle: Oracle, mixer: Mixer, lr: float) -> State:
        """One iteration with step size ``lr``."""
        raise NotImplementedError

    def check_topology(self, topology: Topology) -> None:
        """Raise :class:`AlgorithmError` if the algorithm cannot run on ``topology``.

        The one place an algorithm states conditions on the graph. Config validation calls it
        with the configured topology, and every ``init`` passes it to ``mixer.require`` (which
        applies it to the mixer's schedule), so a run or a :func:`~flatlab.simulate` call that
        cannot work is refused before it starts. Here: the kind of the matrices must be one of
        :attr:`mixing` (a column-stochastic, push-sum topology is mixed over by ``sgp`` only,
        and accepted by ``centralized``, which never mixes); subclasses that add conditions
        call this first.
        """
        kind = getattr(topology, "stochastic", "doubly")
        if kind not in self.mixing:
            label = getattr(topology, "label", "this topology")
            if kind == "row":
                self._check(False, f"needs mixing that preserves the average, but {label} is "
                                   "only row-stochastic (messages are lost); its update relies "
                                   "on 1ᵀW = 1ᵀ. Methods that mix over it: consensus, "
                                   "diffusion, diffusion-cta")
            self._check(False, f"needs doubly stochastic mixing matrices, but {label} is "
                               "column-stochastic (push-sum weights), which only sgp mixes over; "
                               "use algorithm sgp (or centralized, which never mixes) or a "
                               "doubly stochastic weight rule (metropolis, max-degree, uniform)")

    def hparams(self) -> dict[str, Any]:
        """Hyper-parameters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _check(self, cond: bool, message: str) -> None:
        if not cond:
            raise AlgorithmError(f"{self.name}: {message}")


_REGISTRY: dict[str, type[Algorithm]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *alias: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator adding an algorithm (and its aliases) to the registry."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        _REGISTRY[name] = cls
        for a in alias:
            _ALIASES[a] = name
        return cls

    return deco


def available() -> list[str]:
    """Canonical names of all registered algorithms (aliases are in :func:`aliases`)."""
    return sorted(_REGISTRY)


def aliases() -> dict[str, str]:
    """Alias -> canonical name (e.g. ``dsgd`` -> ``diffusion``)."""
    return dict(_ALIASES)


def get(name: str) -> type[Algorithm]:
    """The class registered under ``name`` or an alias of it."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        names = available() + sorted(_ALIASES)
        raise AlgorithmError(f"unknown algorithm {name!r}; available: {', '.join(names)}")
    return _REGISTRY[key]


def make(name: str, **hparams: Any) -> Algorithm:
    """Build an algorithm by name: ``make("centralized", momentum=0.9)``.

    Raises:
        AlgorithmError: Unknown name, unknown hyper-parameter, or a value out of range.
    """
    cls = get(name)
    for alias, field_name in cls.hparam_aliases.items():
        if alias in hparams:
            if field_name in hparams:
                raise AlgorithmError(f"{cls.name}: give {field_name} or {alias}, not both")
            hparams[field_name] = hparams.pop(alias)
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        acc = ", ".join(accepted) if accepted else "none"
        raise AlgorithmError(f"{cls.name}: unknown hyper-parameter {', '.join(unknown)}; "
                             f"accepted: {acc}")
    hints = typing.get_type_hints(cls)
    for key, value in hparams.items():
        hparams[key] = _typed(cls.name, key, value, hints[key])
    return cls(**hparams)


def _typed(algo: str, key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` of a hyper-parameter (ints pass as floats).

    Raises:
        AlgorithmError: A value of another type, or a number that is not finite.
    """
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
        else (tp,)
    if value is None and type(None) in args:
        return None
    if float in args and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        want = "a finite number"
    elif int in args and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif (bool in args and isinstance(value, bool)) or (str in args and isinstance(value, str)):
        return value
    else:
        want = " or ".join({float: "a number", int: "an integer", bool: "true or false",
                            str: "a string", type(None): "null"}.get(a, a.__name__)
                           for a in args)
    raise AlgorithmError(f"{algo}: hyper-parameter {key} = {value!r} is not accepted; "
                         f"accepted: {want}")


def hold(new: S, old: S, offline: torch.Tensor) -> S:
    """``new`` with the rows of the ``offline`` nodes taken from ``old``: they did not step.

    Node churn (:class:`flatlab.topology.faults.NodeChurn`): an offline node neither computes nor
    communicates, so every per-node field of its state (``x``, momenta, trackers, duals, the
    last gradient, its loss) stays as it was and it rejoins later with that stale state; the
    online nodes' rows, the step counter and :func:`derived` fields are ``new``'s. The round's
    mixing matrix must leave the offline nodes out (``w_ij = 0`` to and from them), as
    ``NodeChurn``'s rounds do, so that no online node used what they would have sent.

    Args:
        new: The state after the step.
        old: The state before it.
        offline: ``[k]`` booleans, one per node this process holds.
    """
    k = offline.shape[0]
    changes: dict[str, Any] = {}
    for f in fields(new):
        if is_derived(f) or f.name == "t":
            continue
        a, b = getattr(new, f.name), getattr(old, f.name)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() \
                and a.shape[0] == k and b.shape == a.shape:
            keep = to_device(offline, a.device).reshape(k, *([1] * (a.dim() - 1)))
            changes[f.name] = torch.where(keep, b, a)
    return dataclasses.replace(new, **changes)


def state_dict(state: State) -> dict[str, Any]:
    """The state as a plain dict (tensors cloned to the CPU), with its class name.

    :func:`derived` fields are left out: they are rebuilt by ``init``.
    """
    out: dict[str, Any] = {"__class__": type(state).__name__}
    for f in fields(state):
        if is_derived(f):
            continue
        v = getattr(state, f.name)
        out[f.name] = v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
    return out


def load_state(d: dict[str, Any], like: S, device: torch.device | str | None = None) -> S:
    """Rebuild a state saved by :func:`state_dict`, of the same class as ``like``.

    ``like`` is a freshly initialised state of the same run; its :func:`derived` fields are
    kept as they are (they belong to this process and its device).
    """
    if d.get("__class__") != type(like).__name__:
        raise AlgorithmError(f"checkpoint holds a {d.get('__class__')} state, the algorithm "
                             f"uses {type(like).__name__}")
    dev = like.x.device if device is None else device
    kw = {}
    for f in fields(like):
        if is_derived(f):
            kw[f.name] = getattr(like, f.name)
            continue
        v = d[f.name]
        kw[f.name] = v.to(dev) if isinstance(v, torch.Tensor) else v
    return type(like)(**kw)
