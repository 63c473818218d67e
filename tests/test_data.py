"""Data sources in order: --data (npz, IDX, CIFAR batches), ROBUST_DATA_DIR, Keras loader, shipped subset."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from robust import RobustError
from robust.data import balanced_indices, load_dataset


@pytest.fixture
def no_keras(monkeypatch):
    """No Keras cache or network: the Keras loader fails like it does offline."""
    import robust.data as data

    def offline(name):
        raise OSError(f"URL fetch failure for {name}: no network")

    monkeypatch.setattr(data, "_from_keras", offline)
    monkeypatch.delenv("ROBUST_DATA_DIR", raising=False)


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_npz_via_data_dir_is_float_nhwc(mnist):
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.x_train.dtype == np.float32 and 0.0 == mnist.x_train.min() and mnist.x_train.max() == 1.0
    assert mnist.y_train.dtype == np.int64 and set(np.unique(mnist.y_train)) == set(range(10))
    assert "ROBUST_DATA_DIR" in mnist.source
    # published class counts of the MNIST training set
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_cifar10_from_data_dir(cifar_dir):
    ds = load_dataset("cifar10")
    assert ds.input_shape == (32, 32, 3) and ds.class_names[0] == "airplane" and ds.num_classes == 10


def test_explicit_npz_path(tmp_path, no_keras):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    ds = load_dataset("fashion_mnist", tmp_path / "d.npz")
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.source.startswith("--data")
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, x, atol=1e-4)
    assert ds.class_names[9] == "Ankle boot"


def test_idx_folder_round_trips_real_digits(tmp_path, mnist, no_keras):
    x = np.rint(mnist.x_train[:50, ..., 0] * 255).astype(np.uint8)
    y = mnist.y_train[:50].astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[:10], gz=True)
    ds = load_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(ds.y_train, mnist.y_train[:50])
    np.testing.assert_allclose(ds.x_train, mnist.x_train[:50], atol=1e-6)


def test_idx_truncated_and_missing(tmp_path, no_keras):
    with pytest.raises(RobustError, match="has no train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28)))
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-100])
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        _write_idx(tmp_path / stem, np.zeros((5, 28, 28) if "images" in stem else (5,)))
    with pytest.raises(RobustError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_cifar_batch_folder(tmp_path, no_keras):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)


def test_shipped_mnist_is_the_offline_fallback_and_all_of_mnist(no_keras, mnist):
    ds = load_dataset("mnist")
    assert "shipped" in ds.source
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    # the same images and labels as the full Keras-layout file the tests use
    np.testing.assert_array_equal(ds.x_train[::997], mnist.x_train[::997])
    np.testing.assert_array_equal(ds.y_test, mnist.y_test)
    assert load_dataset("mnist", limit=500).x_test.shape == (500, 28, 28, 1)


def _fake_keras_loader(monkeypatch, mnist, *, online: bool):
    """keras.datasets.mnist.load_data as Keras behaves: it announces the download, then fails or shows progress."""
    import keras

    def load_data():
        print("Downloading data from https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz")
        if not online:
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service "
                            "not known")
        print("11490434/11490434 ━━━━━━━━━━━━━━━━━━━━ 1s 0us/step")
        x, y = np.rint(mnist.x_train[:20, ..., 0] * 255).astype(np.uint8), mnist.y_train[:20]
        return (x, y), (x[:10], y[:10])

    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)
    monkeypatch.delenv("ROBUST_DATA_DIR", raising=False)


def test_failed_download_is_one_line_naming_the_source_used(monkeypatch, mnist, capsys):
    _fake_keras_loader(monkeypatch, mnist, online=False)
    ds = load_dataset("mnist")
    out, err = capsys.readouterr()
    assert "Downloading" not in out + err  # the announcement of a download that never happened is held back
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("robust: MNIST is not in the Keras cache and could not be downloaded "
                               "([Errno -2] Name or service not known)"), lines[0]
    assert "http" not in lines[0]  # one calm line: the cause, not the URL and the exception chain
    assert f"using {ds.source} instead" in lines[0] and "shipped" in ds.source


def test_successful_download_shows_keras_progress(monkeypatch, mnist, capsys):
    _fake_keras_loader(monkeypatch, mnist, online=True)
    ds = load_dataset("mnist")
    out, err = capsys.readouterr()
    assert "Downloading data from" in out and "0us/step" in out and "robust:" not in err
    assert ds.source.startswith("keras.datasets.mnist") and len(ds.x_train) == 20


def test_no_source_lists_what_was_tried(no_keras, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_DATA_DIR", str(tmp_path))
    with pytest.raises(RobustError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert "cifar10.npz" in msg and "keras.datasets.cifar10" in msg and "--data PATH" in msg


def test_bad_inputs(tmp_path, no_keras):
    with pytest.raises(RobustError, match="Unknown dataset 'svhn'.*'cifar10'"):
        load_dataset("svhn")
    with pytest.raises(RobustError, match="no such file"):
        load_dataset("mnist", tmp_path / "nope.npz")
    np.savez(tmp_path / "wrong.npz", a=np.zeros(3))
    with pytest.raises(RobustError, match="lacks"):
        load_dataset("mnist", tmp_path / "wrong.npz")
    x = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=np.zeros(4), x_test=x, y_test=np.zeros(4))
    with pytest.raises(RobustError, match="shape 32x32x3; expected 28x28x1"):
        load_dataset("mnist", tmp_path / "c.npz")
    # a pickled object array is refused: np.load never allows pickle
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RobustError, match="not a .npz dataset file.*truncated or damaged"):
        load_dataset("mnist", tmp_path / "obj.npz")
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RobustError, match="holds Python objects"):
        load_dataset("mnist", tmp_path / "objects.npz")
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(RobustError, match="is text starting with 'x_train,y_train'"):
        load_dataset("mnist", tmp_path / "text.npz")


def test_limit_is_balanced_and_seeded(mnist):
    a = mnist.limited(1000, seed=3)
    b = mnist.limited(1000, seed=3)
    c = mnist.limited(1000, seed=4)
    assert np.bincount(a.y_train).tolist() == [100] * 10 and len(a.x_test) == 1000
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert "limit 1000" in a.source


def test_balanced_indices_with_uneven_classes():
    y = np.array([0] * 50 + [1] * 3 + [2] * 10)
    idx = balanced_indices(y, 12, seed=0)
    assert len(idx) == 12 and np.bincount(y[idx]).tolist() == [5, 3, 4]
    assert len(set(idx.tolist())) == 12


def test_labels_are_integers_or_exactly_integral_floats(tmp_path):
    x = np.zeros((20, 28, 28), np.uint8)
    y = np.arange(20) % 10
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y.astype(np.float32), x_test=x, y_test=y.astype(np.float64))
    ds = load_dataset("mnist", tmp_path / "ok.npz")
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == y.tolist()
    np.savez(tmp_path / "tenths.npz", x_train=x, y_train=y / 10, x_test=x, y_test=y)
    with pytest.raises(RobustError, match=r"floats that are not whole numbers \(18 of 20, e.g. 0.1, 0.2, 0.3\)"):
        load_dataset("mnist", tmp_path / "tenths.npz")
    np.savez(tmp_path / "nan.npz", x_train=x, y_train=np.full(20, np.nan), x_test=x, y_test=y)
    with pytest.raises(RobustError, match=r"not whole numbers \(20 of 20, e.g. nan, nan, nan\)"):
        load_dataset("mnist", tmp_path / "nan.npz")


def test_seed_must_suit_numpy_and_tensorflow():
    with pytest.raises(RobustError, match=r"seed must be an integer in \[0, 4294967295\]; received -1"):
        balanced_indices(np.arange(10), 5, seed=-1)
    with pytest.raises(RobustError, match="received 4294967296"):
        load_dataset("mnist", limit=10, seed=2**32)
