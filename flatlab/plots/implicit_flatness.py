"""Implicit against explicit flatness: λ_max along training and at the end, per method."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["implicit_flatness"]


def _se(v: pd.Series) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def implicit_flatness(runs: pd.DataFrame, curves: pd.DataFrame, *,
                      methods: list[str] | None = None,
                      panel_size: tuple[float, float] = (3.9, 3.3)) -> Figure:
    """Three panels: flatness against training loss along training, at the end, and the gap.

    (a) ``λ_max`` of ``x̄`` against the training loss over training (log-log; mean over seeds
    at each measured step), so methods are compared at matched training loss, with ``L*``
    (``runs``' ``hessian_top_matched`` level) marked when the table has it; (b) final ``λ_max``
    against final test accuracy, mean ± standard error over seeds; (c) the consensus gap
    ``(1/n) Σ f(x_i) − f(x̄)`` over training for the decentralized methods (``runs``'
    ``algorithm`` names the centralized ones, whose nodes agree exactly). Runs whose
    ``status`` is not ``done`` are left out.

    Args:
        runs: One row per final run: ``method, seed, status, hessian_top, test_accuracy``
            (``flatlab.studies.implicit_flatness``'s ``runs.csv``).
        curves: Long table ``step, metric, value, method, seed, status`` with ``train_loss``,
            ``hessian_top`` and ``consensus_gap`` (its ``curves.csv``).
        methods: Methods to draw, in legend order (default: as they appear).
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    need_runs = {"method", "seed", "status", "hessian_top", "test_accuracy"}
    need_curves = {"step", "metric", "value", "method", "seed", "status"}
    for name, t, need in (("runs", runs, need_runs), ("curves", curves, need_curves)):
        missing = need - set(t.columns)
        if missing:
            raise ValueError(f"implicit_flatness {name} table lacks columns {sorted(missing)}")
    methods = methods or list(dict.fromkeys(runs["method"]))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    style = {m: ("--" if "sam" in m else "-") for m in methods}
    done = runs[runs["status"] == "done"]
    c = curves[curves["status"] == "done"]
    fig, axes = plt.subplots(1, 3, constrained_layout=True,
                             figsize=(panel_size[0] * 3 + 1.8, panel_size[1]))
    ax = axes[0]
    for m in methods:
        w = (c[c["method"] == m].pivot_table(index=["seed", "step"], columns="metric",
                                             values="value"))
        if not {"train_loss", "hessian_top"} <= set(w.columns):
            continue
        mean = w[["train_loss", "hessian_top"]].dropna().groupby(level="step").mean()
        ax.plot(mean["train_loss"], mean["hessian_top"], style[m], marker="o", ms=3,
                color=palette[m], label=m)
    if "hessian_top_matched" in runs and "train_loss" in done and len(done):
        target = float(done["train_loss"].max())
        ax.axvline(target, color="0.5", lw=0.8, ls=":")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xscale="log", yscale="log", xlabel="training loss of $\\bar{x}$",
           ylabel="$\\lambda_{max}$ of $\\bar{x}$", title="(a) along training")
    ax.invert_xaxis()
    ax = axes[1]
    for m in methods:
        g = done[done["method"] == m]
        if g.empty:
            continue
        acc, top = 100 * g["test_accuracy"].astype(float), g["hessian_top"].astype(float)
        ax.errorbar(acc.mean(), top.mean(), xerr=_se(acc), yerr=_se(top), fmt="o",
                    color=palette[m], mec="black", mew=0.5, capsize=2,
                    mfc="white" if "sam" in m else palette[m])
    ax.set(xlabel="test accuracy of $\\bar{x}$ (%)", ylabel="final $\\lambda_{max}$",
           title="(b) at the end (mean ± s.e.)")
    ax = axes[2]
    central = (set(runs.loc[runs["algorithm"] == "centralized", "method"])
               if "algorithm" in runs else set())
    for m in methods:
        g = c[(c["method"] == m) & (c["metric"] == "consensus_gap")]
        if m in central or g.empty or not np.isfinite(g["value"]).any():
            continue
        mean = g.groupby("step")["value"].mean()
        ax.plot(mean.index, mean.to_numpy().clip(min=1e-8), style[m], color=palette[m])
    ax.set(yscale="log", xlabel="step", ylabel="$\\frac{1}{n}\\sum f(x_i) - f(\\bar{x})$",
           title="(c) consensus gap")
    for a in axes:
        a.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], color=palette[m], ls=style[m], marker="o", ms=4, label=m)
               for m in methods]
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=8)
    return fig
