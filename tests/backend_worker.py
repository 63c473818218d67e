"""Runs one step of the cross-backend tests in its own process (Keras picks its backend at import).

    python tests/backend_worker.py train OUT.keras N_TRAIN
    python tests/backend_worker.py attack OUT.npz N_TEST MODEL.keras [MODEL.keras ...]
    python tests/backend_worker.py adversarial OUT.json N_TRAIN METHOD EPS
    python tests/backend_worker.py cli OUT_DIR
    python tests/backend_worker.py mixed OUT.json N_TRAIN
    python tests/backend_worker.py step OUT.npz

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

#: Test images every attacking command uses (class-balanced, seed 1).
N_TEST = 300


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


def adversarial(out: str, n_train: int, method: str, eps: float) -> None:
    """PGD-20 accuracy at ``eps`` of a cnn_wong trained adversarially (``method`` at ``eps``) and of a standard one.

    Both train for one epoch on the same ``n_train`` MNIST images (batch 64, lr 2e-3, seed 0); the attack
    runs on ``N_TEST`` test images. Writes ``out`` (JSON) with the adversarial model's card.
    """
    from robust.adversarial import AdversarialConfig
    from robust.attacks import PGD
    from robust.training import train as train_model

    data, balanced = _mnist(n_train)
    idx = balanced(data.y_test, N_TEST, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    config = AdversarialConfig(method, eps, steps=1 if method == "fgsm-rs" else 3)
    found = {"tensorflow_imported": False}
    for name, adversarial_config in (("adversarial", config), ("standard", None)):
        result = train_model("cnn_wong", data, epochs=1, batch_size=64, lr=2e-3, seed=0, progress=False,
                             adversarial=adversarial_config)
        pgd = PGD(eps=eps, steps=20, seed=1)(result.model, x, y, progress=False)
        found[name] = {"pgd_accuracy": pgd.adversarial_accuracy, "clean_accuracy": pgd.clean_accuracy,
                       "card": result.card}
    found["tensorflow_imported"] = _tensorflow_imported()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(found, f)


def mixed(out: str, n_train: int) -> None:
    """``train(mixed_precision=True)``: the policy, the saved model's dtype, and attacks on the 16-bit model.

    The trained weights are loaded into the model as it trained (16-bit compute, float32 logits) and
    into the saved float32 model; their input gradients and PGD-10 accuracies at eps 0.1 are compared.
    """
    from robust import backend
    from robust.attacks import PGD
    from robust.gradients import cross_entropy, model_logits
    from robust.training import _build, train as train_model

    data, balanced = _mnist(n_train)
    lines = []
    result = train_model("lenet5", data, epochs=1, batch_size=64, lr=3e-3, seed=0, progress=False,
                         mixed_precision=True, log=lines.append)
    policy = backend.mixed_precision_policy(0)
    sixteen = _build("lenet5", data, {}, policy)
    sixteen.set_weights(result.model.get_weights())
    idx = balanced(data.y_test, N_TEST, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    found = {"card": result.card, "log": lines, "policy": policy,
             "compute_dtypes": sorted({layer.dtype_policy.compute_dtype for layer in sixteen.layers[1:-1]}),
             "saved_dtypes": sorted({str(w.dtype) for w in result.model.get_weights()})}
    grads = []
    for name, model in (("sixteen", sixteen), ("float32", result.model)):
        logits = model_logits(model, x)
        value_and_grad = backend.value_and_grad(lambda xt, labels: (cross_entropy(logits(xt), labels), None))
        values, grad, _ = value_and_grad(backend.tensor(x), backend.tensor(y, "int32"))
        grads.append(backend.to_numpy(grad).reshape(len(x), -1))
        pgd = PGD(eps=0.1, steps=10, seed=3)(model, x, y, progress=False)
        found[name] = {"loss_dtype": str(backend.to_numpy(values).dtype), "grad_dtype": str(grads[-1].dtype),
                       "pgd_accuracy": pgd.adversarial_accuracy, "clean_accuracy": pgd.clean_accuracy}
    norms = np.linalg.norm(grads[0], axis=1) * np.linalg.norm(grads[1], axis=1)
    cosine = np.sum(grads[0] * grads[1], axis=1) / np.maximum(norms, 1e-30)
    found["gradient_cosine_median"] = float(np.median(cosine))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(found, f)


def step(out: str) -> None:
    """The weights of cnn_wong after one adversarial train step (PGD-3, then TRADES) from fixed weights.

    The starting weights are drawn by numpy (seed 0), the batch is the first 64 MNIST training images and
    the optimizer plain SGD, so every backend starts from the same point; the attack's random start comes
    from the per-image hash every backend shares. Writes ``out`` with the weights after each step.
    """
    import keras

    from robust.adversarial import AdversarialConfig, wrap_for_training
    from robust.models import build_model

    data, _ = _mnist()
    x, y = data.x_train[:64], data.y_train[:64].astype(np.int32)
    found = {}
    for method in ("pgd", "trades"):
        model = build_model("cnn_wong", (28, 28, 1), 10)
        rng = np.random.default_rng(0)
        start = [rng.normal(0.0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()]
        model.set_weights(start)
        fit = wrap_for_training(model, AdversarialConfig(method, 0.1, steps=3), 10, (0.0, 1.0), steps_per_epoch=1,
                                seed=0)
        fit.compile(optimizer=keras.optimizers.SGD(0.1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fit.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
        for i, (before, after) in enumerate(zip(start, model.get_weights())):
            found[f"{method}_start_{i}"], found[f"{method}_{i}"] = before, after
    np.savez(out, **found)


#: The smallest study that still trains, attacks (FGSM, PGD), fools and reports.
TINY_SPEC = """
name = "tiny"
seed = 0
[data]
dataset = "mnist"
train_limit = 1000
test_limit = 50
[training]
epochs = 1
batch_size = 64
lr = 0.003
[[models]]
name = "lenet5"
[[attacks]]
name = "fgsm"
[[attacks]]
name = "pgd"
steps = 3
[eps]
values = [0.0, 0.1]
[fooling]
classes = [3]
max_steps = 10
[report]
examples = 2
saliency = 1
"""


def cli(out: str) -> None:
    """``robust run`` (a tiny spec), ``robust report`` and ``robust eval`` through the CLI, as a user types them.

    Writes ``OUT_DIR/cli.json``: per command its exit code and output; the runs are in ``OUT_DIR/run``
    and ``OUT_DIR/eval``.
    """
    from pathlib import Path

    from click.testing import CliRunner

    from robust.cli import main

    folder = Path(out)
    spec = folder / "tiny.toml"
    spec.write_text(TINY_SPEC)
    commands = {
        "run": ["run", str(spec), "--out", str(folder / "run"), "--no-progress"],
        "report": ["report", str(folder / "run")],
        "eval": ["eval", str(folder / "run" / "models" / "lenet5"), "--dataset", "mnist", "--limit", "50",
                 "--attacks", "fgsm", "--eps", "0,0.1", "--no-fooling", "--no-progress", "--out",
                 str(folder / "eval")],
    }
    found = {}
    for name, args in commands.items():
        result = CliRunner().invoke(main, args)
        found[name] = {"exit_code": result.exit_code, "output": result.output[-3000:]}
    found["tensorflow_imported"] = _tensorflow_imported()
    (folder / "cli.json").write_text(json.dumps(found))


if __name__ == "__main__":
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        _block_tensorflow()
    command, target = sys.argv[1], sys.argv[2]
    if command == "train":
        train(target, int(sys.argv[3]))
    elif command == "attack":
        attack(target, int(sys.argv[3]), sys.argv[4:])
    elif command == "mixed":
        mixed(target, int(sys.argv[3]))
    elif command == "cli":
        cli(target)
    elif command == "step":
        step(target)
    elif command == "adversarial":
        adversarial(target, int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    else:
        raise SystemExit(f"unknown command {command!r}: expected train, attack, adversarial, step, cli or mixed")
