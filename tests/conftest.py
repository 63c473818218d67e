"""Shared fixtures: real MNIST from ../shared/data, and small models trained on it once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests use the project's normal data-path variable; CI and developers keep the
# data beside the checkout in ../shared/data (see README, "Data sources").
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("ROBUST_DATA_DIR", str(_SHARED))
elif "ROBUST_DATA_DIR" not in os.environ:
    # A fresh clone without ../shared: the MNIST shipped inside the package is all of MNIST, so every
    # MNIST test runs on the same images, unpacked once into a folder of the session's own.
    import atexit
    import lzma
    import shutil
    import tempfile
    from importlib import resources

    _UNPACKED = tempfile.mkdtemp(prefix="robust-test-data-")
    atexit.register(shutil.rmtree, _UNPACKED, True)
    _packed = (resources.files("robust.data") / "mnist.npz.xz").read_bytes()
    (Path(_UNPACKED) / "mnist.npz").write_bytes(lzma.decompress(_packed))
    os.environ["ROBUST_DATA_DIR"] = _UNPACKED

# Under JAX, compiled kernels are kept on disk (robust.backend.jax); the tests, and the JAX processes
# they start, share one folder of their own rather than the user's ~/.cache, removed at the end.
if "ROBUST_JAX_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["ROBUST_JAX_CACHE"] = tempfile.mkdtemp(prefix="robust-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["ROBUST_JAX_CACHE"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"ROBUST_DATA_DIR={os.environ.get('ROBUST_DATA_DIR', '(not set)')}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = os.environ.get("ROBUST_DATA_DIR")
    if not path or not (Path(path) / "mnist.npz").is_file():
        pytest.skip("real MNIST not found: set ROBUST_DATA_DIR to a folder with mnist.npz (../shared/data)")
    return Path(path)


@pytest.fixture(scope="session")
def cifar_dir(data_dir) -> Path:
    """The folder with cifar10.npz; CIFAR tests skip (saying why) where only the shipped MNIST is there."""
    if not (data_dir / "cifar10.npz").is_file():
        pytest.skip(f"CIFAR-10 not found: {data_dir} has no cifar10.npz (robust ships only MNIST; "
                    "../shared/data has a CIFAR-10 subset)")
    return data_dir


@pytest.fixture(scope="session")
def mnist(data_dir):
    """Full MNIST from ROBUST_DATA_DIR, as robust.data returns it."""
    from robust.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def trained_lenet(mnist):
    """A LeNet-5 trained for one epoch on 12,000 real MNIST images (about 97% accurate), once per session."""
    import keras

    from robust.models import build_model

    keras.utils.set_random_seed(0)
    small = mnist.limited(12000, seed=0)
    model = build_model("lenet5", mnist.input_shape, mnist.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(small.x_train, small.y_train, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="session")
def mnist_test_batch(mnist):
    """500 class-balanced real MNIST test images and labels."""
    from robust.data import balanced_indices

    idx = balanced_indices(mnist.y_test, 500, seed=1)
    return mnist.x_test[idx], mnist.y_test[idx].astype(np.int64)


@pytest.fixture(scope="session")
def batch(mnist_test_batch):
    """The first 200 of those images: the attack tests' batch (modules that need another size define their own)."""
    x, y = mnist_test_batch
    return x[:200], y[:200]
