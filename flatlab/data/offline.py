"""Datasets that need no files: mnist1d (generated locally) and scikit-learn's digits (bundled).

mnist1d is generated with ``mnist1d.data.make_dataset``, never ``get_dataset`` (which downloads).
The generator reseeds the global ``numpy`` and ``random`` RNGs; both states are saved before the
call and restored after it, so loading never changes a caller's random streams. Generation takes
about 2.5 s for the default 5,000 samples, so the arrays are cached (see
:mod:`flatlab.data.cache`) under a key made of every generation argument and the mnist1d version.
"""

from __future__ import annotations

import random
from importlib import metadata
from typing import Any

import numpy as np
import torch

from flatlab.data.cache import cache_key, load_arrays, save_arrays
from flatlab.data.dataset import Dataset, check_float, check_int, check_options
from flatlab.errors import DataError

__all__ = ["MNIST1D_DEFAULTS", "DIGITS_DEFAULTS", "load_mnist1d", "load_digits"]

#: Generation arguments of ``mnist1d.data.get_dataset_args`` (``seed`` is called ``data_seed``
#: here, and ``cache=False`` skips the on-disk cache).
MNIST1D_DEFAULTS: dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": (36, 60),
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "data_seed": 42,
    "cache": True,
}

DIGITS_DEFAULTS: dict[str, Any] = {"test_size": 360, "normalize": True, "as_image": False}


