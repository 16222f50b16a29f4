"""Learning-rate schedules: a pure function of the step, so a resumed run gets the same values."""

from __future__ import annotations

import math

from flatlab.experiment.config import OptimConfig

__all__ = ["lr_at"]


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Step size at ``step`` (0-based) of a run of ``total`` steps.

    Linear warm-up over the first ``optim.warmup`` steps (``lr · (step + 1)/warmup``), then:

    - ``constant``: ``lr``;
    - ``step``: ``lr · gamma^k``, ``k`` the number of milestones ``m`` with ``step >= m · total``;
    - ``cosine``: ``min_lr + (lr − min_lr)(1 + cos(π s/S))/2`` over the ``S = total − warmup``
      steps after the warm-up (``s`` steps into them).
    """
    lr, w = optim.lr, optim.warmup
    if step < w:
        return lr * (step + 1) / w
    if optim.schedule == "constant":
        return lr
    if optim.schedule == "step":
        k = sum(step >= m * total for m in optim.milestones)
        return lr * optim.gamma**k
    if optim.schedule == "cosine":
        span = max(total - w, 1)
        frac = min((step - w) / span, 1.0)
        return optim.min_lr + (lr - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {optim.schedule!r}")
