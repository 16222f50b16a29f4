"""The :class:`Dataset` record every loader returns, and the small checks the loaders share.

A dataset is a pair of tensors per split on the CPU (``float32`` inputs; ``int64`` labels for
classification, ``float32`` targets ``[N, k]`` for regression) plus what a study needs to know
about it: the input shape, the number of classes (or outputs), the natural node of each training
sample when the task has one, and the exact optimum of the training objective when it is known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flatlab.errors import DataError
from flatlab.seeds import derive as derive_seed

__all__ = [
    "Dataset",
    "TASKS",
    "derive_seed",
    "check_int",
    "check_float",
    "check_seed",
    "check_options",
]

TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training and a test split, with what is known about the task.

    Attributes:
        name: Canonical dataset name (as :func:`flatlab.data.available` lists it).
        x_train: ``float32`` inputs ``[N, *input_shape]``.
        y_train: ``int64`` labels ``[N]`` (classification) or ``float32`` targets ``[N, k]``
            (regression).
        x_test: Test inputs, like ``x_train``.
        y_test: Test labels or targets, like ``y_train``.
        input_shape: Shape of one input.
        num_classes: Number of classes (classification) or of outputs ``k`` (regression).
        task: ``"classification"`` or ``"regression"``.
        node_ids: The natural node of each training sample (``int64`` ``[N]``, equal counts per
            node) for the synthetic heterogeneous tasks; ``None`` otherwise.
        optimum: Exact minimizer of the global training objective, in the parameter names of
            the ``logistic`` model (``"linear.weight"`` ``[k, d]``, ``"linear.bias"`` ``[k]``,
            ``float64``), for the synthetic linear tasks; ``None`` otherwise.
        info: Everything else: generation arguments, the normalization used, ``optimum_loss``,
            ``bayes_accuracy``, ...
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    task: str
    node_ids: np.ndarray | None = None
    optimum: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"dataset {self.name!r}: task must be one of {', '.join(TASKS)} "
                            f"(got {self.task!r})")
        for split, x, y in (("train", self.x_train, self.y_train),
                            ("test", self.x_test, self.y_test)):
            if tuple(x.shape[1:]) != tuple(self.input_shape):
                raise DataError(f"dataset {self.name!r}: x_{split} has shape {tuple(x.shape)}, "
                                f"expected [N, {', '.join(map(str, self.input_shape))}]")
            if y.shape[0] != x.shape[0]:
                raise DataError(f"dataset {self.name!r}: x_{split} has {x.shape[0]} samples but "
                                f"y_{split} has {y.shape[0]}")
            if self.task == "classification" and (y.ndim != 1 or y.dtype != torch.int64):
                raise DataError(f"dataset {self.name!r}: classification labels y_{split} must "
                                f"be int64 [N] (got {y.dtype} {tuple(y.shape)})")
            if self.task == "regression" and (y.ndim != 2 or not y.is_floating_point()):
                raise DataError(f"dataset {self.name!r}: regression targets y_{split} must be "
                                f"floating [N, k] (got {y.dtype} {tuple(y.shape)})")
        if self.node_ids is not None:
            ids = np.asarray(self.node_ids)
            if ids.shape != (self.num_train,):
                raise DataError(f"dataset {self.name!r}: node_ids must have shape "
                                f"({self.num_train},) (got {ids.shape})")

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        nodes = "" if self.node_ids is None else f", nodes={int(self.node_ids.max()) + 1}"
        return (f"Dataset({self.name!r}, {self.task}, train={self.num_train}, "
                f"test={self.num_test}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}{nodes})")


def check_int(value: Any, name: str, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` as an ``int``, refusing booleans, fractions and out-of-range values.

    Args:
        value: The value to check.
        name: Its name, for the error message.
        minimum: Smallest accepted value, if any.
        maximum: Largest accepted value, if any.

    Returns:
        The integer.

    Raises:
        DataError: If ``value`` is not an integer in range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise DataError(f"{name} must be an integer (got {value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise DataError(f"{name} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise DataError(f"{name} must be <= {maximum} (got {value})")
    return value


def check_float(value: Any, name: str, minimum: float | None = None, *,
                positive: bool = False, below: float | None = None) -> float:
    """Return ``value`` as a finite ``float`` in range.

    Args:
        value: The value to check.
        name: Its name, for the error message.
        minimum: Smallest accepted value (inclusive), if any.
        positive: Require ``value > 0``.
        below: Exclusive upper bound, if any.

    Returns:
        The float.

    Raises:
        DataError: If ``value`` is not a finite number in range.
    """
    if isinstance(value, bool):
        raise DataError(f"{name} must be a number (got {value!r})")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(out):
        raise DataError(f"{name} must be finite (got {value!r})")
    if positive and out <= 0:
        raise DataError(f"{name} must be > 0 (got {value!r})")
    if minimum is not None and out < minimum:
        raise DataError(f"{name} must be >= {minimum} (got {value!r})")
    if below is not None and out >= below:
        raise DataError(f"{name} must be < {below} (got {value!r})")
    return out


def check_seed(seed: Any) -> int:
    """Return ``seed`` as a non-negative ``int`` (what ``numpy.random.default_rng`` accepts)."""
    return check_int(seed, "seed", minimum=0)


def check_options(name: str, options: Mapping[str, Any],
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` into ``defaults``, refusing names the dataset does not take.

    Args:
        name: Dataset name, for the error message.
        options: Keyword options the caller passed.
        defaults: Accepted options and their default values.

    Returns:
        A new dict with every accepted option.

    Raises:
        DataError: If an option is not accepted.
    """
    for key in options:
        if key not in defaults:
            accepted = ", ".join(defaults) if defaults else "none"
            raise DataError(f"dataset {name!r} takes no option {key!r}; accepted: {accepted}")
    return {**defaults, **options}


