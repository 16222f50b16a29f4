"""Sensitivity figure: the held-out metric against a tuned hyper-parameter, per method."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from flatlab.experiment.evidence import sensitivity as curves

__all__ = ["sensitivity"]


def sensitivity(table: pd.DataFrame, hparam: str, *, score: str = "holdout_accuracy",
                hue: str = "method", panels: list[str] | None = None,
                methods: list[str] | None = None,
                panel_size: tuple[float, float] = (3.8, 3.0)) -> Figure:
    """Held-out accuracy against a tuned value (log x), a curve per method, a panel per setting.

    A run that diverged is drawn as a cross at the bottom of its panel (the boundary: the
    method cannot be run there); the chosen value is ringed; values added by the grid
    extension are included like the others. Robustness to tuning is then the width of the
    plateau around each method's best.

    Args:
        table: One row per tuning run: ``hparam``, ``score``, ``status``, ``hue``, ``panels``
            and optionally ``chosen`` (the tuning table of
            :func:`flatlab.experiment.study.tune_bracketed`). Several rows per value (seeds) are
            averaged.
        hparam: The tuned column (positive).
        score: The held-out metric (a fraction, drawn in %).
        hue: The column naming a curve.
        panels: Columns whose values define one panel (default: a single panel).
        methods: Curves to draw, in legend order (default: as they appear).
        panel_size: Size of one panel in inches.

    Returns:
        The matplotlib figure.
    """
    panels = panels or []
    need = {hparam, score, "status", hue, *panels}
    missing = need - set(table.columns)
    if missing:
        raise ValueError(f"sensitivity table lacks columns {sorted(missing)}")
    methods = methods or list(dict.fromkeys(table[hue]))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    keys = list(dict.fromkeys(map(tuple, table[panels].to_numpy()))) if panels else [()]
    fig, axes = plt.subplots(1, len(keys), squeeze=False, constrained_layout=True,
                             figsize=(panel_size[0] * len(keys) + 1.8, panel_size[1]),
                             sharey="row")

    finite = table.loc[table["status"] == "done", score].astype(float)
    floor = 100 * (np.nanmin(finite) if finite.notna().any() else 0.0)
    for ax, key in zip(axes[0], keys, strict=True):
        sub = table
        for col, v in zip(panels, key, strict=True):
            sub = sub[sub[col] == v]
        per_value = curves(sub, [hue], hparam, score)
        for m in methods:
            c = per_value[per_value[hue] == m]
            if c.empty:
                continue
            ok = c.dropna(subset=["score_mean"])
            ax.plot(ok[hparam], 100 * ok["score_mean"], marker="o", ms=3, lw=1.4,
                    color=palette[m], label=m)
            div = c.loc[c["diverged"] > 0, hparam].tolist()
            if div:
                ax.plot(div, [floor] * len(div), marker="x", ms=7, ls="none",
                        color=palette[m])
            g = sub[sub[hue] == m]
            if "chosen" in g:
                pick = g[g["chosen"].astype(bool)]
                ax.plot(pick[hparam], 100 * pick[score].astype(float), marker="o", ms=8,
                        ls="none", mfc="none", mec=palette[m], mew=1.6)
        ax.set_xscale("log")
        ax.set_xlabel(hparam)
        ax.set_title(", ".join(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}"
                               for c, v in zip(panels, key, strict=True)), fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel(f"{score.replace('_', ' ')} (%)")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8,
                       title=f"{hue} (○ chosen, × diverged)")
    return fig
