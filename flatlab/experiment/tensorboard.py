"""Live logging to TensorBoard: ``log.tensorboard: true`` (``--tensorboard``).

:class:`TensorBoardLog` is a runner hook (:mod:`flatlab.experiment.hooks`). At every measured
step it writes into the run directory, as TensorBoard event files:

- every metric row as a scalar ``METRIC/SCOPE`` (``test_accuracy/avg``, ``train_loss/mean``,
  ``hessian_top/avg``, the step size ``lr/network``, ...), the same numbers as
  ``metrics.parquet`` (in float32, TensorBoard's type);
- the per-node values of a metric (scopes ``0``..``n-1``) as a histogram ``nodes/METRIC``, so
  that the spread of, e.g., per-node top eigenvalues shows over training;
- the Hessian spectral density (``spectral_density``'s Ritz values, weighted) as a histogram
  ``hessian_spectrum``;
- the run's timings (``time/total``, ``time/train``, ``time/checkpoint``, ``time/measure/NAME``,
  seconds so far, as ``status.json``'s ``timings_s``).

``tensorboard --logdir runs/`` then shows every run of a sweep live, one run per folder. A
resumed run purges the events after its checkpoint step, so an interrupted stretch is not shown
twice. It needs the ``tensorboard`` package (``pip install "flatlab[tensorboard]"``), an optional
extra; asking for it without the package is refused in one line before the run starts. Only the
process that writes the run directory (rank 0) writes events. The setting does not change what
the run computes, so a run may be resumed with it switched on or off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flatlab.errors import ConfigError
from flatlab.experiment.loop import Hook, Loop, Outcome

__all__ = ["TensorBoardLog", "require_tensorboard"]

#: Bins of the histograms of per-node values and of the spectral density.
BINS = 30


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line refusal without the package."""
    try:
        import tensorboard  # noqa: F401 - torch's writer needs it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("log.tensorboard needs the tensorboard package; accepted: install it "
                          "(pip install tensorboard, or flatlab[tensorboard]) or set "
                          "log.tensorboard=false") from None
    return SummaryWriter


class TensorBoardLog(Hook):
    """Writes the rows a run records (and its extra tables and timings) as TensorBoard events.

    Args:
        out: The run directory (the event files go there).
        record: The run's :class:`~flatlab.experiment.hooks.Record`; rows already in it (a
            resumed run's) were written by the earlier process.
        start: The step the run starts from: a resumed run's checkpoint step. Its events up to
            and including that step were written before the interruption and stay; those after
            it are purged (the resumed run writes them again).
    """

    reads = frozenset({"rows", "tables", "measure_s"})  # this step's measures (timings lag)

    def __init__(self, out: Path, record: Any, start: int) -> None:
        writer = require_tensorboard()
        self.writer = writer(str(out), purge_step=start + 1 if start > 0 else None)
        self.record = record
        self.sent = len(record.rows)
        self.sent_tables = {k: len(v) for k, v in record.tables.items()}

    def flush(self) -> None:
        """Write what was recorded since the last call."""
        rows, self.sent = self.record.rows[self.sent:], len(self.record.rows)
        nodes: dict[tuple[int, str], list[float]] = {}
        last = None
        for step, _, metric, scope, value in rows:
            self.writer.add_scalar(f"{metric}/{scope}", value, step)
            if scope.isdigit():
                nodes.setdefault((step, metric), []).append(value)
            last = step
        for (step, metric), values in nodes.items():
            v = np.asarray(values, dtype=np.float64)
            if np.isfinite(v).all():
                self.writer.add_histogram(f"nodes/{metric}", v, step, bins=min(BINS, len(v)))
        density = self.record.tables.get("density", [])
        new, self.sent_tables["density"] = (density[self.sent_tables.get("density", 0):],
                                            len(density))
        for step in sorted({r["step"] for r in new}):
            at = [r for r in new if r["step"] == step]
            self._spectrum(step, np.array([r["eigenvalue"] for r in at]),
                           np.array([r["weight"] for r in at]))
        if last is not None:
            t = self.record.timings()
            for k in ("total", "train", "checkpoint"):
                self.writer.add_scalar(f"time/{k}", t[k], last)
            for k, v in t["measures"].items():
                self.writer.add_scalar(f"time/measure/{k}", v, last)
        self.writer.flush()

    def _spectrum(self, step: int, eig: np.ndarray, weight: np.ndarray) -> None:
        """The SLQ density (Ritz values with weights; all runs together) as one histogram."""
        ok = np.isfinite(eig) & np.isfinite(weight)
        eig, weight = eig[ok], weight[ok]
        if not eig.size or weight.sum() <= 0:
            return
        weight = weight / weight.sum()
        counts, edges = np.histogram(eig, bins=BINS, weights=weight)
        self.writer.add_histogram_raw(
            "hessian_spectrum", min=float(eig.min()), max=float(eig.max()), num=1.0,
            sum=float((weight * eig).sum()), sum_squares=float((weight * eig ** 2).sum()),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step)

    def on_start(self, loop: Loop) -> None:
        """Write the initial measurement."""
        self.flush()

    def on_step(self, loop: Loop) -> None:
        """Write the rows of a measured step."""
        if len(self.record.rows) > self.sent:
            self.flush()

    def on_end(self, loop: Loop, outcome: Outcome) -> None:
        """Write what is left (a diverged row, a final measurement)."""
        self.flush()

    def on_close(self) -> None:
        """Close the event file."""
        self.writer.close()
