"""Compression figure: test accuracy against the bytes each node has sent."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["compression"]

_DASHES = {"choco": "-", "adagossip": "--"}


def compression(curves: pd.DataFrame, *, panel_size: tuple[float, float] = (4.0, 3.2)
                ) -> Figure:
    """One panel per setting (topology, alpha): accuracy of x̄ against MB sent per node.

    One colour per compression, solid for CHOCO-SGD and dashed for AdaGossip, the uncompressed
    reference (``compression == "none"``) in grey; mean over seeds at each measured step with
    a band of ± one standard error; log-scaled bytes, so 10x and 100x less traffic read as
    equal steps.

    Args:
        curves: ``topology, alpha, compression, method, seed, step, mb_per_node,
            test_accuracy`` rows (``flatlab.studies.compression``'s ``curves.csv``).
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    need = {"topology", "alpha", "compression", "method", "seed", "step", "mb_per_node",
            "test_accuracy"}
    if need - set(curves.columns):
        raise ValueError(f"compression curves lack columns {sorted(need - set(curves))}")
    settings = list(dict.fromkeys(zip(curves["topology"], curves["alpha"], strict=True)))
    comps = [c for c in dict.fromkeys(curves["compression"]) if c != "none"]
    palette = dict(zip(comps, sns.color_palette("colorblind", len(comps)), strict=True))
    palette["none"] = (0.4, 0.4, 0.4)
    fig, axes = plt.subplots(1, len(settings), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(settings) + 2.2, panel_size[1]))
    for c, (topology, alpha) in enumerate(settings):
        ax = axes[0, c]
        sub = curves[(curves["topology"] == topology) & (curves["alpha"] == alpha)
                     & (curves["mb_per_node"] > 0)]  # nothing sent yet: off a log axis
        for (comp, method), g in sub.groupby(["compression", "method"], sort=False):
            by = g.groupby("step")
            mb = by["mb_per_node"].mean()
            acc = by["test_accuracy"]
            mean = acc.mean() * 100
            se = (acc.std(ddof=1) / np.sqrt(acc.count())).fillna(0) * 100
            label = f"{method} (uncompressed)" if comp == "none" else f"{method}, {comp}"
            ax.plot(mb.to_numpy(), mean.to_numpy(), color=palette[comp],
                    ls=_DASHES.get(method, ":"), lw=1.5, label=label)
            ax.fill_between(mb.to_numpy(), (mean - se).to_numpy(), (mean + se).to_numpy(),
                            color=palette[comp], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set(xlabel="MB sent per node", title=f"{topology}, alpha = {alpha:g}")
        if c == 0:
            ax.set_ylabel(r"test accuracy of $\bar{x}$ (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    return fig
