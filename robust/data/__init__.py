"""Datasets as float32 NHWC images in [0, 1] with integer labels and class names.

Sources are tried in this order, and the one used is reported in
:attr:`Dataset.source`:

1. an explicit ``path``: a Keras-layout ``.npz`` (``x_train``, ``y_train``,
   ``x_test``, ``y_test``), a folder with the original MNIST / Fashion-MNIST
   IDX files, or the CIFAR-10 python batch folder (``data_batch_1`` ...
   ``test_batch``);
2. ``$ROBUST_DATA_DIR/<dataset>.npz``;
3. the Keras loader (its cache in ``~/.keras/datasets``, then a download);
4. for MNIST only, the small subset shipped inside this package.

When none works, one :class:`~robust.RobustError` lists what was tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import lzma
import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from robust.errors import RobustError, known_names

ENV_DATA_DIR = "ROBUST_DATA_DIR"
SHIPPED_MNIST = "mnist.npz.xz"  # see SOURCE.md beside it
MAX_SEED = 2**32 - 1  # np.random.seed and keras.utils.set_random_seed take no more


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    idx_prefixes: bool  # True when the original release is IDX files


_DIGITS = tuple(str(i) for i in range(10))
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), _DIGITS, True),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        True,
    ),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        False,
    ),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images in [0, 1] (float32, NHWC) and integer labels of a train and a test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test images of {shape}, "
                f"{self.num_classes} classes, from {self.source}")

    def limited(self, limit: int | None, seed: int = 0) -> "Dataset":
        """Class-balanced, seeded subsets of at most ``limit`` images of each split."""
        if limit is None:
            return self
        if int(limit) < 1:
            raise RobustError(f"limit must be a positive number of images; received {limit}.")
        tr = balanced_indices(self.y_train, limit, seed)
        te = balanced_indices(self.y_test, limit, seed)
        return dataclasses.replace(
            self, x_train=self.x_train[tr], y_train=self.y_train[tr], x_test=self.x_test[te],
            y_test=self.y_test[te], source=f"{self.source} (balanced subset, limit {limit}, seed {seed})",
        )


def balanced_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded subset of ``n`` labels with the classes as equal as the data allows.

    Classes take turns, each drawing from its own seeded shuffle, so any
    prefix of the order is balanced; the result keeps the original order.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(check_seed(seed))
    if n >= len(y):
        return np.arange(len(y))
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    rounds = max(len(p) for p in per_class)
    # Round-robin interleave: position r of every class before position r+1 of any.
    order = [p[r] for r in range(rounds) for p in per_class if r < len(p)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def load_dataset(name: str, path: str | os.PathLike | None = None, *, limit: int | None = None,
                 seed: int = 0) -> Dataset:
    """Load dataset ``name`` from the first source that has it (see the module docstring).

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        path: explicit file or folder; when given, it is the only source tried.
        limit: cap each split at a class-balanced subset of this many images.
        seed: seed of that subset.

    Raises:
        RobustError: unknown name, unreadable or malformed files, or no source has the data.
    """
    if name not in DATASETS:
        raise RobustError(f"Unknown dataset {name!r}. Known datasets: {known_names(DATASETS)}.")
    check_seed(seed)
    info = DATASETS[name]
    if path is not None:
        arrays, source = _from_path(info, Path(path)), f"--data {path}"
        return _finish(info, arrays, source).limited(limit, seed)

    tried: list[str] = []
    data_dir = os.environ.get(ENV_DATA_DIR)
    if data_dir:
        candidate = Path(data_dir) / f"{name}.npz"
        if candidate.is_file():
            return _finish(info, _read_npz(candidate), f"{ENV_DATA_DIR} ({candidate})").limited(limit, seed)
        tried.append(f"{ENV_DATA_DIR}={data_dir}: no file {candidate.name} there")
    else:
        tried.append(f"{ENV_DATA_DIR}: not set")

    try:
        arrays = _from_keras(name)
        return _finish(info, arrays, f"keras.datasets.{name} (cache or download)").limited(limit, seed)
    except Exception as exc:  # any failure of the Keras loader means: try the next source
        failure = _first_line(exc)
        tried.append(f"keras.datasets.{name}.load_data(): {failure}")

    if name == "mnist":
        shipped = _shipped_mnist()
        print(f"robust: MNIST is not in the Keras cache and could not be downloaded ({_reason(failure)}); "
              f"using {shipped.source} instead, the same images.", file=sys.stderr, flush=True)
        return shipped.limited(limit, seed)

    raise RobustError(
        f"No source has the {name!r} data. Tried: " + "; ".join(tried) + ". "
        "Provide it with --data PATH (a Keras-layout .npz"
        + (", a folder of the original IDX files" if info.idx_prefixes else ", the CIFAR-10 python batch folder")
        + f"), or put {name}.npz in a folder named by ${ENV_DATA_DIR}, or connect to the internet once "
        f"so that keras.datasets.{name}.load_data() can download and cache it."
    )


def _shipped_mnist() -> Dataset:
    """The MNIST images inside the package: an xz-compressed Keras-layout .npz (``make_shipped.py``)."""
    packed = (resources.files(__package__) / SHIPPED_MNIST).read_bytes()
    with np.load(io.BytesIO(lzma.decompress(packed)), allow_pickle=False) as f:
        arrays = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    (x_train, _), (x_test, _) = arrays
    return _finish(DATASETS["mnist"], arrays,
                   f"the MNIST images shipped with robust ({len(x_train)} train / {len(x_test)} test)")


def _reason(failure: str) -> str:
    """The cause of a failed download in a few words: the OS's ``[Errno ...]`` text, without URLs."""
    import re

    errno = re.search(r"\[Errno [^\]]+\][^;)]*", failure)
    if errno:
        return errno.group(0).strip()
    return re.sub(r"https?://\S+", "(URL)", failure)[:160]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