def _mnist1d_args(options: dict[str, Any]) -> dict[str, Any]:
    opts = check_options("mnist1d", options, MNIST1D_DEFAULTS)
    args = dict(opts)
    del args["cache"]
    args["num_samples"] = check_int(opts["num_samples"], "mnist1d num_samples", minimum=20)
    args["train_split"] = check_float(opts["train_split"], "mnist1d train_split", positive=True,
                                      below=1.0)
    args["data_seed"] = check_int(opts["data_seed"], "mnist1d data_seed", minimum=0,
                                  maximum=2**32 - 1)
    args["final_seq_length"] = check_int(opts["final_seq_length"], "mnist1d final_seq_length",
                                         minimum=2)
    args["template_len"] = check_int(opts["template_len"], "mnist1d template_len", minimum=1)
    args["max_translation"] = check_int(opts["max_translation"], "mnist1d max_translation",
                                        minimum=0)
    args["shuffle_seq"] = bool(opts["shuffle_seq"])
    try:
        pad = tuple(int(p) for p in opts["padding"])
    except (TypeError, ValueError):
        pad = ()
    if len(pad) != 2 or not 0 <= pad[0] <= pad[1]:
        raise DataError(f"mnist1d padding must be two integers 0 <= low <= high "
                        f"(got {opts['padding']!r})")
    args["padding"] = list(pad)
    for key in ("scale_coeff", "corr_noise_scale", "iid_noise_scale", "shear_scale"):
        args[key] = check_float(opts[key], f"mnist1d {key}", minimum=0.0)
    n_test = args["num_samples"] - int(args["num_samples"] * args["train_split"])
    if n_test < 1 or n_test >= args["num_samples"]:
        raise DataError(f"mnist1d num_samples={args['num_samples']} with train_split="
                        f"{args['train_split']} leaves an empty split")
    return args


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    from mnist1d import data as mnist1d_data  # looked up at call time (tests monkeypatch it)

    gen_args = mnist1d_data.get_dataset_args()
    for key, value in args.items():
        setattr(gen_args, "seed" if key == "data_seed" else key, value)
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        raw = mnist1d_data.make_dataset(gen_args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {key: np.asarray(raw[key]) for key in ("x", "y", "x_test", "y_test", "t")}


def load_mnist1d(seed: int = 0, **options: Any) -> Dataset:
    """mnist1d (Greydanus 2020), generated offline; 4,000 train / 1,000 test samples of 40 points.

    The data do not depend on ``seed``: the generator's own seed is the option ``data_seed``,
    42 by default as in the mnist1d paper, so that numbers match the literature. Inputs are as
    generated (the generator centres and scales the whole set to unit standard deviation), cast to
    ``float32``, shape ``[N, final_seq_length]``; labels 0-9, balanced.

    Args:
        seed: Unused (kept for a uniform signature); see ``data_seed``.
        **options: Any argument of ``mnist1d.data.get_dataset_args`` except ``url``
            (``num_samples``, ``train_split``, ``shuffle_seq``, noise scales, ...), ``data_seed``,
            and ``cache``.

    Returns:
        The dataset; ``info`` holds the generation arguments, the cache file and the time axis.
    """
    del seed
    args = _mnist1d_args(options)
    use_cache = bool(options.get("cache", MNIST1D_DEFAULTS["cache"]))
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:  # pragma: no cover - installed with flatlab
        version = "unknown"
    key = cache_key("mnist1d", {**args, "mnist1d": version, "format": 1})
    arrays = load_arrays(key) if use_cache else None
    cached = arrays is not None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        if use_cache:
            save_arrays(key, arrays)
    info = {"args": args, "source": "mnist1d.data.make_dataset", "cache_file": key,
            "from_cache": cached, "t": arrays["t"],
            "normalization": "as generated (whole set centred, unit std)"}
    length = args["final_seq_length"]
    return Dataset(
        name="mnist1d",
        x_train=torch.as_tensor(arrays["x"], dtype=torch.float32, device="cpu"),
        y_train=torch.as_tensor(arrays["y"], dtype=torch.int64, device="cpu"),
        x_test=torch.as_tensor(arrays["x_test"], dtype=torch.float32, device="cpu"),
        y_test=torch.as_tensor(arrays["y_test"], dtype=torch.int64, device="cpu"),
        input_shape=(length,),
        num_classes=10,
        task="classification",
        info=info,
    )


def load_digits(seed: int = 0, **options: Any) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split by ``seed``.

    The split is stratified by class: ``test_size`` samples (360 by default, so 1,437 train)
    chosen with ``sklearn.model_selection.train_test_split(random_state=seed)``. Pixels (0-16)
    are divided by 16; with ``normalize=True`` (default) each feature is then standardized with
    the training mean and standard deviation (features constant on the training set are only
    centred).

    Args:
        seed: Seed of the train/test split.
        **options: ``test_size`` (int, default 360), ``normalize`` (bool, default True),
            ``as_image`` (bool, default False: inputs ``[N, 64]``; True: ``[N, 1, 8, 8]``).

    Returns:
        The dataset; ``info["mean"]`` and ``info["std"]`` hold the statistics used.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    opts = check_options("digits", options, DIGITS_DEFAULTS)
    bunch = sk_load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    test_size = check_int(opts["test_size"], "digits test_size", minimum=10,
                          maximum=len(y) - 10)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y,
                                              random_state=seed)
    info: dict[str, Any] = {"source": "sklearn.datasets.load_digits", "split_seed": seed,
                            "test_size": test_size}
    if opts["normalize"]:
        mean = x_tr.mean(axis=0)
        std = x_tr.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        info.update(normalization="x / 16, then per-feature standardization (train statistics)",
                    mean=mean, std=std)
    else:
        info["normalization"] = "x / 16"
    shape: tuple[int, ...] = (1, 8, 8) if opts["as_image"] else (64,)
    return Dataset(
        name="digits",
        x_train=torch.as_tensor(x_tr, dtype=torch.float32, device="cpu").reshape(-1, *shape),
        y_train=torch.as_tensor(y_tr, dtype=torch.int64, device="cpu"),
        x_test=torch.as_tensor(x_te, dtype=torch.float32, device="cpu").reshape(-1, *shape),
        y_test=torch.as_tensor(y_te, dtype=torch.int64, device="cpu"),
        input_shape=shape,
        num_classes=10,
        task="classification",
        info=info,
    )
