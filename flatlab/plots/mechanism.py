"""The mechanism's figure: gap against ½ tr(HΣ), alignment, prediction against measurement.

Drawn from ``flatlab.studies.mechanism``'s tables.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["mechanism"]


def mechanism(curves: pd.DataFrame, prediction: pd.DataFrame, *,
              panel_size: tuple[float, float] = (3.9, 3.3)) -> Figure:
    """Three panels over the decentralized methods of the study.

    (a) the measured gap ``(1/n) Σ f(x_i) − f(x̄)`` against ``½ tr(HΣ)``, every measurement of
    every run after step 0 (log-log, the diagonal is the second-order expansion); (b) the top-k
    share of the disagreement over its chance ``k/P`` along training, mean over seeds per method
    and step size; (c) the predicted stationary ``tr(HΣ)`` against the measured one (the last
    quarter's mean), one point per run. Runs whose ``status`` is not ``done`` are left out.

    Args:
        curves: Long ``step, metric, value, lr, method, seed`` (the study's ``curves.csv``).
        prediction: One row per run with ``status``, ``trhs_late`` and ``trhs_predicted``
            (its ``prediction.csv``).
        panel_size: Width and height of one panel, in inches.
    """
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_size[0], panel_size[1]))
    keys = ["lr", "method", "seed", "step"]
    groups = sorted({(float(lr), m) for lr, m in zip(curves["lr"], curves["method"],
                                                      strict=True)})
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    color = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    c = curves[(curves["step"] > 0) & curves["metric"].str.startswith("disagreement_")]
    wide = c.pivot_table(index=keys, columns="metric", values="value").reset_index()
    for col in ("disagreement_gap", "disagreement_gap_predicted", "disagreement_alignment",
                "disagreement_alignment_chance"):
        if col not in wide:
            wide[col] = np.nan
    gap = wide[(wide["disagreement_gap_predicted"] > 0) & (wide["disagreement_gap"] > 0)]
    ax = axes[0]
    for (lr, m), g in gap.groupby(["lr", "method"]):
        ax.loglog(g["disagreement_gap_predicted"], g["disagreement_gap"], ".", ms=3,
                  color=color[float(lr), m])
    if len(gap):
        lo = float(gap[["disagreement_gap", "disagreement_gap_predicted"]].min().min())
        hi = float(gap[["disagreement_gap", "disagreement_gap_predicted"]].max().max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("½ tr(HΣ)")
    ax.set_ylabel("gap (1/n) Σ f(x_i) − f(x̄)")
    ax.set_title("(a) the second-order term")
    ax = axes[1]
    al = wide[wide["disagreement_alignment_chance"] > 0].assign(
        enrichment=lambda d: d["disagreement_alignment"] / d["disagreement_alignment_chance"])
    for (lr, m), g in al.groupby(["lr", "method"]):
        mean = g.groupby("step")["enrichment"].mean()
        ax.semilogy(mean.index, mean.to_numpy(), color=color[float(lr), m],
                    label=f"{m}, η={lr:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("top-k share / chance k/P")
    ax.set_title("(b) alignment with the top curvature")
    ax = axes[2]
    p = prediction[(prediction["status"] == "done") & (prediction["trhs_predicted"] > 0)
                   & (prediction["trhs_late"] > 0)]
    for (lr, m), g in p.groupby(["lr", "method"]):
        ax.loglog(g["trhs_predicted"], g["trhs_late"], "o", ms=4, color=color[float(lr), m])
    if len(p):
        lo = float(p[["trhs_late", "trhs_predicted"]].min().min())
        hi = float(p[["trhs_late", "trhs_predicted"]].max().max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.fill_between([lo, hi], [lo / 2, hi / 2], [2 * lo, 2 * hi], color="0.9", zorder=0)
    ax.set_xlabel("predicted stationary tr(HΣ)")
    ax.set_ylabel("measured tr(HΣ), last quarter")
    ax.set_title("(c) the linear theory (band: 2x)")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=6, frameon=False, ncol=2)
    for ax in (axes[0], axes[2]):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    return fig
