"""Flatness-versus-optimization figures (``flatlab.studies.tradeoff``, ``flatlab demo``).

Every function reads a results table and draws; none computes a measurement. Tables:

- runs: one row per final run with ``regime, topology, method, seed, status`` and the final
  ``test_accuracy``, ``train_loss``, ``grad_norm``, ``hessian_top``, ``hessian_trace``,
  ``sharpness``, ``consensus_distance`` (the study's ``runs.csv``, the demo's ``table.csv``);
- curves: long form ``regime, topology, method, lr, seed, step, metric, value``;
- steady: measured against predicted steady-state consensus distance per run;
- escape: long form ``method, topology, seed, step, metric, value``;
- bound: measured running mean of ``‖∇f(x̄_t)‖²`` and the bound's terms per run and ``T``.

Methods keep one colour (seaborn's colour-blind palette) and one marker across figures; runs
whose status is not ``done`` are left out (diverged ones are counted in the tables instead).
"""

from __future__ import annotations

import matplotlib
import matplotlib.patches
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from flatlab.experiment.evidence import paired_difference

__all__ = ["tradeoff_scatter", "batch_tradeoff", "accuracy_vs_flatness",
           "consensus_over_training", "escape", "bound_overlay", "tradeoff_figures", "LABELS"]

#: Axis labels with units (losses in nats, curvature in loss per squared parameter unit).
LABELS = {
    "hessian_top": r"top Hessian eigenvalue $\lambda_{\max}$ at $\bar{x}$",
    "hessian_trace": r"Hessian trace tr$(H)$ at $\bar{x}$",
    "sharpness": r"worst-case adaptive sharpness at $\bar{x}$ (nats)",
    "train_loss": r"training loss $f(\bar{x})$ (nats)",
    "grad_norm": r"$\|\nabla f(\bar{x})\|$",
    "test_accuracy": r"test accuracy of $\bar{x}$ (%)",
    "consensus_distance": r"consensus distance $\Xi^2$",
}
_ORDER = ("centralized", "consensus", "diffusion", "momentum-tracking", "ngpd", "dsgdm")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _need(table: pd.DataFrame, cols: set[str], what: str) -> None:
    missing = cols - set(table.columns)
    if missing:
        raise ValueError(f"{what} table lacks columns {sorted(missing)}")


def _methods(methods) -> list[str]:
    present = list(dict.fromkeys(methods))
    return [m for m in _ORDER if m in present] + [m for m in present if m not in _ORDER]


def _style(methods: list[str]) -> tuple[dict[str, tuple], dict[str, str]]:
    colours = sns.color_palette("colorblind", max(len(methods), 3))
    return (dict(zip(methods, colours, strict=False)),
            dict(zip(methods, _MARKERS, strict=False)))


