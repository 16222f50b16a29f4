"""Named measures: what a run schedules, by name, with settings (DESIGN.md section 5).

Each :class:`NamedMeasure` turns the estimators of :mod:`flatlab.curvature` and
:mod:`flatlab.measures` into rows ``(metric, scope, value)`` of the results store (scope
``avg`` for the averaged model ``x̄``, ``mean``/``max`` over nodes, a node id, or ``network``)
and, for measures that are not scalars (spectral densities, landscape slices), rows of an extra
table written next to ``metrics.parquet`` (``density.parquet``, ``landscape.parquet``).

A measure has up to two parts, so that a distributed run computes each quantity once:

- ``nodes``: runs on every process on its own node models (may communicate through
  ``ctx.mixer``); per-node curvature is batched over the process's nodes;
- ``average``: runs once, on rank 0, on ``x̄`` (no communication).

Each measure's settings are a frozen dataclass (``HessianTopSettings``, ...; derived from
:class:`~flatlab.measures.settings.Settings`) that declares every setting's type and default and,
next to it, the choices or the lower limit its estimator accepts. :func:`resolve` checks given
settings (``measure.options`` in a run config, e.g. ``measure.options.hessian_top.k=3`` on the
command line) with the one validator, :func:`~flatlab.measures.settings.validate`; ``every`` (a
multiple of ``measure.every``) thins an expensive measure. The resolved settings are written to
``measures.json`` in the run directory. ``flatlab measures`` lists them all.

Curvature, sharpness and landscapes are measured on a fixed subset of the training evaluation set
(``measure.curvature_subset`` samples, the same at every step, for ``x̄`` and every node;
docs/reference/measures.md section 5.3), in eval mode, in ``measure.curvature_dtype``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from flatlab import measures as ms
from flatlab.comm.protocols import CollectiveGroup
from flatlab.curvature import (
    hessian_operator,
    lanczos,
    node_top_eigenvalues,
    node_traces,
    power_iteration,
    spectral_density,
    trace,
)
from flatlab.curvature.disagreement import (
    deviations,
    disagreement_alignment,
    disagreement_curvature,
    disagreement_gap,
)
from flatlab.curvature.pyhessian import pyhessian_eigenvalues, pyhessian_trace
from flatlab.engine import evaluate, full_gradient
from flatlab.errors import MeasureError
from flatlab.measures import model_loss, node_to_average
from flatlab.measures import sharpness as _sh
from flatlab.measures.settings import Settings, setting, validate
from flatlab.seeds import seed_for

__all__ = ["NamedMeasure", "MeasureContext", "available", "get", "resolve", "describe",
           "rounding_level", "TABLES", "Row"]

Row = tuple[str, str, float]
#: Extra tables (not scalar series) and their columns besides ``step``.
TABLES = {"density": ("run", "index", "eigenvalue", "weight"),
          "landscape": ("kind", "scope", "alpha", "beta", "loss")}


@dataclass
class MeasureContext:
    """What a named measure sees at one measurement step (built by the runner).

    Attributes:
        stack: The node stack (this process's nodes).
        X: ``[k, P]`` this process's node parameters; ``rows`` are their global ids.
        xbar: ``[P]`` the averaged model ``x̄`` (every process).
        buffers_avg: Its buffers.
        train, test: The evaluation sets ``(inputs, targets)``.
        curvature: The curvature subset of ``train``.
        dataset: The run's dataset (``optimum``, ``info["optimum_loss"]`` on synthetic tasks).
        n: Number of nodes of the network.
        step: The training step.
        lr: The step size of the step just taken (``run.lr(step)``; nan when unknown).
        eval_batch: Samples per evaluation chunk.
        per_node: Record per-node rows.
        curvature_dtype: dtype of curvature, sharpness and landscape computations.
        mixer: The run's mixer: ``gather`` (``[k, ...] -> [n, ...]`` rows of every process)
            and ``all_reduce`` (sum over processes); identities in a simulated run.
        comm_bytes: Bytes sent by the network so far.
        cache: Shared between measures at one step (node and average evaluations).
        top_wanted: ``{(tol, max_iter, seed): k}``, the most top eigenpairs at ``x̄`` any due
            measure asks :meth:`avg_top` for with those settings (:func:`top_wanted`).
        tables: Rows of extra tables written by non-scalar measures, ``{table: [dict]}``.
    """

    stack: Any
    X: torch.Tensor
    xbar: torch.Tensor
    buffers_avg: dict[str, torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    curvature: tuple[torch.Tensor, torch.Tensor]
    dataset: Any
    n: int
    rows: slice
    step: int
    mixer: CollectiveGroup
    eval_batch: int = 2048
    per_node: bool = True
    curvature_dtype: torch.dtype = torch.float32
    comm_bytes: float = 0.0
    lr: float = math.nan
    cache: dict[str, Any] = field(default_factory=dict)
    top_wanted: dict[tuple[float, int, int], int] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    # ------------------------------------------------------------------ shared evaluations
    def node_eval(self, split: str, samples: int | None = None):
        """Loss and accuracy of every node on ``split`` (``[n]``, gathered), computed once.

        ``samples``: a fixed subset of that many samples of the evaluation set (the same at
        every step and for every node: the first of a permutation seeded by the split alone);
        ``None`` for the whole set.
        """
        key = f"node_eval/{split}/{samples}"
        if key not in self.cache:

            x, y = self.train if split == "train" else self.test
            if samples is not None and samples < x.shape[0]:
                gen = torch.Generator().manual_seed(seed_for(0, "eval_subset",
                                                             0 if split == "train" else 1))
                keep = torch.randperm(x.shape[0], generator=gen, device="cpu")
                keep = keep[:samples].sort().values
                x, y = x[keep.to(x.device)], y[keep.to(y.device)]
            ev = evaluate(self.stack, self.X, x, y, average=False, batch_size=self.eval_batch)
            acc = None if ev.accuracy_nodes is None else self.gathered(ev.accuracy_nodes)
            self.cache[key] = (self.gathered(ev.loss_nodes), acc)
        return self.cache[key]

    def gathered(self, v: torch.Tensor) -> torch.Tensor:
        """Per-node values ``[k]`` of this process -> ``[n]`` of every node, on the CPU."""
        return self.mixer.gather(v.to(self.stack.device)).cpu()

    def avg_eval(self, split: str):
        """Loss and accuracy of ``x̄`` on ``split``, computed once (rank 0)."""
        key = f"avg_eval/{split}"
        if key not in self.cache:

            x, y = self.train if split == "train" else self.test
            ev = evaluate(self.stack, self.X[:1], x, y, nodes=False, batch_size=self.eval_batch,
                          xbar=self.xbar, buffers_avg=self.buffers_avg)
            self.cache[key] = (ev.loss_avg, ev.accuracy_avg)
        return self.cache[key]

    # ------------------------------------------------------------------ curvature helpers
    def curvature_stack(self):
        """The stack in ``curvature_dtype`` (a copy when it differs from the training dtype)."""
        key = "curvature_stack"
        if key not in self.cache:
            s = self.stack
            if s.dtype != self.curvature_dtype:
                s = copy.copy(s)
                s.module = copy.deepcopy(self.stack.module).to(dtype=self.curvature_dtype)
                s.dtype = self.curvature_dtype
                s.buffers = {k: (v.to(self.curvature_dtype) if v.is_floating_point() else v)
                             for k, v in self.stack.buffers.items()}
            self.cache[key] = s
        return self.cache[key]

    def to_curvature(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` detached, on the stack's device, in ``curvature_dtype``."""
        return t.detach().to(self.stack.device, self.curvature_dtype)

    def avg_buffers(self) -> dict[str, torch.Tensor]:
        """``x̄``'s buffers in ``curvature_dtype``."""
        return {k: (self.to_curvature(v) if v.is_floating_point() else v)
                for k, v in self.buffers_avg.items()}

    def avg_loss_fn(self):
        """``x ↦ f(x)`` on the curvature subset with ``x̄``'s buffers, and ``x̄`` cast."""
        return model_loss(self.curvature_stack(), *self.curvature, buffers=self.avg_buffers(),
                          batch_size=self.eval_batch), self.to_curvature(self.xbar)

    def avg_hessian(self):
        """The Hessian operator of ``f`` at ``x̄`` on the curvature subset (one per step).

        Shared by the measures of a step, so its gradient graph is built once.
        """
        if "avg_hessian" not in self.cache:
            fn, x = self.avg_loss_fn()
            self.cache["avg_hessian"] = hessian_operator(fn, x)
        return self.cache["avg_hessian"]

    def avg_top(self, k: int, tol: float, max_iter: int, seed: int):
        """Lanczos' top-``k`` eigenpairs of ``H(x̄)`` with vectors, once per step and setting.

        Shared by ``hessian_top``, ``disagreement_alignment`` and ``edge_of_stability``: with
        the same ``tol``, ``max_iter`` and ``seed`` one solve runs at a step, for the largest
        ``k`` a due measure wants (:attr:`top_wanted`), and each gets its first ``k`` pairs
        (each converged to ``tol``, so a value differs from a solve for fewer pairs by at most
        the tolerance).
        """
        most = max(k, self.top_wanted.get((tol, max_iter, seed), 0))
        key = f"avg_top/{most}/{tol}/{max_iter}/{seed}"
        if key not in self.cache:
            self.cache[key] = lanczos(self.avg_hessian(), most, tol=tol, max_iter=max_iter,
                                      seed=seed, return_vectors=True)
        res = self.cache[key]
        if most == k:
            return res
        return dataclasses.replace(res, eigenvalues=res.eigenvalues[:k],
                                   residuals=res.residuals[:k], converged=res.converged[:k],
                                   eigenvectors=res.eigenvectors[:k])

    def node_curvature(self, subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``subset`` samples of the curvature subset (all of it for ``None``).

        The curvature subset is the head of a fixed shuffle, so its head is a fixed random
        subset too: what the per-node curvature measures use, ``n`` Hessians being ``n`` times
        the cost of one.
        """
        x, y = self.curvature
        return (x, y) if subset is None else (x[:subset], y[:subset])

    def node_top(self, k: int, tol: float, max_iter: int, seed: int, strategy: str,
                 subset: int | None = None):
        """Every node's top-``k`` eigenvalues (this process's nodes), computed once per step."""
        key = f"node_top/{k}/{tol}/{max_iter}/{seed}/{strategy}/{subset}"
        if key not in self.cache:
            self.cache[key] = node_top_eigenvalues(
                self.curvature_stack(), self.to_curvature(self.X), *self.node_curvature(subset),
                k=k, tol=tol, max_iter=max_iter, seed=seed, first_node=self.rows.start,
                strategy=strategy, batch_size=self.eval_batch)
        return self.cache[key]

    def all_nodes(self) -> torch.Tensor:
        """``[n, P]`` every node's parameters (gathered; on rank 0 after the ``nodes`` part)."""
        if "all_nodes" not in self.cache:
            self.cache["all_nodes"] = self.mixer.gather(self.X)
        return self.cache["all_nodes"]

    def deviations(self) -> tuple[torch.Tensor, bool]:
        """``D = X − 1x̄ᵀ`` (float64, every node) and whether it is above rounding level.

        Computed once per step for the mechanism's measures. Nodes that agree up to rounding
        (centralized SGD, Local SGD right after an averaging) have ``Ξ² ≈ (ε‖x̄‖)²``; at or
        below ``rounding_level(dtype) · ‖x̄‖²`` the gap's ratio and the alignment of the
        disagreement are rounding noise and are not recorded.
        """
        if "deviations" not in self.cache:

            D = deviations(self.all_nodes(), self.xbar)  # noqa: N806
            xi2 = float(D.pow(2).sum()) / D.shape[0]
            above = xi2 > rounding_level(self.X.dtype) * float(self.xbar.double().pow(2).sum())
            self.cache["deviations"] = (D, above)
        return self.cache["deviations"]


def top_wanted(ctx: MeasureContext, due: Mapping[str, Mapping[str, Any]],
               ) -> dict[tuple[float, int, int], int]:
    """``{(tol, max_iter, seed): k}``: the most top eigenpairs at ``x̄`` ``due`` measures want."""
    out: dict[tuple[float, int, int], int] = {}
    for name, s in due.items():
        m = get(name)
        k = m.top_k(ctx, dict(s)) if m.top_k is not None else None
        if k:
            key = (s["tol"], s["max_iter"], s["seed"])
            out[key] = max(out.get(key, 0), k)
    return out


def rounding_level(dtype: torch.dtype) -> float:
    """``(8 ε)²`` of ``dtype``: ``Ξ² / ‖x̄‖²`` at or below it is a disagreement of rounding."""
    return float(8 * torch.finfo(dtype).eps) ** 2


@dataclass(frozen=True)
class NamedMeasure:
    """A measure a run can schedule.

    Attributes:
        name: Its name in ``measure.metrics``.
        summary: One line: what it records.
        metrics: The metric names it writes (``metric`` column).
        settings: Its settings class (a frozen dataclass deriving from :class:`Settings`: every
            setting's type, default, and choices or limits).
        nodes: ``(ctx, settings) -> rows``, on every process (may communicate); ``settings`` is
            the dict :func:`resolve` returns.
        average: ``(ctx, settings) -> rows``, once on rank 0, on ``x̄``.
        source: Where the definition comes from.
        thin: Without an ``every`` of its own, measured at every ``thin``-th measurement
            (``every = thin × measure.every``; 1: at each): the expensive measures of the
            mechanism thin themselves so that scheduling them keeps a run's cost bounded.
        top_k: ``(ctx, settings) -> k or None``: how many top eigenpairs at ``x̄`` the
            average part will ask :meth:`MeasureContext.avg_top` for (with the settings'
            ``tol``, ``max_iter`` and ``seed``), so that one solve serves every measure due.
    """

    name: str
    summary: str
    metrics: tuple[str, ...]
    settings: type[Settings] = Settings
    nodes: Callable[[MeasureContext, dict], list[Row]] | None = None
    average: Callable[[MeasureContext, dict], list[Row]] | None = None
    source: str = ""
    thin: int = 1
    top_k: Callable[[MeasureContext, dict], int | None] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Its own settings and their defaults (without ``every``, which every measure has)."""
        return {f.name: f.default for f in dataclasses.fields(self.settings)
                if f.name != "every"}


_REGISTRY: dict[str, NamedMeasure] = {}


def _register(m: NamedMeasure) -> None:
    _REGISTRY[m.name] = m


def available() -> list[str]:
    """Names of every named measure, in the order ``flatlab measures`` lists them."""
    return list(_REGISTRY)


def get(name: str) -> NamedMeasure:
    """The measure called ``name``."""
    if name not in _REGISTRY:
        raise MeasureError(f"measure {name!r} is unknown; accepted: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def resolve(name: str, given: Mapping[str, Any] | None = None, *,
            field: str | None = None) -> dict[str, Any]:
    """The settings of ``name``: its defaults updated by ``given``, checked.

    Each setting is checked by name, type, choices and range (what the estimator accepts,
    declared next to the setting in the measure's :class:`Settings` class), and across settings
    (``max_iter >= k``), so that a run is refused before it starts.

    Args:
        name: The measure.
        given: Settings to change.
        field: How messages name the settings (``"measure.options.hessian_top"`` in a config);
            default ``"measure NAME setting"``.

    Raises:
        MeasureError: An unknown setting, or a value of the wrong type or out of range.
    """
    s = validate(get(name).settings, given, name=name, field=field)
    return dataclasses.asdict(s)


def describe() -> list[dict[str, Any]]:
    """Every measure as a dict: name, summary, metrics, where it runs, settings, source."""
    out = []
    for m in _REGISTRY.values():
        on = "+".join(p for p, f in (("nodes", m.nodes), ("average", m.average)) if f)
        settings = {f.name: f.default for f in dataclasses.fields(m.settings)}
        out.append({"name": m.name, "summary": m.summary, "metrics": list(m.metrics),
                    "on": on, "settings": settings, "source": m.source, "thin": m.thin})
    return out


# ====================================================================== the measures
@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """Settings of ``loss`` and ``accuracy``.

    x̄ is evaluated on the whole evaluation sets (``measure.train_subset``,
    ``measure.test_subset``); the ``n`` node models on a fixed subset of ``node_subset`` samples
    of each (the same at every step and for every node; ``null`` for the whole sets). The node
    models are ``n`` of the ``n + 1`` evaluations: on a 16-node 1-D CNN with the whole sets
    (2,048 + 1,000 samples) ``loss`` cost 22% of a run measured every 100 steps; the default
    subset makes the per-node values and their mean noisier, not x̄'s
    (``benchmarks/measure_cost.py``).
    """

    node_subset: int | None = setting(256, low=1)


def _loss_nodes(metric: str) -> Callable[[MeasureContext, dict], list[Row]]:
    def nodes(ctx: MeasureContext, s: dict) -> list[Row]:
        rows: list[Row] = []
        for split in ("train", "test"):
            loss, acc = ctx.node_eval(split, s["node_subset"])
            v = loss if metric == "loss" else acc
            if v is None:
                continue
            rows.append((f"{split}_{metric}", "mean", float(v.mean())))
            if ctx.per_node:
                rows += [(f"{split}_{metric}", str(i), float(u)) for i, u in enumerate(v)]
        return rows
    return nodes


def _loss_average(metric: str) -> Callable[[MeasureContext, dict], list[Row]]:
    def average(ctx: MeasureContext, s: dict) -> list[Row]:
        rows: list[Row] = []
        for split in ("train", "test"):
            loss, acc = ctx.avg_eval(split)
            v = loss if metric == "loss" else acc
            if v is not None:
                rows.append((f"{split}_{metric}", "avg", float(v)))
        return rows
    return average


_register(NamedMeasure(
    "loss", "training and test loss of x̄ (avg; the whole evaluation sets), mean over nodes "
    "and each node (on node_subset samples of each)",
    ("train_loss", "test_loss"), settings=EvaluationSettings, nodes=_loss_nodes("loss"),
    average=_loss_average("loss"), source="docs/reference/measures.md §11"))
_register(NamedMeasure(
    "accuracy", "training and test accuracy of x̄ (avg; the whole evaluation sets), mean over "
    "nodes and each node (on node_subset samples of each)",
    ("train_accuracy", "test_accuracy"), settings=EvaluationSettings,
    nodes=_loss_nodes("accuracy"), average=_loss_average("accuracy"),
    source="docs/reference/measures.md §11"))


def _consensus_distance(ctx: MeasureContext, s: dict) -> list[Row]:
    X64 = ctx.X.double()  # noqa: N806 - accumulate in float64
    xbar = ctx.mixer.all_reduce(X64.sum(0)) / ctx.n
    xi2 = float(ctx.mixer.gather((X64 - xbar).pow(2).sum(1)).sum()) / ctx.n
    return [("consensus_distance", "network", xi2),
            ("consensus_distance_rel", "network", xi2 / max(float(xbar.pow(2).sum()), 1e-300))]


_register(NamedMeasure(
    "consensus_distance", "Ξ² = (1/n) Σ ‖x_i − x̄‖² and Ξ² / ‖x̄‖²",
    ("consensus_distance", "consensus_distance_rel"), nodes=_consensus_distance,
    source="docs/reference/measures.md §10"))


def _grad_norm(ctx: MeasureContext, s: dict) -> list[Row]:
    g = full_gradient(ctx.stack, ctx.xbar, *ctx.train, batch_size=ctx.eval_batch,
                      buffers=ctx.buffers_avg)
    return [("grad_norm", "avg", float(g.norm()))]


_register(NamedMeasure(
    "grad_norm", "‖∇f(x̄)‖ of the full training evaluation set (optimization error)",
    ("grad_norm",), average=_grad_norm, source="docs/reference/measures.md §11"))

_register(NamedMeasure(
    "comm_bytes", "bytes sent by all nodes so far (always recorded)", ("comm_bytes",),
    nodes=lambda ctx, s: [("comm_bytes", "network", float(ctx.comm_bytes))],
    source="the mixer's counts"))


def _consensus_gap_nodes(ctx: MeasureContext, s: dict) -> list[Row]:
    ctx.node_eval("train")
    return []


def _consensus_gap(ctx: MeasureContext, s: dict) -> list[Row]:
    loss, _ = ctx.node_eval("train")
    avg, _ = ctx.avg_eval("train")
    return [("consensus_gap", "network", float(loss.double().mean()) - float(avg))]


_register(NamedMeasure(
    "consensus_gap", "(1/n) Σ f(x_i) − f(x̄) on the training evaluation set (≈ ½ tr(H C))",
    ("consensus_gap",), nodes=_consensus_gap_nodes, average=_consensus_gap,
    source="docs/reference/measures.md §10"))


def check_optimum(dataset: Any) -> None:
    """``loss_gap``'s requirement, in one place: a task with a known optimum and its loss.

    Raises:
        MeasureError: The data set has none (what the config refuses before a run, too).
    """
    info = getattr(dataset, "info", {}) or {}
    if getattr(dataset, "optimum", None) is None or info.get("optimum_loss") is None:
        raise MeasureError(f"loss_gap needs a task with a known optimum (data.name "
                           f"least-squares or logistic); {dataset.name!r} has none")


def _loss_gap(ctx: MeasureContext, s: dict) -> list[Row]:
    check_optimum(ctx.dataset)
    info = ctx.dataset.info
    fstar = info["optimum_loss"]
    x, y = ctx.dataset.x_train, ctx.dataset.y_train
    stack = ctx.curvature_stack()
    fn = model_loss(stack, x, y.to(stack.dtype) if y.is_floating_point() else y,
                    buffers=None, batch_size=ctx.eval_batch)
    xb = ctx.to_curvature(ctx.xbar)  # in the curvature dtype, as the loss
    f = float(fn(xb)) + 0.5 * float(info.get("l2", 0.0)) * float(xb.double().pow(2).sum())
    return [("loss_gap", "avg", f - float(fstar))]


_register(NamedMeasure(
    "loss_gap", "f(x̄) − f* on the whole training set, on tasks with a known optimum",
    ("loss_gap",), average=_loss_gap, source="docs/reference/theory.md (optimization error)"))


# ---------------------------------------------------------------------- curvature
def _krylov_steps(k: int, max_iter: int) -> str | None:
    """Lanczos needs at least ``k`` steps for ``k`` eigenvalues."""
    if max_iter >= k:
        return None
    return f"max_iter = {max_iter} is below k = {k}; accepted: max_iter >= k"


@dataclass(frozen=True)
class HessianTopSettings(Settings):
    """Settings of ``hessian_top`` (Lanczos, power iteration or PyHessian at ``x̄``)."""

    k: int = setting(1, low=1)
    tol: float = setting(1e-3, low=0.0, strict=True)
    max_iter: int = setting(100, low=1)
    method: str = setting("lanczos", choices=("lanczos", "power"))
    smallest: bool = setting(False)
    backend: str = setting("flatlab", choices=("flatlab", "pyhessian"))
    seed: int = setting(0, low=0)

    def problem(self) -> str | None:
        """Lanczos needs ``max_iter >= k``."""
        return _krylov_steps(self.k, self.max_iter)


@dataclass(frozen=True)
class HessianTopNodesSettings(Settings):
    """Settings of ``hessian_top_nodes`` (:func:`~flatlab.curvature.node_top_eigenvalues`).

    ``strategy``: ``auto`` (one node at a time on the CPU, all at once on a GPU), ``batched`` or
    ``sequential``. ``subset``: each node's Hessian on the first ``subset`` samples of the
    curvature subset (``null``: all of it); ``n`` Lanczos runs cost ``n`` times one, so the
    default 128 keeps them to a quarter of the default 512-sample subset's cost.
    """

    k: int = setting(1, low=1)
    tol: float = setting(1e-3, low=0.0, strict=True)
    max_iter: int = setting(100, low=1)
    seed: int = setting(0, low=0)
    strategy: str = setting("auto", choices=("auto", "batched", "sequential"))
    subset: int | None = setting(128, low=1)

    def problem(self) -> str | None:
        """Lanczos needs ``max_iter >= k``."""
        return _krylov_steps(self.k, self.max_iter)


@dataclass(frozen=True)
class HessianTraceSettings(Settings):
    """Settings of ``hessian_trace`` (:func:`~flatlab.curvature.trace` or PyHessian at ``x̄``).

    Its cost is ``num_matvecs`` Hessian-vector products per call, each about 1.1-1.3 gradients
    on the curvature subset: with the default 60 on a 16-node 1-D CNN, measured every 100 steps,
    it is 41% of a 1000-step run's time (``benchmarks/measure_cost.py``). Halving the products
    widens the standard error by about 1.4x.
    """

    num_matvecs: int = setting(60, low=2)
    method: str = setting("hutch++", choices=("hutch++", "hutchinson"))
    backend: str = setting("flatlab", choices=("flatlab", "pyhessian"))
    seed: int = setting(0, low=0)

    def problem(self) -> str | None:
        """Hutch++ needs at least 3 products, Hutchinson 2."""
        low = 3 if self.method == "hutch++" else 2
        if self.num_matvecs >= low:
            return None
        return f"method {self.method} needs num_matvecs >= {low} (got {self.num_matvecs})"


@dataclass(frozen=True)
class SpectralDensitySettings(Settings):
    """Settings of ``spectral_density`` (:func:`~flatlab.curvature.spectral_density` at ``x̄``)."""

    num_runs: int = setting(4, low=1)
    lanczos_steps: int = setting(40, low=1)
    seed: int = setting(0, low=0)


def _eig_rows(name: str, res, scope: str, smallest: bool = False) -> list[Row]:
    ev = res.eigenvalues
    rows = [(name, scope, float(ev[0]))]
    rows += [(f"{name}_{j + 1}", scope, float(ev[j])) for j in range(1, ev.numel())]
    rows += [(f"{name}_residual", scope, float(res.residuals.max())),
             (f"{name}_converged", scope, float(bool(res.converged.all()))),
             (f"{name}_matvecs", scope, float(res.num_matvecs))]
    return rows


def _hessian_top(ctx: MeasureContext, s: dict) -> list[Row]:
    if s["backend"] == "pyhessian":

        res = pyhessian_eigenvalues(ctx.curvature_stack(), ctx.to_curvature(ctx.xbar),
                                    *ctx.curvature, k=s["k"], tol=s["tol"], max_iter=s["max_iter"],
                                    buffers=ctx.avg_buffers(), seed=s["seed"])
        return _eig_rows("hessian_top", res, "avg")
    op = ctx.avg_hessian()
    if s["method"] == "power":
        res = power_iteration(op, s["k"], max_iter=s["max_iter"], tol=s["tol"], seed=s["seed"])
    else:
        res = ctx.avg_top(s["k"], s["tol"], s["max_iter"], s["seed"])
    rows = _eig_rows("hessian_top", res, "avg")
    if s["smallest"]:
        low = lanczos(op, 1, which="smallest", tol=s["tol"], max_iter=s["max_iter"],
                      seed=s["seed"])
        rows += [("hessian_min", "avg", float(low.eigenvalues[0])),
                 ("hessian_min_converged", "avg", float(bool(low.converged.all())))]
    return rows


_register(NamedMeasure(
    "hessian_top", "top-k Hessian eigenvalues of x̄ (Lanczos, residual and converged flag); "
    "the smallest on request", ("hessian_top", "hessian_top_residual", "hessian_top_converged",
                                "hessian_top_matvecs", "hessian_min"),
    settings=HessianTopSettings, average=_hessian_top, source="docs/reference/measures.md §5",
    top_k=lambda ctx, s: s["k"] if s["method"] == "lanczos" and s["backend"] == "flatlab"
    else None))


def _gather_nodes(ctx: MeasureContext, s: dict) -> list[Row]:
    ctx.all_nodes()  # a collective: every process, before the average part
    return []


def _spread(metric: str, v: torch.Tensor, per_node: bool) -> list[Row]:
    """``mean``, ``max``, ``min`` and ``std`` (over nodes, n − 1) of per-node values, and each."""
    v = v.double()
    rows = [(metric, "mean", float(v.mean())), (metric, "max", float(v.max())),
            (metric, "min", float(v.min())),
            (metric, "std", float(v.std(correction=1)) if v.numel() > 1 else 0.0)]
    if per_node:
        rows += [(metric, str(i), float(u)) for i, u in enumerate(v)]
    return rows


def _hessian_top_nodes(ctx: MeasureContext, s: dict) -> list[Row]:
    res = ctx.node_top(s["k"], s["tol"], s["max_iter"], s["seed"], s["strategy"], s["subset"])
    top = ctx.gathered(res.eigenvalues[:, 0].double())
    ok = ctx.gathered(res.converged.all(1).double())
    return [*_spread("hessian_top", top, ctx.per_node),
            ("hessian_top_converged", "nodes", float(ok.min()))]


_register(NamedMeasure(
    "hessian_top_nodes", "top Hessian eigenvalue of every node model (each with its own "
    "buffers and start vector; one at a time on the CPU, batched on a GPU): mean, max, min, "
    "std over nodes (the curvature's spread across nodes) and each",
    ("hessian_top", "hessian_top_converged"),
    settings=HessianTopNodesSettings, nodes=_hessian_top_nodes,
    source="docs/reference/measures.md §5", thin=10))


def _hessian_trace(ctx: MeasureContext, s: dict) -> list[Row]:
    if s["backend"] == "pyhessian":

        res = pyhessian_trace(ctx.curvature_stack(), ctx.to_curvature(ctx.xbar), *ctx.curvature,
                              max_iter=s["num_matvecs"], buffers=ctx.avg_buffers(),
                              seed=s["seed"])
    else:

        res = trace(ctx.avg_hessian(), s["num_matvecs"], method=s["method"], seed=s["seed"])
    return [("hessian_trace", "avg", float(res.estimate)),
            ("hessian_trace_stderr", "avg", float(res.stderr))]


_register(NamedMeasure(
    "hessian_trace", "tr(H) at x̄ by Hutch++ (or Hutchinson) with its standard error",
    ("hessian_trace", "hessian_trace_stderr"),
    settings=HessianTraceSettings, average=_hessian_trace, source="docs/reference/measures.md §6"))


@dataclass(frozen=True)
class HessianTraceNodesSettings(Settings):
    """Settings of ``hessian_trace_nodes`` (:func:`~flatlab.curvature.node_traces`).

    Every node's trace on the first ``subset`` samples of the curvature subset with its own
    buffers, ``num_matvecs`` products per node; node ``i``'s probes come from its own seed, so
    its estimate depends neither on ``strategy`` (``auto``: one node at a time on the CPU, all
    at once on a GPU) nor on how nodes are split over processes.
    """

    num_matvecs: int = setting(9, low=2)
    method: str = setting("hutch++", choices=("hutch++", "hutchinson"))
    seed: int = setting(0, low=0)
    strategy: str = setting("auto", choices=("auto", "batched", "sequential"))
    subset: int | None = setting(128, low=1)

    def problem(self) -> str | None:
        """Hutch++ needs at least 3 products, Hutchinson 2."""
        return HessianTraceSettings.problem(self)  # type: ignore[arg-type]


def _hessian_trace_nodes(ctx: MeasureContext, s: dict) -> list[Row]:
    res = node_traces(ctx.curvature_stack(), ctx.to_curvature(ctx.X),
                      *ctx.node_curvature(s["subset"]), num_matvecs=s["num_matvecs"],
                      method=s["method"], seed=s["seed"], first_node=ctx.rows.start,
                      strategy=s["strategy"], batch_size=ctx.eval_batch)
    est = ctx.gathered(torch.as_tensor(res.estimate, dtype=torch.float64, device="cpu"))
    err = ctx.gathered(torch.as_tensor(res.stderr, dtype=torch.float64, device="cpu"))
    return [*_spread("hessian_trace", est, ctx.per_node),
            ("hessian_trace_stderr", "max", float(err.max()))]


_register(NamedMeasure(
    "hessian_trace_nodes", "tr(H) of every node model by Hutch++ (each node its own probes): "
    "mean, max, min, std over nodes and each, with the largest standard error",
    ("hessian_trace", "hessian_trace_stderr"), settings=HessianTraceNodesSettings,
    nodes=_hessian_trace_nodes, source="docs/reference/measures.md §6, §10.4", thin=10))


# ---------------------------------------------------------------------- the mechanism
@dataclass(frozen=True)
class DisagreementSettings(Settings):
    """Settings of ``disagreement`` (:func:`~flatlab.curvature.disagreement_curvature`).

    ``probes``: 0 for the exact ``tr(HΣ) = (1/n) Σ_i d_iᵀ H d_i`` (``n`` Hessian-vector
    products at x̄); ``k ≥ 2`` for the unbiased estimate from ``k`` Rademacher combinations of
    the deviations, with its standard error (``k`` products whatever ``n``: for large ``n``).
    The gap costs ``n + 1`` forward passes over the curvature subset.
    """

    probes: int = setting(0, low=0)
    seed: int = setting(0, low=0)

    def problem(self) -> str | None:
        """One probe has no standard error."""
        if self.probes == 1:
            return "probes = 1 gives no standard error; accepted: 0 (exact) or >= 2"
        return None


def _disagreement(ctx: MeasureContext, s: dict) -> list[Row]:
    fn, xbar = ctx.avg_loss_fn()
    D, disagrees = ctx.deviations()  # noqa: N806
    c = disagreement_curvature(ctx.avg_hessian(), D, probes=s["probes"], seed=s["seed"])
    g = disagreement_gap(fn, xbar, D, c.value)
    rows = [("disagreement_curvature", "avg", c.value),
            ("disagreement_gap", "avg", g.gap),
            ("disagreement_gap_predicted", "avg", g.predicted)]
    if s["probes"]:
        rows.append(("disagreement_curvature_stderr", "avg", c.stderr))
    if disagrees:  # a ratio of rounding noise says nothing
        rows += [("disagreement_gap_ratio", "avg", g.ratio),
                 ("disagreement_rayleigh", "avg", c.rayleigh)]
    return rows


_register(NamedMeasure(
    "disagreement", "the disagreement through the curvature at x̄: tr(HΣ) (Σ = (1/n) Σ d_i d_iᵀ), "
    "the gap (1/n) Σ f(x_i) − f(x̄) on the curvature subset beside ½ tr(HΣ), their ratio, and "
    "tr(HΣ)/Ξ²", ("disagreement_curvature", "disagreement_curvature_stderr", "disagreement_gap",
                  "disagreement_gap_predicted", "disagreement_gap_ratio",
                  "disagreement_rayleigh"),
    settings=DisagreementSettings, nodes=_gather_nodes, average=_disagreement,
    source="docs/reference/measures.md §10.4 (Zhu et al., ICML 2023)", thin=10))


@dataclass(frozen=True)
class AlignmentSettings(Settings):
    """Settings of ``disagreement_alignment`` (top-``k`` Ritz vectors of ``H(x̄)`` by Lanczos).

    With ``hessian_top``'s and ``edge_of_stability``'s ``tol``, ``max_iter`` and ``seed`` one
    Lanczos solve at a step serves all three (:meth:`MeasureContext.avg_top`). Without
    disagreement above rounding (the start, centralized SGD) the share is undefined: only
    ``k / P`` is recorded and no solve runs.
    """

    k: int = setting(5, low=1)
    tol: float = setting(1e-3, low=0.0, strict=True)
    max_iter: int = setting(100, low=1)
    seed: int = setting(0, low=0)

    def problem(self) -> str | None:
        """Lanczos needs ``max_iter >= k``."""
        return _krylov_steps(self.k, self.max_iter)


def _alignment(ctx: MeasureContext, s: dict) -> list[Row]:
    D, disagrees = ctx.deviations()  # noqa: N806
    rows = [("disagreement_alignment_chance", "avg", s["k"] / D.shape[1])]
    if not disagrees:  # undefined without disagreement (the share of nothing): no solve
        return rows
    res = ctx.avg_top(s["k"], s["tol"], s["max_iter"], s["seed"])
    a = disagreement_alignment(res.eigenvectors, D)
    return [*rows, ("disagreement_alignment_converged", "avg", float(bool(res.converged.all()))),
            ("disagreement_alignment", "avg", a.share),
            *((f"disagreement_alignment_{j + 1}", "avg", float(v))
              for j, v in enumerate(a.per_direction))]


_register(NamedMeasure(
    "disagreement_alignment", "share of ‖X − 1x̄ᵀ‖_F² in the top-k Hessian eigenspace at x̄, "
    "each direction's share, and k/P (a random direction's share)",
    ("disagreement_alignment", "disagreement_alignment_chance",
     "disagreement_alignment_converged"),
    settings=AlignmentSettings, nodes=_gather_nodes, average=_alignment,
    source="docs/reference/measures.md §10.4", thin=10,
    top_k=lambda ctx, s: s["k"] if ctx.deviations()[1] else None))


@dataclass(frozen=True)
class EdgeOfStabilitySettings(Settings):
    """Settings of ``edge_of_stability`` (``η λ_max / 2`` at x̄, and per node with ``nodes``).

    Per node it is ``n`` Lanczos runs (7.6 s per call for a 16-node 1-D CNN on one AMD EPYC
    core, ``benchmarks/measure_cost.py --mechanism``), so ``nodes`` is off by default.

    ``λ_max`` at x̄ is ``hessian_top``'s and ``disagreement_alignment``'s (one solve when ``tol``,
    ``max_iter`` and ``seed`` agree);
    per node it is ``hessian_top_nodes``' (each node's Hessian on the first ``subset`` samples
    of the curvature subset with its own buffers), ``strategy`` and ``subset`` as there.
    """

    nodes: bool = setting(False)
    tol: float = setting(1e-3, low=0.0, strict=True)
    max_iter: int = setting(100, low=1)
    seed: int = setting(0, low=0)
    strategy: str = setting("auto", choices=("auto", "batched", "sequential"))
    subset: int | None = setting(128, low=1)


def _step_size(ctx: MeasureContext) -> float:
    if not math.isfinite(ctx.lr):
        raise MeasureError("edge_of_stability needs the run's step size; the measure context "
                           "has none")
    return float(ctx.lr)


def _edge_nodes(ctx: MeasureContext, s: dict) -> list[Row]:
    if not s["nodes"]:
        return []
    res = ctx.node_top(1, s["tol"], s["max_iter"], s["seed"], s["strategy"], s["subset"])
    top = ctx.gathered(res.eigenvalues[:, 0].double())
    return _spread("edge_of_stability", _step_size(ctx) * top / 2, ctx.per_node)


def _edge(ctx: MeasureContext, s: dict) -> list[Row]:
    res = ctx.avg_top(1, s["tol"], s["max_iter"], s["seed"])
    return [("edge_of_stability", "avg", _step_size(ctx) * float(res.eigenvalues[0]) / 2)]


_register(NamedMeasure(
    "edge_of_stability", "η λ_max / 2 at x̄ and, with nodes=true, at every node (mean, max, "
    "min, std, each): gradient descent on the local quadratic is stable below 1 (Cohen et al., "
    "ICLR 2021)",
    ("edge_of_stability",), settings=EdgeOfStabilitySettings, nodes=_edge_nodes,
    average=_edge, source="docs/reference/measures.md §10.4", thin=10,
    top_k=lambda ctx, s: 1))


def _spectral_density(ctx: MeasureContext, s: dict) -> list[Row]:
    d = spectral_density(ctx.avg_hessian(), num_runs=s["num_runs"],
                         lanczos_steps=s["lanczos_steps"], num_grid_points=64, seed=s["seed"])
    nodes, weights = d.nodes.double().cpu(), d.weights.double().cpu()
    table = ctx.tables.setdefault("density", [])
    for r in range(nodes.shape[0]):
        table += [{"run": r, "index": j, "eigenvalue": float(nodes[r, j]),
                   "weight": float(weights[r, j])} for j in range(nodes.shape[1])]
    negative = float((weights * (nodes < 0)).sum(1).mean())
    return [("hessian_negative_mass", "avg", negative),
            ("hessian_trace_slq", "avg", float(d.trace))]


_register(NamedMeasure(
    "spectral_density", "Hessian spectral density at x̄ by SLQ (Ritz values and weights to "
    "density.parquet; weight on negative eigenvalues)", ("hessian_negative_mass",
                                                          "hessian_trace_slq"),
    settings=SpectralDensitySettings, average=_spectral_density,
    source="docs/reference/measures.md §7"))


# ---------------------------------------------------------------------- sharpness
@dataclass(frozen=True)
class WorstSharpnessSettings(Settings):
    """Settings of ``sharpness_worst`` (:func:`~flatlab.measures.sharpness_worst` at ``x̄``)."""

    rho: float = setting(_sh.RHO, low=0.0, strict=True)
    norm: str = setting("l2", choices=("l2", "linf"))
    adaptive: bool = setting(False)
    eta: float = setting(0.0, low=0.0)
    steps: int = setting(_sh.STEPS, low=0)
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class AverageSharpnessSettings(Settings):
    """Settings of ``sharpness_average`` (:func:`~flatlab.measures.sharpness_average`)."""

    sigma: float = setting(_sh.SIGMA, low=0.0, strict=True)
    adaptive: bool = setting(False)
    eta: float = setting(0.0, low=0.0)
    samples: int = setting(_sh.SAMPLES, low=2)
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class SamSharpnessSettings(Settings):
    """Settings of ``sharpness_sam`` (:func:`~flatlab.measures.sharpness_sam` at ``x̄``)."""

    rho: float = setting(_sh.RHO, low=0.0, strict=True)
    adaptive: bool = setting(False)
    eta: float = setting(0.0, low=0.0)


@dataclass(frozen=True)
class KeskarSharpnessSettings(Settings):
    """Settings of ``sharpness_keskar`` (:func:`~flatlab.measures.sharpness_keskar` at ``x̄``)."""

    eps: float = setting(_sh.KESKAR_EPS, low=0.0, strict=True)
    steps: int = setting(_sh.STEPS, low=0)
    seed: int = setting(0, low=0)


def _sharpness(kind: str) -> Callable[[MeasureContext, dict], list[Row]]:
    def average(ctx: MeasureContext, s: dict) -> list[Row]:
        fn, x = ctx.avg_loss_fn()
        if kind == "worst":
            r = ms.sharpness_worst(fn, x, rho=s["rho"], norm=s["norm"], adaptive=s["adaptive"],
                                   eta=s["eta"], steps=s["steps"], seed=s["seed"])
            return [("sharpness_worst", "avg", float(r.value))]
        if kind == "average":
            r = ms.sharpness_average(fn, x, sigma=s["sigma"], adaptive=s["adaptive"],
                                     eta=s["eta"], samples=s["samples"], seed=s["seed"])
            return [("sharpness_average", "avg", float(r.value)),
                    ("sharpness_average_stderr", "avg", float(r.stderr))]
        if kind == "sam":
            r = ms.sharpness_sam(fn, x, rho=s["rho"], adaptive=s["adaptive"], eta=s["eta"])
            return [("sharpness_sam", "avg", float(r.value))]
        r = ms.sharpness_keskar(fn, x, eps=s["eps"], steps=s["steps"], seed=s["seed"])
        return [("sharpness_keskar", "avg", float(r.value))]
    return average


_register(NamedMeasure(
    "sharpness_worst", "max of f(x̄ + δ) − f(x̄) over an l2 or l∞ ball (adaptive: scaled by "
    "|x̄| + η), by projected ascent", ("sharpness_worst",),
    settings=WorstSharpnessSettings, average=_sharpness("worst"),
    source="docs/reference/measures.md §8"))
_register(NamedMeasure(
    "sharpness_average", "E f(x̄ + δ) − f(x̄), δ Gaussian (adaptive: scaled by |x̄| + η), "
    "with its standard error", ("sharpness_average", "sharpness_average_stderr"),
    settings=AverageSharpnessSettings, average=_sharpness("average"),
    source="docs/reference/measures.md §8"))
_register(NamedMeasure(
    "sharpness_sam", "f(x̄ + ρ ĝ) − f(x̄): SAM's one-step ascent", ("sharpness_sam",),
    settings=SamSharpnessSettings, average=_sharpness("sam"),
    source="docs/reference/measures.md §8"))
_register(NamedMeasure(
    "sharpness_keskar", "Keskar et al.'s ε-sharpness in percent", ("sharpness_keskar",),
    settings=KeskarSharpnessSettings, average=_sharpness("keskar"),
    source="docs/reference/measures.md §8"))


# ---------------------------------------------------------------------- landscape
@dataclass(frozen=True)
class BarrierSettings(Settings):
    """Settings of ``barrier_to_average`` (:func:`~flatlab.measures.node_to_average`)."""

    points: int = setting(11, low=2)


@dataclass(frozen=True)
class Landscape1DSettings(Settings):
    """Settings of ``landscape_1d`` (:func:`~flatlab.measures.slice_1d` through ``x̄``)."""

    points: int = setting(21, low=2)
    span: float = setting(1.0, low=0.0, strict=True)
    seed: int = setting(0, low=0)


@dataclass(frozen=True)
class Landscape2DSettings(Settings):
    """Settings of ``landscape_2d`` (:func:`~flatlab.measures.slice_2d` through ``x̄``)."""

    points: int = setting(11, low=2)
    span: float = setting(1.0, low=0.0, strict=True)
    seed: int = setting(0, low=0)


def _barrier(ctx: MeasureContext, s: dict) -> list[Row]:
    fn, xbar = ctx.avg_loss_fn()
    X = ctx.to_curvature(ctx.all_nodes())  # noqa: N806
    res = node_to_average(fn, X, xbar=xbar, points=s["points"])
    b = torch.as_tensor(res.barriers, dtype=torch.float64, device="cpu")
    rows = [("barrier_to_average", "max", float(b.max())),
            ("barrier_to_average", "mean", float(b.mean()))]
    if ctx.per_node:
        rows += [("barrier_to_average", str(i), float(v)) for i, v in enumerate(b)]
    return rows


_register(NamedMeasure(
    "barrier_to_average", "loss barrier on the segment from each node model to x̄ (averaged "
    "buffers), max and mean over nodes", ("barrier_to_average",),
    settings=BarrierSettings, nodes=_gather_nodes, average=_barrier,
    source="docs/reference/measures.md §13.3"))


def _landscape(dims: int) -> Callable[[MeasureContext, dict], list[Row]]:
    def average(ctx: MeasureContext, s: dict) -> list[Row]:
        fn, x = ctx.avg_loss_fn()
        layout = ctx.stack.layout
        alphas = torch.linspace(-s["span"], s["span"], s["points"], dtype=torch.float64,
                                device="cpu")
        d1 = ms.filter_normalized_direction(layout, x, seed=s["seed"])
        table = ctx.tables.setdefault("landscape", [])
        if dims == 1:
            sl = ms.slice_1d(fn, x, d1, alphas)
            table += [{"kind": "slice_1d", "scope": "avg", "alpha": float(a), "beta": 0.0,
                       "loss": float(v)} for a, v in zip(sl.alphas, sl.losses, strict=True)]
            return [("landscape_1d_max", "avg", float(sl.losses.max()) - sl.loss)]
        d2 = ms.filter_normalized_direction(layout, x, seed=s["seed"], index=1)
        sl = ms.slice_2d(fn, x, d1, d2, alphas, alphas)
        for i, a in enumerate(sl.alphas):
            table += [{"kind": "slice_2d", "scope": "avg", "alpha": float(a), "beta": float(b),
                       "loss": float(sl.losses[i, j])} for j, b in enumerate(sl.betas)]
        return [("landscape_2d_max", "avg", float(sl.losses.max()) - sl.loss)]
    return average


_register(NamedMeasure(
    "landscape_1d", "loss along a filter-normalized direction through x̄ (to "
    "landscape.parquet; the largest rise)", ("landscape_1d_max",),
    settings=Landscape1DSettings, average=_landscape(1),
    source="docs/reference/measures.md §13"))
_register(NamedMeasure(
    "landscape_2d", "loss on a plane of two filter-normalized directions through x̄ (to "
    "landscape.parquet; the largest rise)", ("landscape_2d_max",),
    settings=Landscape2DSettings, average=_landscape(2),
    source="docs/reference/measures.md §13"))
