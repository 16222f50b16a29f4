"""Per-node splits of a training set: iid, Dirichlet, k classes per node, shards, natural nodes.

Every scheme gives every node the same number ``m`` of distinct training indices (a
:class:`Partition` holds them as an ``[n, m]`` array), so the n nodes can be stacked on one device.
All randomness comes from ``numpy.random.default_rng(seed)``.

- ``iid``: a seeded permutation cut into ``n`` parts of ``floor(N / n)``.
- ``dirichlet`` (epfml/quasi-global-momentum, docs/reference/algorithms.md §11.1): workers in
  groups of at most 10 share consecutive slices of the shuffled data; within a group, each class
  is split by proportions ``p ~ Dir(alpha 1)``, with ``p_j = 0`` for workers that already hold their
  share, renormalized; a group is redrawn until its smallest worker holds at least half its
  share. All workers' lists are then concatenated and cut into equal contiguous chunks of
  ``floor(N / n)`` (groups get data slices of ``int(n_g / n * N)``, the last one the rest, as
  in the official code). One departure: when every worker with probability mass is already full (the
  renormalization would divide zero by zero, which the original code turns into "the whole
  class to the last worker"), the class goes to one not-full worker chosen at random, the
  ``alpha -> 0`` limit.
- ``classes`` (Takezawa et al., §11.2): each node draws ``classes_per_node`` distinct classes,
  redrawn until every class is held (after 1000 failed draws, which happens only when
  ``n * classes_per_node`` is close to ``C``, the last draw is repaired instead: each uncovered
  class replaces, at a random node, a class that another node also holds); each class is
  divided evenly among its holders (array split of a shuffled class); each node's list is
  shuffled and truncated to the smallest size.
- ``shards`` (McMahan et al. 2017): a seeded shuffle, a stable sort by label, ``n *
  shards_per_node`` equal contiguous shards, and ``shards_per_node`` random shards per node.
- ``natural``: the dataset's own ``node_ids`` (synthetic heterogeneous tasks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flatlab.data.dataset import Dataset, check_float, check_int, check_seed
from flatlab.errors import DataError

__all__ = ["Partition", "partition", "SCHEMES", "DIRICHLET_GROUP", "MAX_TRIES"]

SCHEMES = ("iid", "dirichlet", "classes", "shards", "natural")
LABEL_SCHEMES = ("dirichlet", "classes", "shards")
#: Workers per Dirichlet group (``n_auxi_workers`` in the official code).
DIRICHLET_GROUP = 10
#: Cap on redraws (Dirichlet groups, class assignments).
MAX_TRIES = 1000


@dataclass(frozen=True, eq=False)
class Partition:
    """Training-sample indices of every node.

    Attributes:
        indices: ``int64`` ``[n, m]``; row ``i`` holds node ``i``'s distinct training indices.
        scheme: The scheme that made it.
        params: The scheme's parameters (``alpha``, ``seed``, ...).
        histogram: ``int64`` ``[n, C]`` label counts per node, or ``None`` for regression.
    """

    indices: np.ndarray
    scheme: str
    params: dict[str, Any] = field(default_factory=dict)
    histogram: np.ndarray | None = None

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        if idx.ndim != 2 or idx.dtype != np.int64:
            raise DataError(f"partition indices must be int64 [n, m] (got {idx.dtype} "
                            f"{idx.shape})")

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.indices.shape[0])

    @property
    def size(self) -> int:
        """Samples per node ``m``."""
        return int(self.indices.shape[1])

    def summary(self) -> pd.DataFrame:
        """One row per node: its size, label counts and distance to the pooled label distribution.

        Columns: ``node``, ``size``, then (classification only) ``class_0`` ... ``class_{C-1}``,
        ``classes`` (number of classes present) and ``tv``, the total-variation distance
        ``0.5 sum_c |p_i(c) - p(c)|`` between the node's label distribution and the pooled one over
        all nodes' samples (0 for a perfectly balanced split, 1 for disjoint supports).

        Returns:
            The table.
        """
        table: dict[str, Any] = {"node": np.arange(self.n), "size": np.full(self.n, self.size)}
        if self.histogram is not None:
            hist = self.histogram
            for c in range(hist.shape[1]):
                table[f"class_{c}"] = hist[:, c]
            table["classes"] = (hist > 0).sum(axis=1)
            local = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
            pooled = hist.sum(axis=0) / max(int(hist.sum()), 1)
            table["tv"] = 0.5 * np.abs(local - pooled).sum(axis=1)
        return pd.DataFrame(table)

    def __repr__(self) -> str:
        return f"Partition({self.scheme!r}, n={self.n}, size={self.size}, params={self.params})"


def _labels_of(data: Dataset | np.ndarray | Any) -> tuple[np.ndarray | None, int, int,
                                                         np.ndarray | None]:
    """``(labels or None for regression, N, number of classes, node_ids)``."""
    if isinstance(data, Dataset):
        if data.task == "regression":
            return None, data.num_train, 0, data.node_ids
        labels = data.y_train.detach().cpu().numpy().astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= data.num_classes):
            raise DataError(f"dataset {data.name!r} has labels outside 0..{data.num_classes - 1}")
        return labels, data.num_train, data.num_classes, data.node_ids
    try:
        arr = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    except (TypeError, ValueError):
        arr = np.asarray([], dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iub":
        if arr.ndim == 1 and arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"partition needs a Dataset or a 1-D integer label array (got "
                            f"{type(data).__name__} of dtype {arr.dtype}, shape {arr.shape})")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"labels must be non-negative integers (got {labels.min()})")
    classes = int(labels.max()) + 1 if labels.size else 0
    return labels, int(labels.size), classes, None


def partition(data: Dataset | np.ndarray, n: int, scheme: str = "iid", *, alpha: float = 1.0,
              classes_per_node: int = 2, shards_per_node: int = 2, seed: int = 0) -> Partition:
    """Split the training set among ``n`` nodes, every node getting the same number of samples.

    Args:
        data: A :class:`Dataset` (labels ``y_train``; ``node_ids`` for ``natural``) or a 1-D
            integer label array.
        n: Number of nodes, ``1 <= n <= N``.
        scheme: ``iid``, ``dirichlet``, ``classes``, ``shards`` or ``natural`` (see the module
            docstring).
        alpha: Dirichlet concentration (``dirichlet``); large is nearly iid, small is skewed.
        classes_per_node: Distinct classes per node (``classes``).
        shards_per_node: Shards per node (``shards``).
        seed: Seed of the split.

    Returns:
        The partition, with per-node label histograms for classification data.

    Raises:
        DataError: For an unknown scheme, out-of-range parameters, regression data with a
            label-based scheme, or a Dirichlet split that cannot be balanced.
    """
    scheme = str(scheme).lower()
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; accepted: {', '.join(SCHEMES)}")
    labels, total, classes, node_ids = _labels_of(data)
    if total < 1:
        raise DataError("cannot partition an empty training set")
    n = check_int(n, "number of nodes n", minimum=1, maximum=total)
    seed = check_seed(seed)
    if labels is None and scheme in LABEL_SCHEMES:
        raise DataError(f"partition scheme {scheme!r} splits by label and needs classification "
                        f"data; regression data accept: iid, natural")
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {"seed": seed}
    if scheme == "iid":
        rows = rng.permutation(total)[: n * (total // n)].reshape(n, total // n)
    elif scheme == "dirichlet":
        alpha = check_float(alpha, "dirichlet alpha", positive=True)
        params["alpha"] = alpha
        rows = _dirichlet(labels, classes, n, alpha, rng)
    elif scheme == "classes":
        k = check_int(classes_per_node, "classes_per_node", minimum=1, maximum=classes)
        params["classes_per_node"] = k
        rows = _classes(labels, classes, n, k, rng)
    elif scheme == "shards":
        s = check_int(shards_per_node, "shards_per_node", minimum=1)
        if n * s > total:
            raise DataError(f"shards: n * shards_per_node = {n * s} shards exceed the {total} "
                            f"training samples")
        params["shards_per_node"] = s
        rows = _shards(labels, n, s, rng)
    else:
        rows = _natural(node_ids, n, data)
        params = {}
    indices = np.ascontiguousarray(rows, dtype=np.int64)
    histogram = None
    if labels is not None:
        offsets = np.arange(n)[:, None] * classes
        histogram = np.bincount((offsets + labels[indices]).ravel(),
                                minlength=n * classes).reshape(n, classes).astype(np.int64)
    return Partition(indices=indices, scheme=scheme, params=params, histogram=histogram)


def _dirichlet(labels: np.ndarray, classes: int, n: int, alpha: float,
               rng: np.random.Generator) -> np.ndarray:
    total = labels.size
    order = rng.permutation(total)  # shuffled (index, label) pairs
    group_sizes = [min(DIRICHLET_GROUP, n - start) for start in range(0, n, DIRICHLET_GROUP)]
    workers: list[np.ndarray] = []
    start = 0
    for g, n_g in enumerate(group_sizes):
        stop = total if g == len(group_sizes) - 1 else start + int(n_g / n * total)
        workers.extend(_dirichlet_group(order[start:stop], labels, classes, n_g, alpha, rng, n))
        start = stop
    flat = np.concatenate(workers)
    m = total // n
    return flat[: n * m].reshape(n, m)


def _dirichlet_group(idx: np.ndarray, labels: np.ndarray, classes: int, n_g: int, alpha: float,
                     rng: np.random.Generator, n: int) -> list[np.ndarray]:
    size = idx.size
    share = size / n_g
    by_class = [idx[labels[idx] == c] for c in range(classes)]
    for _ in range(MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_g)]
        counts = np.zeros(n_g, dtype=np.int64)
        for members in by_class:
            p = rng.dirichlet(np.full(n_g, alpha))
            p = p * (counts < share)
            if not p.sum() > 0:  # all mass on full workers (alpha -> 0): one open worker
                p = np.zeros(n_g)
                p[rng.choice(np.flatnonzero(counts < share))] = 1.0
            p = p / p.sum()
            cuts = (np.cumsum(p) * members.size).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(members, cuts)):
                parts[j].append(piece)
                counts[j] += piece.size
        if counts.min() >= int(0.5 * share):
            return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]
    raise DataError(f"dirichlet: alpha={alpha:g} is too small for n={n} nodes with {classes} "
                    f"classes: no balanced split in {MAX_TRIES} draws (use a larger alpha or "
                    f"fewer nodes)")


def _classes(labels: np.ndarray, classes: int, n: int, k: int,
             rng: np.random.Generator) -> np.ndarray:
    present = np.flatnonzero(np.bincount(labels, minlength=classes))
    if present.size < classes:
        raise DataError(f"classes: labels 0..{classes - 1} are not all present (missing "
                        f"{sorted(set(range(classes)) - set(present.tolist()))})")
    if n * k < classes:
        raise DataError(f"classes: n * classes_per_node = {n * k} cannot cover all {classes} "
                        f"classes (need n * classes_per_node >= {classes})")
    for _ in range(MAX_TRIES):
        held = np.argsort(rng.random((n, classes)), axis=1)[:, :k]  # k distinct classes per node
        if np.unique(held).size == classes:
            break
    else:  # coverage is unlikely (n * k close to C): repair the last draw
        held = _cover_all(held, classes, rng)
    pieces: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in range(classes):
        holders = np.flatnonzero((held == c).any(axis=1))
        members = rng.permutation(np.flatnonzero(labels == c))
        for node, piece in zip(holders, np.array_split(members, holders.size), strict=True):
            pieces[node].append(piece)
    lists = [rng.permutation(np.concatenate(p)) for p in pieces]
    m = min(len(lst) for lst in lists)
    if m == 0:
        raise DataError(f"classes: some node gets no samples ({n} nodes for {labels.size} "
                        f"samples); use fewer nodes")
    return np.stack([lst[:m] for lst in lists])


def _cover_all(held: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Give every uncovered class a slot whose class is held twice (exists when n k >= C)."""
    held = held.copy()
    for c in rng.permutation(np.setdiff1d(np.arange(classes), held)):
        counts = np.bincount(held.ravel(), minlength=classes)
        slots = np.argwhere(counts[held] >= 2)
        node, slot = slots[rng.integers(len(slots))]
        held[node, slot] = c
    return held