def label_noise(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Replace a share of the training labels by a uniformly drawn *other* class (seeded).

    Symmetric label noise, the knob that makes generalization matter on a small task (Zhang et
    al. 2017, "Understanding deep learning requires rethinking generalization"): exactly
    ``round(fraction · N)`` training samples, drawn without replacement, get a label drawn
    uniformly from the ``C − 1`` classes that are not theirs. The test set is untouched, so test
    accuracy is against the true labels. ``info["label_noise"]`` records the fraction and
    ``info["noisy"]`` how many samples were relabelled; ``optimum`` is dropped.

    Args:
        dataset: A classification dataset.
        fraction: Share of the training set relabelled, in ``[0, 1)``.
        seed: Seed of the choice of samples and of their new labels.

    Returns:
        A new :class:`Dataset` (the same one for ``fraction = 0``).
    """
    fraction = check_float(fraction, "label_noise", minimum=0.0, below=1.0)
    if fraction == 0.0:
        return dataset
    if dataset.task != "classification" or dataset.num_classes < 2:
        raise DataError(f"label_noise needs a classification task with at least 2 classes; "
                        f"{dataset.name!r} is a {dataset.task} task with "
                        f"{dataset.num_classes} output(s)")
    rng = np.random.default_rng(derive_seed(check_seed(seed), 4242))
    n = dataset.num_train
    k = int(round(fraction * n))
    idx = rng.choice(n, k, replace=False)
    y = dataset.y_train.clone()
    shift = torch.as_tensor(rng.integers(1, dataset.num_classes, size=k), dtype=y.dtype,
                            device="cpu")
    y[idx] = (y[idx] + shift) % dataset.num_classes  # uniform over the C − 1 other classes
    return dataclasses.replace(dataset, y_train=y, optimum=None,
                               info={**dataset.info, "label_noise": fraction, "noisy": k})


def holdout(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Hold out part of the training set as the evaluation split (for tuning, never the test set).

    A stratified, seeded split: within each stratum (a sample's natural node when the dataset
    has ``node_ids``, else its class for classification, else all samples) a fraction
    ``fraction`` (rounded) moves to the evaluation split, so natural nodes keep equal sizes and
    classes keep their proportions. The returned dataset trains on the rest and its
    ``x_test``/``y_test`` are the held-out samples; the real test set is not touched.
    ``optimum`` is dropped (it minimizes the full training objective) and
    ``info["holdout"]`` records the fraction.

    Args:
        dataset: The dataset to split.
        fraction: Share of each stratum held out, in ``(0, 1)``.
        seed: Seed of the split.

    Returns:
        A new :class:`Dataset`.
    """
    fraction = check_float(fraction, "holdout", positive=True, below=1.0)
    if dataset.node_ids is not None:
        strata = np.asarray(dataset.node_ids)
    elif dataset.task == "classification":
        strata = dataset.y_train.numpy()
    else:
        strata = np.zeros(dataset.num_train, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(check_seed(seed), 31337))
    held = []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        held.append(rng.choice(idx, int(round(fraction * idx.size)), replace=False))
    mask = np.zeros(dataset.num_train, dtype=bool)
    mask[np.concatenate(held)] = True
    if mask.all() or not mask.any():
        raise DataError(f"holdout {fraction} of {dataset.num_train} samples leaves an empty split")
    keep = torch.as_tensor(np.flatnonzero(~mask), device="cpu")
    out = torch.as_tensor(np.flatnonzero(mask), device="cpu")
    return dataclasses.replace(
        dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep],
        x_test=dataset.x_train[out], y_test=dataset.y_train[out],
        node_ids=None if dataset.node_ids is None else np.asarray(dataset.node_ids)[~mask],
        optimum=None, info={**dataset.info, "holdout": fraction})
