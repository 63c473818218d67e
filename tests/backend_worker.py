"""Runs one step of the cross-backend tests in its own process (Keras picks its backend at import).

    python tests/backend_worker.py train OUT.keras N_TRAIN
    python tests/backend_worker.py attack OUT.npz N_TEST MODEL.keras [MODEL.keras ...]

The backend is whatever ``KERAS_BACKEND`` says. Under any backend but
TensorFlow, ``import tensorflow`` is made to fail first, as on a machine
without it, and each command reports whether TensorFlow got imported anyway.
Results are files, read by tests/test_backends.py.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _block_tensorflow() -> None:
    """Make ``import tensorflow`` fail as if it were not installed.

    A ``None`` entry in ``sys.modules`` makes ``import tensorflow`` raise
    ModuleNotFoundError and ``importlib.util.find_spec("tensorflow")`` return
    ``None`` (which PyTorch's dynamo and Keras probe), exactly as on a
    machine without TensorFlow.
    """
    sys.modules["tensorflow"] = None


def _mnist(n_train: int | None = None):
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    return data.limited(n_train, seed=0) if n_train else data, balanced_indices


def _tensorflow_imported() -> bool:
    return any((m == "tensorflow" or m.startswith("tensorflow.")) and sys.modules[m] is not None
               for m in list(sys.modules))


def train(out: str, n_train: int) -> None:
    """A LeNet-5 trained for one epoch on ``n_train`` MNIST images: ``out`` and its card ``out.json``.

    TensorBoard scalars go to ``out.tb`` (event files, or CSV without the tensorboard package).
    """
    from robust.training import train as train_model

    data, _ = _mnist(n_train)
    result = train_model("lenet5", data, epochs=1, batch_size=32, lr=2e-3, seed=0, progress=False,
                         tensorboard=out + ".tb")
    result.model.save(out)
    card = dict(result.card, tensorflow_imported=_tensorflow_imported())
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(card, f)


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
    np.savez(out, backend=np.array(backend.NAME), tensorflow_imported=np.array(_tensorflow_imported()), **arrays)


if __name__ == "__main__":
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        _block_tensorflow()
    command, target = sys.argv[1], sys.argv[2]
    if command == "train":
        train(target, int(sys.argv[3]))
    elif command == "attack":
        attack(target, int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(f"unknown command {command!r}: expected train or attack")