def _shards(labels: np.ndarray, n: int, s: int, rng: np.random.Generator) -> np.ndarray:
    shuffled = rng.permutation(labels.size)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    count = n * s
    width = labels.size // count
    shards = by_label[: count * width].reshape(count, width)
    owner = rng.permutation(count).reshape(n, s)
    return shards[owner].reshape(n, s * width)


def _natural(node_ids: np.ndarray | None, n: int, data: Any) -> np.ndarray:
    if node_ids is None:
        name = data.name if isinstance(data, Dataset) else "a label array"
        raise DataError(f"partition scheme 'natural' needs a dataset with node_ids ({name} has "
                        f"none; the synthetic tasks least-squares, logistic and gaussian-mixture "
                        f"with nodes have them)")
    ids = np.asarray(node_ids, dtype=np.int64)
    found = int(ids.max()) + 1 if ids.size else 0
    if found != n or ids.min() < 0:
        raise DataError(f"partition scheme 'natural': the dataset has {found} nodes but n={n}")
    counts = np.bincount(ids, minlength=n)
    if counts.min() != counts.max():
        raise DataError(f"partition scheme 'natural': node sizes differ ({counts.min()} to "
                        f"{counts.max()}); equal sizes are required")
    order = np.argsort(ids, kind="stable")
    return order.reshape(n, counts[0])
