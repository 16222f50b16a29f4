"""Per-node minibatches ``[n, b, ...]`` on the device, with no Python loop over nodes.

:class:`NodeSampler` moves the partitioned training data to the device once, as ``[n, m, ...]``
tensors. Every epoch, every node shuffles its own ``m`` samples: all ``n`` permutations are drawn
at once (``torch.rand(n, m).argsort(dim=1)``) from a CPU generator seeded by ``(seed, epoch)``,
so the batches do not depend on the device and ``batch(step)`` is a pure function of ``step``:
a resumed run sees exactly the batches it would have seen. The last partial batch of an epoch is
dropped.
"""

from __future__ import annotations

import torch

from flatlab.data.dataset import check_int, check_seed
from flatlab.data.partition import Partition
from flatlab.errors import DataError
from flatlab.seeds import seed_for

__all__ = ["NodeSampler"]


class NodeSampler:
    """Minibatches of every node at once, shaped ``[n, b, ...]``, on the device.

    Args:
        x: Training inputs ``[N, ...]`` (the dataset's ``x_train``).
        y: Training labels ``[N]`` or targets ``[N, k]``.
        partition: Which samples each node holds.
        batch_size: Samples per node per step, ``1 <= b <= m``.
        seed: Seed of the per-epoch shuffles.
        device: Where the data and the batches live.
        dtype: Floating dtype for the inputs (and for floating targets), if given.
        rows: Keep only these nodes (a slice of ``0..n-1``; a distributed rank's block). Their
            batches are exactly rows ``rows`` of the full sampler's (the shuffles are drawn for
            all nodes, then sliced).

    Attributes:
        x: Inputs on the device, ``[n, m, ...]``.
        y: Labels on the device, ``[n, m]`` or ``[n, m, k]``.
        n: Number of nodes held (``len(rows)``; all ``partition.n`` by default).
        m: Samples per node.
        batch_size: Samples per node per step.
        steps_per_epoch: ``m // batch_size``.
        seed: Seed of the shuffles.
        device: Device of the batches.

    Example:
        >>> from flatlab import data
        >>> ds = data.load("digits", seed=0)
        >>> part = data.partition(ds, 4, "iid", seed=0)
        >>> sampler = NodeSampler(ds.x_train, ds.y_train, part, batch_size=32, seed=0)
        >>> xb, yb = sampler.batch(5)                     # [n, 32, 64], [n, 32]
        >>> tuple(xb.shape), sampler.steps_per_epoch
        ((4, 32, 64), 11)
        >>> bool((sampler.batch(5)[0] == xb).all())        # a pure function of the step
        True
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, partition: Partition, batch_size: int,
                 *, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, rows: slice | None = None) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"NodeSampler needs torch tensors x and y (got "
                            f"{type(x).__name__} and {type(y).__name__})")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"NodeSampler: x has {x.shape[0]} samples but y has {y.shape[0]}")
        if not isinstance(partition, Partition):
            raise DataError(f"NodeSampler needs a flatlab.data.Partition (got "
                            f"{type(partition).__name__})")
        if dtype is not None and not dtype.is_floating_point:
            raise DataError(f"NodeSampler dtype must be a floating dtype (got {dtype})")
        idx = partition.indices
        if idx.size and (idx.min() < 0 or idx.max() >= x.shape[0]):
            raise DataError(f"NodeSampler: partition indices reach {int(idx.max())} but the data "
                            f"have {x.shape[0]} samples")
        self.n_total, self.m = partition.n, partition.size
        self.rows = slice(0, self.n_total) if rows is None else rows
        held = range(self.n_total)[self.rows]
        if rows is not None and (rows.step not in (None, 1) or len(held) == 0):
            raise DataError(f"NodeSampler rows must be a non-empty contiguous slice of "
                            f"0..{self.n_total - 1} (got {rows})")
        self.n = len(held)
        idx = idx[self.rows]
        self.batch_size = check_int(batch_size, f"batch_size (m = {self.m} samples per node)",
                                    minimum=1, maximum=self.m)
        self.steps_per_epoch = self.m // self.batch_size
        self.seed = check_seed(seed)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise DataError(f"NodeSampler: bad device {device!r} ({exc})") from None
        rows = torch.as_tensor(idx, dtype=torch.int64, device=x.device)
        self.x = self._move(x[rows], dtype)
        self.y = self._move(y[rows.to(y.device)], dtype)
        self._nodes = torch.arange(self.n, device=self.device)[:, None]
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def _move(self, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=self.device, dtype=dtype)
        return t.to(device=self.device)

    def __len__(self) -> int:
        """Steps per epoch."""
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (f"NodeSampler(n={self.n}, m={self.m}, batch_size={self.batch_size}, "
                f"steps_per_epoch={self.steps_per_epoch}, device={self.device})")

    def permutation(self, epoch: int) -> torch.Tensor:
        """Every node's order of its samples in ``epoch``: ``[n, m]`` on the device.

        Args:
            epoch: Epoch number (0-based).

        Returns:
            Row ``i`` is a permutation of ``0..m-1`` (positions in node ``i``'s data).
        """
        epoch = check_int(epoch, "epoch", minimum=0)
        if self._epoch != epoch:
            gen = torch.Generator(device="cpu").manual_seed(seed_for(self.seed, "sampler", epoch))
            keys = torch.rand(self.n_total, self.m, generator=gen, dtype=torch.float64,
                              device="cpu")
            self._perm = keys[self.rows].argsort(dim=1).to(self.device)
            self._epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Positions ``[n, b]`` (into each node's data) of the batch at ``step``."""
        step = check_int(step, "step", minimum=0)
        epoch, pos = divmod(step, self.steps_per_epoch)
        b = self.batch_size
        return self.permutation(epoch)[:, pos * b:(pos + 1) * b]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch of every node at ``step`` (a pure function of ``step``).

        Args:
            step: Global step (0-based); epoch ``step // steps_per_epoch``.

        Returns:
            ``(x [n, b, ...], y [n, b] or [n, b, k])`` on the device.
        """
        sel = self.indices(step)
        return self.x[self._nodes, sel], self.y[self._nodes, sel]

    def epoch(self, step: int) -> float:
        """Fractional epochs completed before ``step``."""
        return check_int(step, "step", minimum=0) / self.steps_per_epoch