class _HeldAnnouncement(io.TextIOBase):
    """Stdout for the Keras loader that holds back its "Downloading data from ..." line.

    The line reaches the real stdout only once the download shows progress, so
    an offline machine does not see a download announced that never happens.
    """

    def __init__(self, target):
        self.target, self.held, self.passing = target, "", False

    def write(self, text: str) -> int:
        if self.passing:
            return self.target.write(text)
        self.held += text
        if self.held.count("\n") > 1 or (self.held.endswith("\n") and not self.held.startswith("Downloading")):
            self.passing = True
            self.target.write(self.held)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def _from_keras(name: str):
    import keras

    with contextlib.redirect_stdout(_HeldAnnouncement(sys.stdout)):
        return getattr(keras.datasets, name).load_data()


def _read_npz(path: Path):
    from robust.artifacts import read_npz

    arrays = read_npz(path, what="dataset file")
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise RobustError(
            f"{path} is not a Keras-layout dataset file: it lacks {known_names(missing)}. Expected "
            f"arrays x_train, y_train, x_test, y_test (as keras.datasets returns); received "
            f"{known_names(arrays) or 'no arrays'}."
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RobustError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RobustError(f"{path} is truncated: its header promises {dims} values, the file holds {data.size}.")
    return data.reshape(dims)


def _from_idx_folder(folder: Path):
    arrays = {}
    for key, stem in _IDX_FILES.items():
        found = [p for p in (folder / stem, folder / f"{stem}.gz",
                             folder / stem.replace("-idx", ".idx"), folder / f"{stem.replace('-idx', '.idx')}.gz")
                 if p.is_file()]
        if not found:
            raise RobustError(
                f"{folder} has no {stem} (or {stem}.gz). An MNIST IDX folder needs the four original files: "
                + ", ".join(_IDX_FILES.values()) + "."
            )
        arrays[key] = _read_idx(found[0])
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _cifar_batch(path: Path):
    """One batch of the CIFAR-10 python release: a pickled dict with b"data" (N, 3072) and b"labels".

    The original release is pickled, so this is the one place a pickle is read:
    only from a folder the user named explicitly with --data.
    """
    import pickle

    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except Exception as exc:
        raise RobustError(f"{path} is not a CIFAR-10 python batch ({_first_line(exc)}).") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels)


