"""mnist1d (generated, cached, global RNGs untouched, never downloaded) and sklearn digits."""

import random

import mnist1d.data
import numpy as np
import pytest
import torch

from flatlab import data
from flatlab.data import cache
from tests.data.conftest import one_line_error


def _no_download(*args, **kwargs):
    raise AssertionError("flatlab must never call mnist1d.data.get_dataset (it downloads)")


def _rng_states():
    return np.random.get_state(), random.getstate()


def _assert_same_states(a, b):
    (np_a, py_a), (np_b, py_b) = a, b
    assert np_a[0] == np_b[0] and np_a[2:] == np_b[2:]
    np.testing.assert_array_equal(np_a[1], np_b[1])
    assert py_a == py_b


@pytest.fixture(scope="module")
def default_mnist1d(tmp_path_factory):
    """The default mnist1d, generated once (about 2.5 s) into a fresh cache folder."""
    folder = tmp_path_factory.mktemp("mnist1d-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLATLAB_CACHE", str(folder))
        mp.setattr(mnist1d.data, "get_dataset", _no_download)
        np.random.seed(1234)
        random.seed(99)
        before = _rng_states()
        ds = data.load("mnist1d")
        after = _rng_states()
    return ds, before, after, folder


def test_mnist1d_shapes_and_labels(default_mnist1d):
    ds = default_mnist1d[0]
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (40,) and ds.num_classes == 10 and ds.task == "classification"
    assert ds.node_ids is None and ds.optimum is None
    assert ds.num_train == 4000 and ds.num_test == 1000
    assert np.bincount(ds.y_train.numpy(), minlength=10).min() > 350
    assert ds.info["args"]["data_seed"] == 42 and not ds.info["from_cache"]


def test_mnist1d_leaves_global_rngs_alone(default_mnist1d):
    _, before, after, _ = default_mnist1d
    _assert_same_states(before, after)


def test_mnist1d_second_load_uses_the_cache(default_mnist1d, monkeypatch):
    ds, _, _, folder = default_mnist1d
    monkeypatch.setenv("FLATLAB_CACHE", str(folder))

    def refuse(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", refuse)
    monkeypatch.setattr(mnist1d.data, "get_dataset", _no_download)
    again = data.load("mnist1d", seed=5)  # seed does not change mnist1d
    assert again.info["from_cache"]
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    files = list(folder.iterdir())
    assert [f.name for f in files] == [ds.info["cache_file"]]  # no temporary file left behind
    with pytest.raises(AssertionError, match="generated again"):
        data.load("mnist1d", num_samples=500)  # other arguments, other cache entry


def test_mnist1d_matches_make_dataset_and_options(monkeypatch):
    monkeypatch.setattr(mnist1d.data, "get_dataset", _no_download)
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = 300, 7
    state = _rng_states()
    ref = mnist1d.data.make_dataset(args)
    np.random.set_state(state[0])
    random.setstate(state[1])
    ds = data.load("mnist1d", num_samples=300, data_seed=7, cache=False)
    np.testing.assert_array_equal(ds.x_train.numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test.numpy(), ref["y_test"])
    assert ds.x_train.shape == (240, 40) and ds.x_test.shape == (60, 40)
    other = data.load("mnist1d", num_samples=300, data_seed=8, cache=False)
    assert not torch.equal(other.x_train, ds.x_train)
    assert not (cache.cache_dir()).exists()  # cache=False writes nothing


def test_mnist1d_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FLATLAB_CACHE", str(blocker / "cache"))
    before = _rng_states()
    ds = data.load("mnist1d", num_samples=200)
    _assert_same_states(before, _rng_states())
    assert ds.x_train.shape == (160, 40)


def test_cache_folder_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("FLATLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "flatlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "flatlab"
    assert cache.cache_key("a", {"x": 1, "y": [2]}) == cache.cache_key("a", {"y": [2], "x": 1})
    assert cache.cache_key("a", {"x": 1}) != cache.cache_key("a", {"x": 2})


def test_corrupt_cache_entry_is_regenerated(monkeypatch):
    folder = cache.cache_dir()
    first = data.load("mnist1d", num_samples=200)
    (folder / first.info["cache_file"]).write_bytes(b"garbage")
    again = data.load("mnist1d", num_samples=200)
    assert not again.info["from_cache"] and torch.equal(again.x_train, first.x_train)


def test_digits_split_and_normalization():
    ds = data.load("digits", seed=0)
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.num_classes == 10 and ds.y_train.dtype == torch.int64
    counts = np.bincount(ds.y_test.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    x = ds.x_train.double()
    varying = x.std(dim=0) > 0
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(64, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(x[:, varying].std(dim=0, unbiased=False),
                               torch.ones(int(varying.sum()), dtype=torch.float64), atol=1e-5,
                               rtol=0)

    from sklearn.datasets import load_digits
    raw = load_digits()
    scaled = data.load("digits", seed=0, normalize=False)
    assert scaled.x_train.min() == 0 and scaled.x_train.max() == 1
    # every scaled training row is a row of the raw data / 16, with its label
    lookup = {tuple((r / 16).astype(np.float32)): t
              for r, t in zip(raw.data, raw.target, strict=True)}
    for row, label in zip(scaled.x_train.numpy()[:50], scaled.y_train.numpy()[:50], strict=True):
        assert lookup[tuple(row)] == label

    img = data.load("digits", seed=0, as_image=True)
    assert img.x_train.shape == (1437, 1, 8, 8) and img.input_shape == (1, 8, 8)
    torch.testing.assert_close(img.x_train.reshape(-1, 64), ds.x_train)
    other = data.load("digits", seed=1)
    assert not torch.equal(other.y_train, ds.y_train)
    assert torch.equal(data.load("digits", seed=0).x_train, ds.x_train)


def test_offline_option_errors():
    assert "takes no option 'nodez'; accepted: num_samples" in one_line_error(
        data.load, "mnist1d", nodez=3)
    assert "num_samples must be >= 20" in one_line_error(data.load, "mnist1d", num_samples=5)
    assert "train_split must be < 1.0" in one_line_error(data.load, "mnist1d", train_split=1.0)
    assert "padding must be two integers" in one_line_error(data.load, "mnist1d", padding=[3])
    assert "accepted: test_size, normalize, as_image" in one_line_error(
        data.load, "digits", scale=2)
