"""Dataset names: :func:`load`, :func:`available` and :func:`catalog`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatlab.data import files, offline, synthetic
from flatlab.data.dataset import Dataset, check_seed
from flatlab.errors import DataError

__all__ = ["load", "available", "catalog"]


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Dataset]
    description: str
    source: str
    shapes: str
    task: str
    defaults: dict[str, Any]
    needs_root: bool = False
    takes_nodes: str = "ignored"


_REGISTRY: dict[str, _Entry] = {
    "mnist1d": _Entry(
        lambda seed, nodes, root, **o: offline.load_mnist1d(seed, **o),
        "mnist1d: 1-D signals of the ten digits (Greydanus 2020), generated offline, seed 42",
        "mnist1d.data.make_dataset (cached as .npz)", "x [4000, 40] / [1000, 40], 10 classes",
        "classification", offline.MNIST1D_DEFAULTS),
    "digits": _Entry(
        lambda seed, nodes, root, **o: offline.load_digits(seed, **o),
        "scikit-learn 8x8 digits, stratified 1437/360 split by seed",
        "sklearn.datasets.load_digits (bundled)",
        "x [1437, 64] (or [N, 1, 8, 8]) / [360, 64], 10 classes", "classification",
        offline.DIGITS_DEFAULTS),
    "least-squares": _Entry(
        lambda seed, nodes, root, **o: synthetic.load_least_squares(seed, nodes, **o),
        "heterogeneous linear regression, node-specific true weights, exact optimum",
        "synthetic (numpy, seeded)", "x [nodes * 64, 10], y [nodes * 64, 1]", "regression",
        synthetic.LEAST_SQUARES_DEFAULTS, takes_nodes="required"),
    "logistic": _Entry(
        lambda seed, nodes, root, **o: synthetic.load_logistic(seed, nodes, **o),
        "heterogeneous softmax regression, labels sampled from the true model, exact optimum",
        "synthetic (numpy, seeded)", "x [nodes * 64, 10], 2 classes", "classification",
        synthetic.LOGISTIC_DEFAULTS, takes_nodes="required"),
    "gaussian-mixture": _Entry(
        lambda seed, nodes, root, **o: synthetic.load_gaussian_mixture(seed, nodes, **o),
        "Gaussian blobs with shared isotropic covariance and a known Bayes accuracy",
        "synthetic (numpy, seeded)", "x [2000, 2] / [1000, 2], 3 classes", "classification",
        synthetic.GAUSSIAN_MIXTURE_DEFAULTS, takes_nodes="optional"),
    "mnist": _Entry(
        lambda seed, nodes, root, **o: files.load_idx_dataset("mnist", root, **o),
        "MNIST handwritten digits from local IDX files",
        "root or $FLATLAB_DATA: IDX files (optionally .gz)",
        "x [60000, 1, 28, 28] / [10000, 1, 28, 28], 10 classes", "classification",
        files.FILE_DEFAULTS, needs_root=True),
    "fashion-mnist": _Entry(
        lambda seed, nodes, root, **o: files.load_idx_dataset("fashion-mnist", root, **o),
        "Fashion-MNIST clothing images from local IDX files",
        "root or $FLATLAB_DATA: IDX files (optionally .gz)",
        "x [60000, 1, 28, 28] / [10000, 1, 28, 28], 10 classes", "classification",
        files.FILE_DEFAULTS, needs_root=True),
    "cifar10": _Entry(
        lambda seed, nodes, root, **o: files.load_cifar10(root, **o),
        "CIFAR-10 colour images from the local binary or python-version batches",
        "root or $FLATLAB_DATA: cifar-10-batches-bin or cifar-10-batches-py",
        "x [50000, 3, 32, 32] / [10000, 3, 32, 32], 10 classes", "classification",
        files.FILE_DEFAULTS, needs_root=True),
}

_ALIASES = {"fmnist": "fashion-mnist", "cifar-10": "cifar10", "mnist-1d": "mnist1d",
            "gmm": "gaussian-mixture"}


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string (got {name!r}); accepted: "
                        f"{', '.join(_REGISTRY)}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(_REGISTRY)}")
    return key


def available() -> list[str]:
    """Names :func:`load` accepts (aliases ``fmnist``, ``cifar-10``, ``mnist-1d``, ``gmm`` too)."""
    return list(_REGISTRY)


def catalog() -> dict[str, dict[str, Any]]:
    """What every dataset is, where it comes from, its shapes and its options.

    Returns:
        ``name -> {"description", "source", "shapes", "task", "options" (name -> default),
        "nodes" ("required", "optional" or "ignored"), "local_files" (bool)}``; shapes are for
        the default options.
    """
    return {
        name: {
            "description": e.description,
            "source": e.source,
            "shapes": e.shapes,
            "task": e.task,
            "options": dict(e.defaults),
            "nodes": e.takes_nodes,
            "local_files": e.needs_root,
        }
        for name, e in _REGISTRY.items()
    }


def load(name: str, *, root: str | Path | None = None, seed: int = 0, nodes: int | None = None,
         **options: Any) -> Dataset:
    """Load or generate a dataset by name, offline.

    Args:
        name: One of :func:`available` (case and ``_``/``-`` are not significant).
        root: Folder of the file-based datasets (``mnist``, ``fashion-mnist``, ``cifar10``);
            ``$FLATLAB_DATA`` when None. Other datasets ignore it.
        seed: Seed of the synthetic data and of the digits split (mnist1d uses its own
            ``data_seed`` option, 42 by default; the file datasets are fixed).
        nodes: Number of nodes of the synthetic heterogeneous tasks (required by
            ``least-squares`` and ``logistic``, optional for ``gaussian-mixture``); the other
            datasets ignore it (split them with :func:`flatlab.data.partition`).
        **options: Dataset options; :func:`catalog` lists them with their defaults.

    Returns:
        The dataset.

    Raises:
        DataError: For an unknown name or option, a bad value, or missing local files.
    """
    key = _canonical(name)
    return _REGISTRY[key].build(check_seed(seed), nodes, root, **options)