def _from_cifar_folder(folder: Path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RobustError(f"{folder} is not a CIFAR-10 python batch folder: it lacks {', '.join(missing)}.")
    xs, ys = zip(*(_cifar_batch(folder / n) for n in names[:5]))
    x_test, y_test = _cifar_batch(folder / "test_batch")
    to_nhwc = lambda x: np.transpose(x, (0, 2, 3, 1))  # noqa: E731  batches are NCHW
    return (to_nhwc(np.concatenate(xs)), np.concatenate(ys)), (to_nhwc(x_test), y_test)


def _from_path(info: DatasetInfo, path: Path):
    if not path.exists():
        raise RobustError(f"--data {path}: no such file or folder. Expected a .npz file or a data folder.")
    if path.is_file():
        return _read_npz(path)
    if info.idx_prefixes:
        return _from_idx_folder(path)
    sub = path / "cifar-10-batches-py"
    return _from_cifar_folder(sub if sub.is_dir() else path)


def _finish(info: DatasetInfo, arrays, source: str) -> Dataset:
    (x_train, y_train), (x_test, y_test) = arrays
    x_train, x_test = _to_float_nhwc(info, x_train, source), _to_float_nhwc(info, x_test, source)
    y_train, y_test = _labels(info, y_train, len(x_train), source), _labels(info, y_test, len(x_test), source)
    return Dataset(info.name, x_train, y_train, x_test, y_test, info.class_names, source)


def _to_float_nhwc(info: DatasetInfo, x: np.ndarray, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1:] != info.image_shape:
        raise RobustError(
            f"The {info.name} data from {source} has images of shape {'x'.join(map(str, x.shape[1:]))}; "
            f"expected {'x'.join(map(str, info.image_shape))} (height x width x channels). Is it another dataset?"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255):
        raise RobustError(f"The {info.name} data from {source} has pixel values outside [0, 255] or NaN/inf.")
    return x / np.float32(255.0) if x.size and x.max() > 1.0 else x


def _labels(info: DatasetInfo, y: np.ndarray, n: int, source: str) -> np.ndarray:
    """Integer labels in [0, classes): floats only when exactly integral (casting would change them)."""
    y = np.asarray(y).reshape(-1)
    k = len(info.class_names)
    where = f"The {info.name} labels from {source}"
    expected = f"{n} integer class labels in [0, {k - 1}]"
    if len(y) != n:
        raise RobustError(f"{where} must be {expected}, one per image; received {len(y)} labels for {n} images.")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            examples = ", ".join(f"{v:g}" for v in y[bad][:3])
            raise RobustError(f"{where} must be {expected}; received floats that are not whole numbers "
                              f"({int(bad.sum())} of {n}, e.g. {examples}). Casting them to integers would "
                              "change the labels: store the class indices themselves.")
    elif y.dtype.kind not in "iub":
        raise RobustError(f"{where} must be {expected}; received an array of dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise RobustError(f"{where} must be {expected}; received labels in [{y.min()}, {y.max()}].")
    return y


def scale_to(x: np.ndarray, value_range) -> np.ndarray:
    """Map images in [0, 1] (as every loader here returns them) to a model's input range [lo, hi]."""
    lo, hi = (float(v) for v in value_range)
    return x if (lo, hi) == (0.0, 1.0) else (lo + x * (hi - lo)).astype(np.float32)


def check_seed(seed, name: str = "seed") -> int:
    """A seed numpy, Python and TensorFlow all accept: an integer in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise RobustError(f"{name} must be an integer in [0, {MAX_SEED}]; received {seed!r}.")
    return int(seed)
