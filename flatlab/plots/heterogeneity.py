"""Heterogeneity figure: final test accuracy against the strength of the label skew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["heterogeneity"]

_PARTITION_TITLES = {"dirichlet": "Dirichlet label split", "classes": "classes per node"}


def _order(partition: str, levels: list[float]) -> list[float]:
    """Homogeneous first: large alpha, or many classes per node."""
    return sorted(set(levels), reverse=True)


def heterogeneity(table: pd.DataFrame, *, methods: list[str] | None = None,
                  panel_size: tuple[float, float] = (3.6, 3.0)) -> Figure:
    """Accuracy against heterogeneity, one line per method, mean ± standard error over seeds.

    Columns: one panel per partition kind (Dirichlet ``alpha``, ``k`` classes per node) and
    ring size; x from homogeneous (left) to heterogeneous (right). Rows: test accuracy of the
    averaged model ``x̄`` and mean test accuracy of the node models. Runs whose ``status`` is not
    ``done`` (diverged, failed) are left out.

    Args:
        table: One row per run with ``nodes, partition, level, method, seed, status,
            test_accuracy, test_accuracy_nodes`` (``flatlab.studies.heterogeneity``'s ``runs.csv``).
        methods: Methods to draw, in legend order (default: as they appear).
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    need = {"nodes", "partition", "level", "method", "status", "test_accuracy",
            "test_accuracy_nodes"}
    missing = need - set(table.columns)
    if missing:
        raise ValueError(f"heterogeneity table lacks columns {sorted(missing)}")
    done = table[table["status"] == "done"]
    methods = methods or list(dict.fromkeys(table["method"]))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    panels = list(dict.fromkeys(zip(table["partition"], table["nodes"], strict=True)))
    rows = (("test_accuracy", r"test accuracy of $\bar{x}$ (%)"),
            ("test_accuracy_nodes", "mean test accuracy of nodes (%)"))
    fig, axes = plt.subplots(len(rows), len(panels), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(panels) + 1.8,
                                      panel_size[1] * len(rows)), sharey="row")
    offsets = np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else np.zeros(1)
    for c, (partition, nodes) in enumerate(panels):
        sub = done[(done["partition"] == partition) & (done["nodes"] == nodes)]
        levels = _order(partition, list(table.loc[(table["partition"] == partition)
                                                  & (table["nodes"] == nodes), "level"]))
        for r, (col, label) in enumerate(rows):
            ax = axes[r, c]
            for off, m in zip(offsets, methods, strict=True):
                g = sub[sub["method"] == m].groupby("level")[col]
                mean = g.mean().reindex(levels) * 100
                se = (g.std(ddof=1) / np.sqrt(g.count())).reindex(levels).fillna(0) * 100
                ax.errorbar(np.arange(len(levels)) + off, mean.to_numpy(), yerr=se.to_numpy(),
                            color=palette[m], marker="o", ms=4, capsize=2, lw=1.4, label=m)
            name = "alpha" if partition == "dirichlet" else "k"
            ax.set_xticks(range(len(levels)), [f"{name}={v:g}" for v in levels])
            ax.set_xlabel("heterogeneity (→ stronger)")
            if c == 0:
                ax.set_ylabel(label)
            if r == 0:
                ax.set_title(f"{_PARTITION_TITLES.get(partition, partition)}, ring n={nodes}",
                             fontsize=10)
            ax.grid(True, alpha=0.3)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                       fontsize=8, title="method")
    return fig
