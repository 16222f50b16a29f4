"""Image datasets read from a local folder in their standard distribution formats.

flatlab never downloads. The folder is ``root`` or, when it is ``None``, ``$FLATLAB_DATA``.

- CIFAR-10, "binary version": ``cifar-10-batches-bin/data_batch_1.bin`` ... ``data_batch_5.bin``
  and ``test_batch.bin`` (records of one label byte and 3072 image bytes in channel-major order),
  looked up in ``root/cifar-10-batches-bin`` or ``root``; read first when present.
- CIFAR-10, "python version": ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` and
  ``test_batch`` (pickled dicts with ``b"data"``, ``uint8`` ``[10000, 3072]`` in channel-major
  order, and ``b"labels"``), looked up in ``root/cifar-10-batches-py`` or ``root`` itself. They
  are read by an unpickler restricted to plain containers, bytes, numbers and numpy arrays
  (:class:`RestrictedUnpickler`): a batch that names any other class or function (and so could
  run code) is refused before anything in it runs.
- MNIST and Fashion-MNIST, IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), looked up in
  ``root``, ``root/<name>`` and torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw``.

Inputs are divided by 255 and, with ``normalize=True`` (default), standardized with the usual
constants: MNIST 0.1307/0.3081, Fashion-MNIST 0.2860/0.3530, CIFAR-10 per channel mean
(0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616). Layouts: ``[N, 1, 28, 28]`` and
``[N, 3, 32, 32]``.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatlab.data.dataset import Dataset, check_options
from flatlab.errors import DataError

__all__ = ["IDX_FILES", "CIFAR10_FILES", "CIFAR10_BIN_FILES", "NORMALIZATION", "read_idx",
           "load_idx_dataset", "load_cifar10", "data_root", "RestrictedUnpickler"]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_BIN_FILES = tuple(f"{name}.bin" for name in CIFAR10_FILES)
_CIFAR_RECORD = 1 + 3072  # one label byte, then the 32 x 32 x 3 image, channel-major

#: Per-channel (mean, std) applied after dividing by 255.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
FILE_DEFAULTS: dict[str, Any] = {"normalize": True}
_NO_DOWNLOAD = "flatlab never downloads"


def data_root(name: str, root: str | Path | None) -> Path:
    """The folder to read ``name`` from: ``root``, else ``$FLATLAB_DATA``.

    Args:
        name: Dataset name, for the error message.
        root: Folder given by the caller, or ``None``.

    Returns:
        The folder (existence is checked by the reader).

    Raises:
        DataError: If neither ``root`` nor ``$FLATLAB_DATA`` is given.
    """
    if root is None:
        env = os.environ.get("FLATLAB_DATA")
        if not env:
            raise DataError(f"dataset {name!r} is read from a local folder: pass root=FOLDER or "
                            f"set FLATLAB_DATA ({_NO_DOWNLOAD})")
        root = env
    return Path(root).expanduser()


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed).

    The header is two zero bytes, a type code (``0x08`` unsigned byte, ...), the number of
    dimensions, then one big-endian ``uint32`` per dimension; the data follow in C order.

    Args:
        path: File to read; a name ending in ``.gz`` is decompressed.

    Returns:
        The array, with the dtype and shape the header states.

    Raises:
        DataError: If the header is malformed or the size does not match it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}; "
                        f"expected 0000 + type code + ndim)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header says {dims} ({expected} bytes of data) but the file "
                        f"holds {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx_folder(name: str, root: Path) -> tuple[Path, dict[str, Path]]:
    folders = [root, root / name, root / _TORCHVISION_FOLDER[name] / "raw"]
    for folder in folders:
        found = {}
        for base in IDX_FILES:
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return folder, found
    where = ", ".join(str(f) for f in folders)
    raise DataError(f"dataset {name!r}: IDX files not found; expected {', '.join(IDX_FILES)} "
                    f"(each optionally .gz) in one of {where} ({_NO_DOWNLOAD})")


def _normalize(name: str, x: np.ndarray, normalize: bool) -> tuple[torch.Tensor, str]:
    out = torch.as_tensor(x, device="cpu").to(torch.float32).div_(255.0)
    if not normalize:
        return out, "x / 255"
    mean, std = NORMALIZATION[name]
    shape = (1, len(mean), 1, 1)
    out.sub_(torch.tensor(mean, device="cpu").reshape(shape)).div_(
        torch.tensor(std, device="cpu").reshape(shape))
    return out, f"x / 255, then (x - {mean}) / {std} per channel"


def load_idx_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """MNIST or Fashion-MNIST from local IDX files.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: Folder holding the files (see the module docstring); ``$FLATLAB_DATA`` if None.
        **options: ``normalize`` (bool, default True).

    Returns:
        The dataset: inputs ``[N, 1, 28, 28]`` ``float32``, labels 0-9.

    Raises:
        DataError: If the files are missing or malformed.
    """
    opts = check_options(name, options, FILE_DEFAULTS)
    folder, files = _find_idx_folder(name, data_root(name, root))
    arrays = {base: read_idx(path) for base, path in files.items()}
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"]
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"dataset {name!r}: {prefix} files must hold uint8 images [N, H, W] "
                            f"and labels [N] (got {images.dtype} {images.shape} and "
                            f"{labels.shape})")
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"dataset {name!r}: {prefix} has {images.shape[0]} images but "
                            f"{labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"dataset {name!r}: {prefix} labels must be in 0..9 "
                            f"(got {labels.min()}..{labels.max()})")
        splits[split] = (images[:, None], labels.astype(np.int64))
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise DataError(f"dataset {name!r}: train and test images differ in size")
    x_train, how = _normalize(name, splits["train"][0], opts["normalize"])
    x_test, _ = _normalize(name, splits["test"][0], opts["normalize"])
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.as_tensor(splits["train"][1], device="cpu"),
        x_test=x_test,
        y_test=torch.as_tensor(splits["test"][1], device="cpu"),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=10,
        task="classification",
        info={"source": str(folder), "normalization": how},
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler of plain data: containers, bytes, strings, numbers and numpy arrays.

    ``find_class`` is the only way a pickle reaches code; it allows exactly what numpy needs to
    rebuild an array (``_reconstruct``, ``ndarray``, ``dtype``; ``_frombuffer`` at protocol 5)
    and ``_codecs.encode`` (how Python 3 pickles bytes at protocols 0-2). Anything else raises
    ``pickle.UnpicklingError`` before it is called.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch "
                                         "never holds (refused: loading it could run code)")
        return super().find_class(module, name)


def _check_cifar_arrays(path: Path, data: np.ndarray, labels: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 [N, 3072] (got {data.dtype} "
                        f"{data.shape})")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0
                                                              or labels.max() > 9)):
        raise DataError(f"{path}: b'labels' must be {data.shape[0]} labels in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the python distribution, through :class:`RestrictedUnpickler`."""
    try:
        with open(path, "rb") as handle:
            batch = RestrictedUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # any failure to unpickle means "not a readable batch"
        why = (str(exc).splitlines() or [""])[0][:160] or type(exc).__name__
        raise DataError(f"cannot read CIFAR-10 batch {path}: {why}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and "
                        f"b'labels')")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: b'data' and b'labels' must be arrays ({exc})") from None
    return _check_cifar_arrays(path, data, labels)


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the binary distribution: records of a label byte and 3072 image bytes."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc.strerror or exc}") from None
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError(f"{path} is not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                        f"whole number of {_CIFAR_RECORD}-byte records")
    records = raw.reshape(-1, _CIFAR_RECORD)
    return _check_cifar_arrays(path, np.ascontiguousarray(records[:, 1:]),
                               records[:, 0].astype(np.int64))


def load_cifar10(root: str | Path | None = None, **options: Any) -> Dataset:
    """CIFAR-10 from the local batches: the binary version, else the python version.

    The python version's pickles are read by :class:`RestrictedUnpickler` (plain data only).

    Args:
        root: Folder holding ``cifar-10-batches-bin`` or ``cifar-10-batches-py`` (or the batches
            themselves); ``$FLATLAB_DATA`` if None.
        **options: ``normalize`` (bool, default True).

    Returns:
        The dataset: inputs ``[N, 3, 32, 32]`` ``float32``, labels 0-9.

    Raises:
        DataError: If the batches are missing or malformed.
    """
    opts = check_options("cifar10", options, FILE_DEFAULTS)
    base = data_root("cifar10", root)
    layouts = ((base / "cifar-10-batches-bin", CIFAR10_BIN_FILES, _read_cifar_bin),
               (base, CIFAR10_BIN_FILES, _read_cifar_bin),
               (base / "cifar-10-batches-py", CIFAR10_FILES, _read_cifar_batch),
               (base, CIFAR10_FILES, _read_cifar_batch))
    found = next(((f, names, read) for f, names, read in layouts
                  if all((f / n).is_file() for n in names)), None)
    if found is None:
        raise DataError(f"dataset 'cifar10': CIFAR-10 batches not found; expected "
                        f"{', '.join(CIFAR10_BIN_FILES)} (binary version) in "
                        f"{base / 'cifar-10-batches-bin'} or {base}, or "
                        f"{', '.join(CIFAR10_FILES)} (python version) in "
                        f"{base / 'cifar-10-batches-py'} or {base} ({_NO_DOWNLOAD})")
    folder, names, read = found
    train = [read(folder / n) for n in names[:-1]]
    x_test_raw, y_test = read(folder / names[-1])
    x_train, how = _normalize("cifar10", np.concatenate([b[0] for b in train]),
                              opts["normalize"])
    x_test, _ = _normalize("cifar10", x_test_raw, opts["normalize"])
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=torch.as_tensor(np.concatenate([b[1] for b in train]), device="cpu"),
        x_test=x_test,
        y_test=torch.as_tensor(y_test, device="cpu"),
        input_shape=(3, 32, 32),
        num_classes=10,
        task="classification",
        info={"source": str(folder), "normalization": how},
    )
