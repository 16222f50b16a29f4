"""Faults figure: what lost exchanges and stragglers do, against the fault level and in time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["faults"]

_STYLE = {"drops": "-", "stragglers": "--"}


def _mean_se(g: pd.Series) -> tuple[float, float]:
    g = g.dropna()
    se = float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else 0.0
    return float(g.mean()), se


def faults(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *,
           panel_size: tuple[float, float] = (3.6, 3.0)) -> Figure:
    """Accuracy, late disagreement and λ_max against the fault level; accuracy in simulated time.

    One colour per algorithm; solid lines for lost exchanges (``drops``), dashed for
    stragglers, both starting from the fault-free run at level 0; mean over seeds with ± one
    standard error. In the disagreement panel (log scale) a hollow marker at each drop level is
    the prediction: the fault-free mean times the predicted growth (``predicted_ratio``), where
    the theory covers the algorithm. The last panel (when ``curves`` are given) is the test
    accuracy of x̄ against simulated seconds at the largest drop level and fault-free, so a
    synchronous method waiting for its slowest node and an asynchronous one compare in time.

    Args:
        runs: The study's ``runs.csv``: ``algorithm, fault, level, seed, status,
            test_accuracy, cd_late, hessian_top, predicted_ratio`` per final run.
        curves: The study's ``curves.csv`` (``step, metric, value, method, seed``), or None.
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    need = {"algorithm", "fault", "level", "seed", "status", "test_accuracy", "cd_late",
            "hessian_top", "predicted_ratio"}
    if need - set(runs.columns):
        raise ValueError(f"faults runs lack columns {sorted(need - set(runs.columns))}")
    done = runs[runs["status"] == "done"]
    algorithms = list(dict.fromkeys(done["algorithm"]))
    palette = dict(zip(algorithms, sns.color_palette("colorblind", len(algorithms)),
                       strict=True))
    panels = [("test_accuracy", r"test accuracy of $\bar{x}$ (%)", 100.0),
              ("cd_late", r"late consensus distance $\Xi^2$", 1.0),
              ("hessian_top", r"$\lambda_{max}$ at $\bar{x}$", 1.0)]
    ncols = len(panels) + (curves is not None and len(curves) > 0)
    fig, axes = plt.subplots(1, ncols, squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * ncols + 2.0, panel_size[1]))
    for c, (col, ylabel, scale) in enumerate(panels):
        ax = axes[0, c]
        for a in algorithms:
            base = done[(done["algorithm"] == a) & (done["fault"] == "none")]
            for fault, ls in _STYLE.items():
                sub = done[(done["algorithm"] == a) & (done["fault"] == fault)]
                if not len(sub):
                    continue
                rows = [(0.0, *_mean_se(base[col] * scale))] + [
                    (lv, *_mean_se(g[col] * scale)) for lv, g in sub.groupby("level")]
                x, m, se = (np.array(v) for v in zip(*rows, strict=True))
                ax.errorbar(x, m, yerr=se, color=palette[a], ls=ls, marker="o", ms=3,
                            capsize=2, lw=1.3, label=f"{a}, {fault}")
                if col == "cd_late" and fault == "drops" and sub["predicted_ratio"].notna().any():
                    pred = sub.groupby("level")["predicted_ratio"].mean()
                    ax.plot(pred.index, pred.to_numpy() * base[col].mean(), ls="none",
                            marker="D", mfc="none", mec=palette[a], ms=7,
                            label=f"{a}, predicted")
        if col == "cd_late":
            ax.set_yscale("log")
        ax.set(xlabel="fault level (share lost or straggling)", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
    if ncols > len(panels):
        ax = axes[0, -1]
        top = done.loc[done["fault"] == "drops", "level"].max()
        acc = curves[curves["metric"] == "test_accuracy"]
        time = curves[curves["metric"] == "sim_time"]
        merged = acc.merge(time, on=["method", "seed", "step"], suffixes=("", "_time"))
        for a in algorithms:
            for method, ls in ((a, "-"), (f"{a} drops {top:g}", ":")):
                g = merged[merged["method"] == method]
                if not len(g):
                    continue
                by = g.groupby("step")
                ax.plot(by["value_time"].mean(), by["value"].mean() * 100, color=palette[a],
                        ls=ls, lw=1.3, label=method)
        ax.set(xlabel="simulated seconds", ylabel=r"test accuracy of $\bar{x}$ (%)",
               title=f"fault-free (solid), drops {top:g} (dotted)")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       frameon=False, fontsize=7)
    return fig
