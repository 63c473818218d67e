"""Runs one step of the cross-backend tests in its own process (Keras picks its backend at import).

    python tests/backend_worker.py train OUT.keras N_TRAIN
    python tests/backend_worker.py attack OUT.npz N_TEST MODEL.keras [MODEL.keras ...]
    python tests/backend_worker.py no-tensorflow OUT.json

The backend is whatever ``KERAS_BACKEND`` says. ``no-tensorflow`` first makes
``import tensorflow`` fail, then trains and attacks through robust, and
reports whether TensorFlow was imported anyway. Results are files, read by
tests/test_backends.py.
"""

from __future__ import annotations

import importlib.abc
import json
import sys

import numpy as np


class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    """A meta-path finder that makes ``tensorflow`` (and its submodules) unimportable, as if not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"No module named {name!r} (blocked by tests/backend_worker.py)")
        return None


def _mnist(n_train: int | None = None):
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    return data.limited(n_train, seed=0) if n_train else data, balanced_indices


def train(out: str, n_train: int) -> None:
    """A LeNet-5 trained for one epoch on ``n_train`` MNIST images, saved as ``out``."""
    from robust.training import train as train_model

    data, _ = _mnist(n_train)
    result = train_model("lenet5", data, epochs=1, batch_size=64, lr=2e-3, seed=0, progress=False)
    result.model.save(out)


def attack(out: str, n_test: int, models: list[str]) -> None:
    """FGSM images and predictions, and PGD predictions, of each model on ``n_test`` test images."""
    import keras

    from robust import backend
    from robust.attacks import FGSM, PGD

    data, balanced = _mnist()
    idx = balanced(data.y_test, n_test, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    arrays = {"y": y}
    for i, path in enumerate(models):
        model = keras.saving.load_model(path, compile=False)
        fgsm = FGSM(eps=0.1)(model, x, y, progress=False)
        pgd = PGD(eps=0.1, steps=10, random_start=False)(model, x, y, progress=False)
        pgd_random = PGD(eps=0.1, steps=10, seed=3)(model, x, y, progress=False)
        arrays.update({f"fgsm_{i}": fgsm.x_adv, f"fgsm_pred_{i}": fgsm.adv_pred, f"clean_{i}": fgsm.clean_pred,
                       f"pgd_pred_{i}": pgd.adv_pred, f"pgd_random_pred_{i}": pgd_random.adv_pred})
    arrays["backend"] = np.array(backend.NAME)
    np.savez(out, **arrays)


def no_tensorflow(out: str) -> None:
    """Train and attack with ``import tensorflow`` failing; report what was imported."""
    sys.meta_path.insert(0, _BlockTensorFlow())
    import keras

    from robust import backend
    from robust.attacks import FGSM, PGD
    from robust.training import train as train_model

    data, balanced = _mnist(2000)
    result = train_model("lenet5", data, epochs=1, batch_size=64, seed=0, progress=False,
                         tensorboard=out + ".tb")
    idx = balanced(data.y_test, 200, seed=1)
    x, y = data.x_test[idx], data.y_test[idx]
    fgsm = FGSM(eps=0.1)(result.model, x, y, progress=False)
    pgd = PGD(eps=0.1, steps=10, seed=0)(result.model, x, y, progress=False)
    report = {"backend": keras.backend.backend(), "robust_backend": backend.NAME,
              "tensorflow_imported": any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules),
              "clean": float(np.mean(fgsm.clean_pred == y)), "fgsm": float(np.mean(fgsm.adv_pred == y)),
              "pgd": float(np.mean(pgd.adv_pred == y)), "card_backend": result.card["backend"],
              "device": result.card["device"], "versions": result.card["versions"]}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    command, target = sys.argv[1], sys.argv[2]
    if command == "train":
        train(target, int(sys.argv[3]))
    elif command == "attack":
        attack(target, int(sys.argv[3]), sys.argv[4:])
    elif command == "no-tensorflow":
        no_tensorflow(target)
    else:
        raise SystemExit(f"unknown command {command!r}: expected train, attack or no-tensorflow")
