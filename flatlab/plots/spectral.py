"""Spectral-gap figure: gap against ``n`` and transient iterations of DSGD against GT."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["spectral_gap"]

_ALGO_LABELS = {"dsgd": "DSGD", "gradient-tracking": "gradient tracking"}


def spectral_gap(study: pd.DataFrame, *, figsize: tuple[float, float] = (11.0, 4.2)) -> Figure:
    """Two panels from :func:`flatlab.theory.spectral_gap_study`'s table.

    Left: spectral gap ``1 - rho`` against ``n`` per topology (log-log; one marker per topology,
    since some coincide: the hypercube and the exponential graph have the same gap; the
    exact-averaging one-peer exponential schedule, gap 1 over a period, sits on top).
    Right: transient iterations against ``n``, DSGD (solid) against gradient tracking
    (dashed), per topology.

    Args:
        study: Columns ``topology, n, spectral_gap, algorithm, transient_iterations``.
        figsize: Figure size in inches.

    Returns:
        The matplotlib figure.
    """
    need = {"topology", "n", "spectral_gap", "algorithm", "transient_iterations"}
    missing = need - set(study.columns)
    if missing:
        raise ValueError(f"study table lacks columns {sorted(missing)}")
    topologies = list(dict.fromkeys(study["topology"]))
    palette = dict(zip(topologies, sns.color_palette("tab10", len(topologies)), strict=True))
    fig, (ax_gap, ax_tr) = plt.subplots(1, 2, figsize=figsize, constrained_layout=True)

    gaps = study.drop_duplicates(["topology", "n"])
    sns.lineplot(data=gaps, x="n", y="spectral_gap", hue="topology", style="topology",
                 palette=palette, markers=True, dashes=False, ax=ax_gap, legend=False)
    ax_gap.set(xscale="log", yscale="log", xlabel="nodes n", ylabel=r"spectral gap $1-\rho$",
               title="Spectral gap")

    tr = study.assign(algorithm=study["algorithm"].map(lambda a: _ALGO_LABELS.get(a, a)))
    sns.lineplot(data=tr, x="n", y="transient_iterations", hue="topology", style="algorithm",
                 palette=palette, marker="o", ax=ax_tr)
    ax_tr.set(xscale="log", yscale="log", xlabel="nodes n", ylabel="transient iterations",
              title="Transient iterations (orders of magnitude)")
    sns.move_legend(ax_tr, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    for ax in (ax_gap, ax_tr):
        ax.grid(True, which="major", alpha=0.3)
    return fig
