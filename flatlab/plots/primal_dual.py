"""Primal-dual figure: accuracy against communication rounds, and the time each step costs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["primal_dual"]


def primal_dual(curves: pd.DataFrame, summary: pd.DataFrame, *,
                panel_size: tuple[float, float] = (4.2, 3.2)) -> Figure:
    """One column per setting (variant, ring size, alpha), two rows.

    Top: test accuracy of x̄ (%) against communication rounds, mean over seeds with a band of
    ± one standard error, one line per method, the targets dashed. Bottom: milliseconds per
    training step of each method (bars, labelled with the ratio to DSGD).

    Args:
        curves: ``variant, nodes, alpha, method, seed, step, test_accuracy`` rows.
        summary: ``variant, nodes, alpha, method, ms_per_step, vs_dsgd`` rows and one
            ``target_<name>`` column per target
            (``flatlab.studies.primal_dual``'s ``summary.csv``).
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    need_c = {"variant", "nodes", "alpha", "method", "seed", "step", "test_accuracy"}
    need_s = {"variant", "nodes", "alpha", "method", "ms_per_step", "vs_dsgd"}
    for name, df, need in (("curves", curves, need_c), ("summary", summary, need_s)):
        if need - set(df.columns):
            raise ValueError(f"primal_dual {name} table lacks columns {sorted(need - set(df))}")
    settings = list(dict.fromkeys(zip(summary["variant"], summary["nodes"], summary["alpha"],
                                      strict=True)))
    methods = list(dict.fromkeys(summary["method"]))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    fig, axes = plt.subplots(2, len(settings), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(settings) + 1.8, panel_size[1] * 2))
    for c, (variant, nodes, alpha) in enumerate(settings):
        ax = axes[0, c]
        sub = curves[(curves["variant"] == variant) & (curves["nodes"] == nodes)
                     & (curves["alpha"] == alpha)]
        for m in methods:
            g = sub[sub["method"] == m].groupby("step")["test_accuracy"]
            if not len(g):
                continue
            mean, se = g.mean() * 100, (g.std(ddof=1) / np.sqrt(g.count())).fillna(0) * 100
            ax.plot(mean.index, mean.to_numpy(), color=palette[m], lw=1.5, label=m)
            ax.fill_between(mean.index, (mean - se).to_numpy(), (mean + se).to_numpy(),
                            color=palette[m], alpha=0.2, lw=0)
        row = summary[(summary["variant"] == variant) & (summary["nodes"] == nodes)
                      & (summary["alpha"] == alpha)]
        for k, col in enumerate(n for n in row.columns if n.startswith("target_")):
            ax.axhline(100 * float(row[col].iloc[0]), color="0.3", ls="--", lw=1,
                       label="targets" if k == 0 else None)
        ax.set(xlabel="communication rounds (steps)", title=f"{variant}, ring n={nodes}, "
               f"alpha={alpha:g}")
        if c == 0:
            ax.set_ylabel(r"test accuracy of $\bar{x}$ (%)")
        ax.grid(True, alpha=0.3)
        bx = axes[1, c]
        row = row.set_index("method").reindex([m for m in methods if m in set(row["method"])])
        bars = bx.bar(range(len(row)), row["ms_per_step"].to_numpy(),
                      color=[palette[m] for m in row.index])
        for b, ratio in zip(bars, row["vs_dsgd"].to_numpy(), strict=True):
            bx.annotate(f"{ratio:.2f}×", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        bx.set_xticks(range(len(row)), list(row.index), rotation=30, ha="right", fontsize=8)
        if c == 0:
            bx.set_ylabel("ms per training step")
        bx.grid(True, axis="y", alpha=0.3)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                       fontsize=8, title="method")
    return fig
