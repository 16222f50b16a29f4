"""Local-folder loaders: fake CIFAR-10 batches and IDX files in tmp_path, never a download."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from flatlab import data
from flatlab.data.files import IDX_FILES, read_idx
from tests.data.conftest import one_line_error

RNG = np.random.default_rng(0)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder, n_train=12, n_test=5, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, size=(n_train, 28, 28)),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, size=(n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, size=n_test),
    }
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def _write_cifar(folder, per_batch=4, n_test=3, protocol=pickle.DEFAULT_PROTOCOL):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        count = n_test if name == "test_batch" else per_batch
        batch = {b"data": RNG.integers(0, 256, size=(count, 3072)).astype(np.uint8),
                 b"labels": RNG.integers(0, 10, size=count).tolist(),
                 b"batch_label": name.encode(),
                 b"filenames": [f"img_{i}.png".encode() for i in range(count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
        batches[name] = batch
    return batches


def _write_cifar_bin(folder, batches):
    """The same batches in the binary distribution: per record a label byte, 3072 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        labels = np.asarray(batch[b"labels"], dtype=np.uint8)[:, None]
        (folder / f"{name}.bin").write_bytes(np.hstack([labels, batch[b"data"]]).tobytes())


@pytest.mark.parametrize("name, sub, gz, mean, std", [
    ("mnist", "", False, 0.1307, 0.3081),
    ("mnist", "mnist", True, 0.1307, 0.3081),
    ("mnist", "MNIST/raw", True, 0.1307, 0.3081),
    ("fashion-mnist", "FashionMNIST/raw", False, 0.2860, 0.3530),
    ("fashion-mnist", "fashion-mnist", True, 0.2860, 0.3530),
])
def test_idx_loaders(tmp_path, name, sub, gz, mean, std):
    arrays = _write_idx_set(tmp_path / sub if sub else tmp_path, gz=gz)
    ds = data.load(name, root=tmp_path)
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    expected = (arrays["t10k-images-idx3-ubyte"][:, None] / 255.0 - mean) / std
    np.testing.assert_allclose(ds.x_test.numpy(), expected, rtol=1e-5, atol=1e-5)
    raw = data.load(name, root=tmp_path, normalize=False)
    np.testing.assert_allclose(raw.x_train.numpy()[:, 0],
                               arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)


def test_flatlab_data_environment_variable(tmp_path, monkeypatch):
    _write_idx_set(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("FLATLAB_DATA", str(tmp_path))
    assert data.load("mnist").num_train == 12


def test_cifar10(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = data.load("cifar10", root=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(ds.y_train.numpy(), labels)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    first = batches["data_batch_1"][b"data"][0]
    for c in range(3):  # channel-major rows: 1024 red, 1024 green, 1024 blue values
        for pix in (0, 33, 1023):
            want = (first[c * 1024 + pix] / 255.0 - mean[c]) / std[c]
            assert ds.x_train[0, c, pix // 32, pix % 32].item() == pytest.approx(want, abs=1e-5)
    test_raw = batches["test_batch"][b"data"].reshape(3, 3, 32, 32) / 255.0
    plain = data.load("cifar-10", root=tmp_path / "cifar-10-batches-py", normalize=False)
    np.testing.assert_allclose(plain.x_test.numpy(), test_raw, rtol=1e-6)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar10_binary_and_python_versions_agree(tmp_path, protocol):
    """The restricted unpickler reads the arrays of every pickle protocol (2 is the original
    distribution's); the binary version gives the same data set."""
    batches = _write_cifar(tmp_path / "py" / "cifar-10-batches-py", protocol=protocol)
    _write_cifar_bin(tmp_path / "bin" / "cifar-10-batches-bin", batches)
    a = data.load("cifar10", root=tmp_path / "py")
    b = data.load("cifar10", root=tmp_path / "bin")
    assert a.info["source"].endswith("cifar-10-batches-py")
    assert b.info["source"].endswith("cifar-10-batches-bin")
    for f in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_cifar10_binary_batches_of_the_wrong_size_are_refused(tmp_path):
    batches = _write_cifar(tmp_path / "x")
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder, batches)
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))
    assert "not a whole number of 3073-byte records" in one_line_error(
        data.load, "cifar10", root=tmp_path)
    (folder / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072))
    assert "labels in 0..9" in one_line_error(data.load, "cifar10", root=tmp_path)


def test_missing_files_name_what_is_expected(tmp_path):
    msg = one_line_error(data.load, "mnist", root=tmp_path)
    assert all(f in msg for f in IDX_FILES) and "never downloads" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg
    msg = one_line_error(data.load, "fashion-mnist", root=tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    msg = one_line_error(data.load, "cifar10", root=tmp_path)
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-batches-py" in msg
    assert "never downloads" in msg
    msg = one_line_error(data.load, "cifar10")
    assert "FLATLAB_DATA" in msg and "root=" in msg
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # an incomplete set is not enough
    assert "IDX files not found" in one_line_error(data.load, "mnist", root=tmp_path)


def test_malformed_files(tmp_path):
    arrays = _write_idx_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 20)
    assert "bad magic number" in one_line_error(read_idx, path)
    path.write_bytes(_idx_bytes(arrays["train-labels-idx1-ubyte"])[:-1])
    assert "header says (12,)" in one_line_error(read_idx, path)
    path.write_bytes(_idx_bytes(arrays["train-labels-idx1-ubyte"][:11]))
    assert "12 images but 11 labels" in one_line_error(data.load, "mnist", root=tmp_path)
    path.write_bytes(_idx_bytes(np.full(12, 12)))
    assert "labels must be in 0..9" in one_line_error(data.load, "mnist", root=tmp_path)

    cifar = tmp_path / "c"
    _write_cifar(cifar)
    with open(cifar / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    assert "must be uint8 [N, 3072]" in one_line_error(data.load, "cifar10", root=cifar)
    (cifar / "test_batch").write_bytes(b"not a pickle")
    assert "cannot read CIFAR-10 batch" in one_line_error(data.load, "cifar10", root=cifar)


def test_read_idx_round_trip(tmp_path):
    arr = RNG.integers(0, 256, size=(3, 4, 5)).astype(np.uint8)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    ints = np.array([[1, -2], [3, 70000]], dtype=">i4")
    (tmp_path / "b").write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 2)
                                 + ints.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), ints.astype(np.int32))