def _points(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean and standard error over seeds per (regime, topology, method) of done runs."""
    done = runs[runs["status"] == "done"]
    keys = [k for k in ("regime", "topology", "method") if k in done.columns]
    g = done.groupby(keys, sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(
        (g.std(ddof=1) / np.sqrt(g.count())).fillna(0.0).add_suffix("_se"))
    return out.reset_index()


def _at_lr(table: pd.DataFrame, lr: float | None) -> pd.DataFrame:
    """The rows at step size ``lr`` (default: the most common one) when there is an lr column."""
    if "lr" not in table or not len(table):
        return table
    return table[table["lr"] == (table["lr"].mode().iloc[0] if lr is None else lr)]


def _regimes(runs: pd.DataFrame) -> list[str]:
    """The batch regimes in order of appearance; ``[None]`` (one panel) when there are none."""
    return list(dict.fromkeys(runs["regime"])) if "regime" in runs and len(runs) else [None]


def _final_points(runs: pd.DataFrame, flatness: str, error: str, lr: float | None
                  ) -> tuple[pd.DataFrame, list, list[str]]:
    """Checked runs at one step size: per-(method, topology) points, regimes, methods."""
    _need(runs, {"method", "topology", "status", "test_accuracy", flatness, error}, "runs")
    runs = _at_lr(runs, lr)
    return (_points(runs, [flatness, error, "test_accuracy"]), _regimes(runs),
            _methods(runs["method"]))


def _regime_by_topology(table: pd.DataFrame, panel_size: tuple[float, float], legend_width: float
                        ) -> tuple[Figure, np.ndarray, list]:
    """A figure with one row per batch regime and one column per topology, shared axes.

    Returns the figure, its axes and ``[(i, j, regime, topology, rows of that panel)]``.
    """
    regimes = _regimes(table)
    tops = list(dict.fromkeys(table["topology"]))
    fig, axes = plt.subplots(len(regimes), max(len(tops), 1), squeeze=False, sharex=True,
                             sharey=True, constrained_layout=True,
                             figsize=(panel_size[0] * max(len(tops), 1) + legend_width,
                                      panel_size[1] * len(regimes)))
    panels = []
    for i, regime in enumerate(regimes):
        for j, top in enumerate(tops):
            sub = table[table["topology"] == top]
            panels.append((i, j, regime, top, sub if regime is None
                           else sub[sub["regime"] == regime]))
    return fig, axes, panels


def _label_panel(ax, i: int, j: int, n_rows: int, top: str, xlabel: str, ylabel: str,
                 regime: str | None) -> None:
    if i == 0:
        ax.set_title(top)
    if i == n_rows - 1:
        ax.set_xlabel(xlabel)
    if j == 0:
        ax.set_ylabel(ylabel + (f"\n{regime}" if regime else ""))


def tradeoff_scatter(runs: pd.DataFrame, *, flatness: str = "hessian_top",
                     error: str = "train_loss", lr: float | None = None,
                     panel_size: tuple[float, float] = (4.2, 3.6)) -> Figure:
    """Flatness against optimization error: one marker per algorithm, colour by test accuracy.

    One panel per batch regime; each point is one (method, topology) pair, its position the
    mean over seeds with standard-error bars, its colour the mean test accuracy of ``x̄``
    (one colour bar for all panels), its label the topology. Lower-left is flat and well
    optimized.

    Args:
        runs: The runs table (see the module docstring).
        flatness: Column on the y axis (``hessian_top``, ``hessian_trace``, ``sharpness``).
        error: Column on the x axis (``train_loss`` or ``grad_norm``).
        lr: Step size of the runs drawn, when the table has an ``lr`` column (default: the
            most common one).
        panel_size: Size of one panel in inches.
    """
    pts, regimes, methods = _final_points(runs, flatness, error, lr)
    _, markers = _style(methods)
    acc = pts["test_accuracy_mean"] * 100
    norm = plt.Normalize(acc.min(), acc.max() if acc.max() > acc.min() else acc.min() + 1)
    cmap = plt.get_cmap("cividis")
    fig, axes = plt.subplots(1, len(regimes), squeeze=False, layout="constrained",
                             figsize=(panel_size[0] * len(regimes) + 1.2, panel_size[1] + 0.6))
    for ax, regime in zip(axes[0], regimes, strict=True):
        sub = pts if regime is None else pts[pts["regime"] == regime]
        for r in sub.itertuples():
            colour = cmap(norm(r.test_accuracy_mean * 100))
            ax.errorbar(getattr(r, f"{error}_mean"), getattr(r, f"{flatness}_mean"),
                        xerr=getattr(r, f"{error}_se"), yerr=getattr(r, f"{flatness}_se"),
                        fmt=markers[r.method], color=colour, mec="black", mew=0.6, ms=8,
                        ecolor="0.5", elinewidth=0.8, capsize=2)
            if r.topology not in ("all-reduce",):
                ax.annotate(r.topology, (getattr(r, f"{error}_mean"),
                                         getattr(r, f"{flatness}_mean")),
                            xytext=(5, 4), textcoords="offset points", fontsize=7, color="0.3")
        ax.set(xlabel=LABELS.get(error, error), ylabel=LABELS.get(flatness, flatness),
               title=regime or "")
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker=markers[m], color="0.6", mec="black", ms=8,
                          label=m) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False,
               fontsize=8, title="algorithm (labels: topology)", title_fontsize=8)
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0, :],
                      location="right", pad=0.02)
    cb.set_label(LABELS["test_accuracy"])
    return fig


def batch_tradeoff(runs: pd.DataFrame, *, flatness: str = "hessian_top",
                   error: str = "grad_norm", panel_size: tuple[float, float] = (4.4, 3.6)
                   ) -> Figure:
    """The large-batch regime at a glance (``flatlab demo``): flatness, optimization, accuracy.

    Left: ``flatness`` against ``error`` (both log scale), colour by batch regime, marker by
    method; each seed a small point, the mean over seeds a large one with standard-error bars,
    labelled with its mean test accuracy. Right: test accuracy per method at each batch, the
    seeds and their mean ± s.e., the paired drop from the small batch to the large one written
    above each method (the large-batch gap). Lower-left on the left is flat and well optimized.
    """
    _need(runs, {"regime", "method", "status", "seed", "test_accuracy", flatness, error},
          "runs")
    done = runs[runs["status"] == "done"]
    regimes, methods = _regimes(runs), _methods(runs["method"])
    colours = dict(zip(regimes, sns.color_palette("colorblind", max(len(regimes), 3)),
                       strict=False))
    _, markers = _style(methods)
    pts = _points(done, [flatness, error, "test_accuracy"])
    fig, (ax, bx) = plt.subplots(1, 2, layout="constrained",
                                 figsize=(panel_size[0] * 2 + 1.0, panel_size[1] + 0.4))
    for regime in regimes:
        for method in methods:
            one = done[(done["regime"] == regime) & (done["method"] == method)]
            ax.scatter(one[error], one[flatness], marker=markers[method], s=16, alpha=0.35,
                       color=colours[regime], linewidths=0)
    for r in pts.itertuples():
        x, y = getattr(r, f"{error}_mean"), getattr(r, f"{flatness}_mean")
        ax.errorbar(x, y, xerr=getattr(r, f"{error}_se"), yerr=getattr(r, f"{flatness}_se"),
                    fmt=markers[r.method], color=colours[r.regime], mec="black", mew=0.6,
                    ms=9, ecolor="0.4", elinewidth=0.8, capsize=2)
        ax.annotate(f"{100 * r.test_accuracy_mean:.1f}%", (x, y), xytext=(6, 5),
                    textcoords="offset points", fontsize=8, color="0.2")
    ax.set(xscale="log", yscale="log", xlabel=LABELS.get(error, error),
           ylabel=LABELS.get(flatness, flatness),
           title="flatness against optimization (labels: test accuracy)")
    ax.title.set_fontsize(10)
    for axis in (ax.xaxis, ax.yaxis):  # 0.02, not 2×10⁻²; λ_max's minor ticks labelled too
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5)
        else ""))
    ax.grid(True, which="both", alpha=0.25)
    width = 0.8 / max(len(regimes), 1)
    for i, method in enumerate(methods):
        for j, regime in enumerate(regimes):
            one = done[(done["regime"] == regime) & (done["method"] == method)]
            acc = 100 * one["test_accuracy"].to_numpy(dtype=float)
            x = i + (j - (len(regimes) - 1) / 2) * width
            bx.scatter(np.full(len(acc), x), acc, s=16, alpha=0.45, color=colours[regime],
                       marker=markers[method], linewidths=0)
            if len(acc):
                se = acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else 0.0
                bx.errorbar(x, acc.mean(), yerr=se, fmt=markers[method], color=colours[regime],
                            mec="black", mew=0.6, ms=9, ecolor="0.4", capsize=3)
        mine = done[done["method"] == method]
        per = [mine[mine["regime"] == r].set_index("seed")["test_accuracy"] for r in regimes]
        p = paired_difference(*per) if len(regimes) == 2 else None
        if p is not None and p.n:
            se = f" ± {100 * p.se:.1f}" if p.n > 1 else ""
            top = 100 * mine["test_accuracy"].max()
            bx.annotate(f"{regimes[0].split('-')[0]} − {regimes[1].split('-')[0]}: "
                        f"{100 * p.mean:+.1f}{se} points",
                        (i, top), xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize=8)
    bx.set_xticks(range(len(methods)), methods)
    bx.set(ylabel=LABELS["test_accuracy"], title="the large-batch gap (paired over seeds)")
    bx.title.set_fontsize(10)
    bx.margins(y=0.25)
    bx.grid(True, axis="y", alpha=0.3)
    handles = ([matplotlib.patches.Patch(color=colours[r], label=r) for r in regimes]
               + [plt.Line2D([], [], ls="", marker=markers[m], color="0.6", mec="black", ms=8,
                             label=m) for m in methods])
    bx.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              fontsize=8)
    return fig


def accuracy_vs_flatness(runs: pd.DataFrame, *, flatness: str = "hessian_top",
                         error: str = "train_loss", lr: float | None = None,
                         panel_size: tuple[float, float] = (3.8, 3.2)) -> Figure:
    """Test accuracy against flatness (top row) and against optimization error (bottom row).

    One column per batch regime, one point per (method, topology) with standard-error bars
    over seeds, colour and marker by method; ``lr`` as in :func:`tradeoff_scatter`.
    """
    pts, regimes, methods = _final_points(runs, flatness, error, lr)
    colours, markers = _style(methods)
    fig, axes = plt.subplots(2, len(regimes), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(regimes) + 1.8, panel_size[1] * 2))
    for c, regime in enumerate(regimes):
        sub = pts if regime is None else pts[pts["regime"] == regime]
        for row, x in enumerate((flatness, error)):
            ax = axes[row, c]
            for r in sub.itertuples():
                ax.errorbar(getattr(r, f"{x}_mean"), r.test_accuracy_mean * 100,
                            xerr=getattr(r, f"{x}_se"), yerr=r.test_accuracy_se * 100,
                            fmt=markers[r.method], color=colours[r.method], ms=6, capsize=2,
                            elinewidth=0.8)
            ax.set(xlabel=LABELS.get(x, x))
            if c == 0:
                ax.set_ylabel(LABELS["test_accuracy"])
            if row == 0 and regime is not None:
                ax.set_title(regime)
            ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker=markers[m], color=colours[m], ms=7, label=m)
               for m in methods]
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       frameon=False, fontsize=8, title="algorithm")
    return fig


def consensus_over_training(curves: pd.DataFrame, steady: pd.DataFrame | None = None, *,
                            lr: float | None = None,
                            panel_size: tuple[float, float] = (3.4, 2.8)) -> Figure:
    """Consensus distance ``Ξ²`` over training, with the predicted steady state as a band.

    Rows: batch regimes; columns: topologies. Lines: mean over seeds per decentralized method
    (shaded: min to max over seeds); bands (hatched, same colour): the steady state that
    :func:`flatlab.theory.predicted_consensus_distance` predicts from each seed's measured
    ``σ²``, ``ζ²``, from the smallest to the largest prediction over seeds.

    Args:
        curves: Long-form curves (see the module docstring).
        steady: Per-run ``measured`` and ``predicted`` (optional).
        lr: Step size to draw (default: the most common one).
        panel_size: Size of one panel in inches.
    """
    _need(curves, {"topology", "method", "seed", "step", "metric", "value"}, "curves")
    cd = curves[(curves["metric"] == "consensus_distance")
                & (curves["topology"] != "all-reduce")]
    if "status" in cd:
        cd = cd[cd["status"] == "done"]
    if "lr" in cd and len(cd):
        lr = cd["lr"].mode().iloc[0] if lr is None else lr
        cd = _at_lr(cd, lr)
    cd = cd[cd["step"] > 0]
    methods = _methods(cd["method"])
    colours, _ = _style(_methods(curves["method"]))
    fig, axes, panels = _regime_by_topology(cd, panel_size, 1.8)
    for i, j, regime, top, sub in panels:
        ax = axes[i, j]
        for m in methods:
            g = sub[sub["method"] == m].groupby("step")["value"]
            if not len(g):
                continue
            mean = g.mean()
            ax.plot(mean.index, mean.to_numpy(), color=colours[m], lw=1.5, label=m)
            ax.fill_between(mean.index, g.min().to_numpy(), g.max().to_numpy(),
                            color=colours[m], alpha=0.2, lw=0)
            if steady is not None and len(steady):
                p = steady[(steady["topology"] == top) & (steady["method"] == m)
                           & (steady["lr"] == lr)]
                if regime is not None:
                    p = p[p["regime"] == regime]
                if len(p):
                    ax.axhspan(p["predicted"].min(), p["predicted"].max(),
                               facecolor=colours[m], alpha=0.15, hatch="//",
                               edgecolor=colours[m], lw=0.8)
                    ax.axhline(p["predicted"].mean(), color=colours[m], ls="--", lw=1.0)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        _label_panel(ax, i, j, axes.shape[0], top, "step", LABELS["consensus_distance"], regime)
    handles = [plt.Line2D([], [], color=colours[m], lw=1.5, label=f"{m}, measured")
               for m in methods]
    handles += [matplotlib.patches.Patch(facecolor=colours[m], alpha=0.3, hatch="//",
                                         edgecolor=colours[m], ls="--",
                                         label=f"{m}, predicted (mean, range over seeds)")
                for m in methods if steady is not None and len(steady)]
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       frameon=False, fontsize=8, title=f"step size {lr:g}" if lr else None)
    return fig


def escape(table: pd.DataFrame, *, metrics: tuple[str, ...] = ("hessian_top", "hessian_trace",
                                                                 "train_loss", "test_accuracy"),
           panel_size: tuple[float, float] = (3.4, 2.8)) -> Figure:
    """Leaving a sharp minimum: flatness and loss over steps after starting every method there.

    One panel per metric (columns) and step size (rows, when the table has an ``lr`` column);
    one line per (method, topology), the mean over seeds with a band from min to max; colour
    by method, line style by topology.
    """
    _need(table, {"method", "topology", "seed", "step", "metric", "value"}, "escape")
    t = table[table["status"] == "done"] if "status" in table else table
    metrics = tuple(m for m in metrics if (t["metric"] == m).any()) or metrics[:1]
    lrs = sorted(set(t["lr"]), reverse=True) if "lr" in t and len(t) else [None]
    methods = _methods(t["method"])
    colours, _ = _style(methods)
    tops = [x for x in dict.fromkeys(t["topology"]) if x != "all-reduce"]
    styles = dict(zip(tops, ("-", "--", ":", "-."), strict=False)) | {"all-reduce": "-"}
    fig, axes = plt.subplots(len(lrs), len(metrics), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(metrics) + 2.2,
                                      panel_size[1] * len(lrs)))
    for row, lr in enumerate(lrs):
        at = t if lr is None else t[t["lr"] == lr]
        for ax, metric in zip(axes[row], metrics, strict=True):
            sub = at[at["metric"] == metric]
            scale = 100 if metric == "test_accuracy" else 1
            for (m, top), g in sub.groupby(["method", "topology"], sort=False):
                v = g.groupby("step")["value"]
                mean = v.mean() * scale
                ax.plot(mean.index, mean.to_numpy(), color=colours[m], ls=styles.get(top, "-"),
                        lw=1.5, label=f"{m} ({top})")
                ax.fill_between(mean.index, v.min().to_numpy() * scale,
                                v.max().to_numpy() * scale, color=colours[m], alpha=0.12, lw=0)
            ylabel = LABELS.get(metric, metric)
            if lr is not None and metric == metrics[0]:
                ylabel = f"step size μ = {lr:g}\n{ylabel}"
            ax.set(ylabel=ylabel)
            if row == len(lrs) - 1:
                ax.set_xlabel("steps after the start at the sharp minimum")
            ax.grid(True, alpha=0.3)
    if axes[0, -1].get_legend_handles_labels()[0]:  # none when no escape run finished
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                           fontsize=8, title="method (topology)")
    return fig


def bound_overlay(table: pd.DataFrame, *, panel_size: tuple[float, float] = (3.4, 2.8)
                  ) -> Figure:
    """Measured ``(1/T) Σ_t ‖∇f(x̄_t)‖²`` against the terms of DSGD's bound, per topology.

    Rows: batch regimes; columns: topologies. Solid: measured (mean over seeds), per method;
    dashed: the bound's total; dotted: its terms (noise, consensus, deterministic) for the last
    method, all evaluated with the run's measured ``L``, ``F0``, ``σ²``, ``ζ²`` (constants
    unspecified: compare orders of magnitude and slopes).
    """
    _need(table, {"topology", "method", "seed", "T", "measured", "bound_total"}, "bound")
    methods = _methods(table["method"])
    colours, _ = _style(_methods(["centralized", *methods]))
    terms = [c for c in table.columns if c.startswith("bound_") and c != "bound_total"]
    fig, axes, panels = _regime_by_topology(table, panel_size, 2.0)
    for i, j, regime, top, sub in panels:
        ax = axes[i, j]
        for m in methods:
            g = sub[sub["method"] == m].groupby("T")
            if not len(g):
                continue
            ax.plot(g["measured"].mean(), color=colours[m], lw=1.6, label=f"{m}, measured")
            ax.plot(g["bound_total"].mean(), color=colours[m], ls="--", lw=1.0,
                    label=f"{m}, bound (total)")
        last = sub[sub["method"] == methods[-1]] if methods else sub
        if len(last):  # the terms with the last method's inputs (one set, to stay legible)
            g = last.groupby("T")
            for k, term in enumerate(terms):
                ax.plot(g[term].mean(), color="0.45", ls=":", lw=0.9 + 0.4 * k,
                        label=f"{methods[-1]}'s bound term: {term.removeprefix('bound_')}")
        ax.set(xscale="log", yscale="log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, alpha=0.3, which="both")
        _label_panel(ax, i, j, axes.shape[0], top, "iterations T",
                     r"$\frac{1}{T}\sum_t \|\nabla f(\bar{x}_t)\|^2$", regime)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       frameon=False, fontsize=7)
    return fig


def tradeoff_figures(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Every figure of ``flatlab.studies.tradeoff`` from its tables, by name.

    Tables ``runs``, ``curves``, ``steady``, ``escape``, ``bound``; figures ``scatter``,
    ``accuracy``, ``consensus``, ``escape``, ``bound``.
    """
    return {"scatter": tradeoff_scatter(tables["runs"]),
            "accuracy": accuracy_vs_flatness(tables["runs"]),
            "consensus": consensus_over_training(tables["curves"], tables["steady"]),
            "escape": escape(tables["escape"]),
            "bound": bound_overlay(tables["bound"])}
