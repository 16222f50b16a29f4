"""Training curves over a results table (``flatlab.results.load``)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from flatlab.errors import FlatlabError

__all__ = ["training_curves", "DEFAULT_CURVES"]

DEFAULT_CURVES = (("test_accuracy", "avg"), ("train_loss", "avg"), ("consensus_distance",
                                                                    "network"),
                  ("grad_norm", "avg"))
_LOG = {"train_loss", "test_loss", "consensus_distance", "consensus_distance_rel", "grad_norm",
        "batch_loss"}


def training_curves(df: pd.DataFrame, metrics: Sequence[str] | None = None,
                    hue: str = "algorithm.name", x: str = "epoch") -> plt.Figure:
    """One panel per metric against ``x``, a line per ``hue`` value (mean and band over seeds).

    Args:
        df: A long results table (columns step, epoch, metric, scope, value and config columns).
        metrics: Metric names; each is drawn at scope ``avg`` (or ``network`` when it has no
            ``avg`` rows). Default: test accuracy, training loss, consensus distance, gradient
            norm, those present.
        hue: Config column that separates the lines.
        x: ``epoch`` or ``step``.

    Returns:
        The figure.

    Raises:
        FlatlabError: A metric, ``hue`` or ``x`` that the table does not have.
    """
    missing = {"metric", "scope", "value", x} - set(df.columns)
    if missing:
        raise FlatlabError(f"results table lacks columns {sorted(missing)}")
    if metrics is None:
        wanted = [(m, s) for m, s in DEFAULT_CURVES if (df.metric == m).any()]
    else:
        wanted = []
        for m in metrics:
            scopes = set(df.loc[df.metric == m, "scope"])
            if not scopes:
                raise FlatlabError(f"no metric {m!r} in the results; present: "
                                 f"{', '.join(sorted(set(df.metric)))}")
            wanted.append((m, "avg" if "avg" in scopes else "network" if "network" in scopes
                           else "mean"))
    if not wanted:
        raise FlatlabError("none of the default metrics is in the results; name one with "
                           f"metrics=[...] (present: {', '.join(sorted(set(df.metric)))})")
    if hue is not None and hue not in df.columns:
        cols = [c for c in df.columns if c not in ("step", "epoch", "metric", "scope", "value")]
        shown = ", ".join(cols[:20]) + (", ..." if len(cols) > 20 else "")
        raise FlatlabError(f"hue {hue!r} is not a column of the results; accepted: {shown}")
    fig, axes = plt.subplots(1, len(wanted), figsize=(4.2 * len(wanted), 3.4), squeeze=False)
    for ax, (m, scope) in zip(axes[0], wanted, strict=True):
        d = df[(df.metric == m) & (df.scope == scope)]
        sns.lineplot(data=d, x=x, y="value", hue=hue, ax=ax, errorbar=("pi", 100),
                     legend=ax is axes[0][0])
        ax.set_title(f"{m} ({scope})")
        ax.set_ylabel(m)
        if m in _LOG and (d.value > 0).all():
            ax.set_yscale("log")
    fig.tight_layout()
    return fig
