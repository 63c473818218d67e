"""robust.training: a short real training run on MNIST, the model card, reproducibility, bad arguments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from click.testing import CliRunner

from robust.artifacts import load_model, save_trained
from robust.cli import main
from robust.errors import RobustError
from robust.training import EpochTimer, accuracy, split_validation, train

REQUIRED_CARD_KEYS = {
    "schema", "model", "options", "dataset", "data_source", "data_path", "limit", "train_size", "test_size",
    "input_shape", "value_range", "class_names", "num_classes", "params", "test_accuracy", "epochs",
    "batch_size", "lr", "seconds", "seed", "device", "strategy", "versions",
}


@pytest.fixture(scope="module")
def small_mnist(mnist):
    return mnist.limited(3000, seed=0)


@pytest.fixture(scope="module")
def run(small_mnist, tmp_path_factory):
    """LeNet-5 trained for 3 epochs on 2,700 real MNIST images, written to disk with TensorBoard logs."""
    out = tmp_path_factory.mktemp("lenet5_run")
    lines: list[str] = []
    result = train("lenet5", small_mnist, epochs=3, batch_size=64, seed=0, tensorboard=out / "tb", progress=False,
                   limit=3000, log=lines.append)
    save_trained(out / "model", result.model, result.card)
    return result, out, lines


def test_short_real_training_beats_chance(run, small_mnist):
    result, _, lines = run
    # Chance is 10%; three short epochs of LeNet-5 on 2,700 digits reach about 90%.
    assert result.card["test_accuracy"] > 0.75
    assert result.card["test_accuracy"] == pytest.approx(
        accuracy(result.model, small_mnist.x_test, small_mnist.y_test))
    assert any(line.startswith("device: CPU") and "strategy: default" in line for line in lines)
    assert any("mnist: 3000 train / 3000 test" in line for line in lines)


def test_model_card_contents(run, small_mnist):
    result, out, _ = run
    card = json.loads((out / "model" / "model.json").read_text())
    from robust.artifacts import file_sha256

    assert card.pop("model_sha256") == file_sha256(out / "model" / "model.keras")  # the card names its model file
    assert card == json.loads(json.dumps(result.card))
    assert REQUIRED_CARD_KEYS <= set(card)
    assert card["schema"] == "robust.model/1"
    assert (card["model"], card["dataset"], card["options"]) == ("lenet5", "mnist", {})
    assert card["data_source"] == small_mnist.source and card["data_path"] is None and card["limit"] == 3000
    assert card["train_size"] + card["validation_size"] == len(small_mnist.x_train) == 3000
    assert card["validation_size"] == 300 and card["test_size"] == 3000
    assert card["input_shape"] == [28, 28, 1] and card["value_range"] == [0.0, 1.0]
    assert card["class_names"] == [str(i) for i in range(10)] and card["num_classes"] == 10
    assert card["params"] == result.model.count_params() == 61_706
    assert (card["epochs"], card["batch_size"], card["seed"]) == (3, 64, 0)
    assert card["lr"] > 0 and card["seconds"] > 0
    assert set(card["versions"]) == {"robust", "backend", "tensorflow", "keras", "numpy", "python"}
    assert card["backend"] == card["versions"]["backend"] == "tensorflow"
    assert 0 <= card["test_accuracy"] <= 1


def test_saved_model_reloads_with_same_predictions(run, small_mnist):
    result, out, _ = run
    model, card = load_model(out / "model")
    assert card["test_accuracy"] == result.card["test_accuracy"]
    x = small_mnist.x_test[:64]
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)
    assert not [p.name for p in (out / "model").iterdir() if p.name not in ("model.keras", "model.json")]


def test_best_epoch_is_selected_on_validation_not_test(run, small_mnist):
    result, _, _ = run
    val_acc = result.history["val_accuracy"]
    assert result.card["best_epoch"] == int(np.argmax(val_acc)) + 1  # first of equal maxima, lowest loss
    _, val = split_validation(small_mnist.y_train, 0.1, seed=0)
    held_out = accuracy(result.model, small_mnist.x_train[val], small_mnist.y_train[val])
    assert held_out == pytest.approx(max(val_acc), abs=1e-6)
    assert len(result.epoch_seconds) == len(result.epoch_cpu_seconds) == 3


def test_tensorboard_logs_epoch_scalars(run):
    import tensorflow as tf

    _, out, _ = run
    tags = {}
    for split in ("train", "validation"):
        for event_file in (out / "tb" / split).glob("events.out.tfevents.*"):
            for record in tf.data.TFRecordDataset(str(event_file)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    tags.setdefault((split, value.tag), []).append(event.step)
    assert tags[("train", "epoch_accuracy")] == [0, 1, 2]
    assert tags[("validation", "epoch_loss")] == [0, 1, 2]
    assert ("train", "epoch_learning_rate") in tags


def test_same_seed_same_weights(mnist):
    tiny = mnist.limited(300, seed=0)
    a, b = (train("lenet5", tiny, epochs=1, batch_size=32, seed=7, progress=False) for _ in range(2))
    assert all(np.array_equal(u, v) for u, v in zip(a.model.get_weights(), b.model.get_weights()))
    assert a.card["test_accuracy"] == b.card["test_accuracy"]
    assert a.history == b.history


def test_validation_split_is_balanced_disjoint_and_seeded(mnist):
    y = mnist.y_train[:5000]
    fit, val = split_validation(y, 0.1, seed=0)
    assert len(val) == 500 and len(fit) == 4500
    assert not set(fit) & set(val) and sorted([*fit, *val]) == list(range(5000))
    assert np.bincount(y[val], minlength=10).tolist() == [50] * 10
    assert not np.array_equal(val, split_validation(y, 0.1, seed=1)[1])


def test_interrupted_training_writes_nothing(mnist, tmp_path, monkeypatch):
    def interrupt(self, epoch, logs=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(EpochTimer, "on_epoch_end", interrupt)
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["train", "mlp", "--dataset", "mnist", "--limit", "200", "--epochs", "2",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 130
    assert not out.exists() or not any(out.iterdir())


def test_mixed_precision_without_gpu_trains_in_float32(mnist):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this checks the CPU fallback")
    lines: list[str] = []
    result = train("mlp", mnist.limited(200), epochs=1, mixed_precision=True, progress=False, log=lines.append)
    assert result.card["mixed_precision"] is False
    assert result.model.layers[-1].compute_dtype == "float32"
    assert any("mixed precision needs a GPU" in line for line in lines)


def test_mixed_precision_path_builds_float16_and_saves_float32(mnist):
    """The GPU mixed-precision path, run on the CPU: float16 layers, float32 logits, loss scaling."""
    import keras

    from robust.training import _build, _float32_copy, compile_for_training, make_pipeline

    tiny = mnist.limited(64)
    model = _build("lenet5", tiny, {}, "mixed_float16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert model.get_layer("c1").compute_dtype == "float16" and model.output.dtype == "float32"
    compile_for_training(model, lr=1e-3, total_steps=100, loss_scale=True)
    model.fit(make_pipeline(tiny.x_train, tiny.y_train, 32), epochs=1, shuffle=False, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(model.optimizer.learning_rate) > 0
    copy = _float32_copy("lenet5", tiny, {}, model)
    assert copy.get_layer("c1").compute_dtype == "float32" and len(copy.layers) == len(model.layers) - 1
    x = tiny.x_test[:16]
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"epochs": 1.5}, "epochs must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"lr": -1.0}, "lr (learning rate) must be a positive number"),
    ({"lr": math.nan}, "lr (learning rate) must be a positive number"),
    ({"validation_fraction": 1.0}, "validation_fraction must be between 0 and 1"),
    ({"model_options": {"depth": 3}}, "has no option 'depth'"),
])
def test_bad_arguments_are_refused_before_training(mnist, kwargs, message):
    with pytest.raises(RobustError) as info:
        train("lenet5", mnist.limited(100), progress=False, **kwargs)
    assert message in str(info.value)


def test_model_that_cannot_take_the_data(mnist):
    with pytest.raises(RobustError, match="'vgg11' cannot take images of shape 28x28x1"):
        train("vgg11", mnist.limited(100), epochs=1, progress=False)
    with pytest.raises(RobustError, match="Unknown model 'resnet'"):
        train("resnet", mnist.limited(100), epochs=1, progress=False)


def test_out_dir_that_is_a_file(mnist, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    result = CliRunner().invoke(main, ["train", "mlp", "--dataset", "mnist", "--limit", "100", "--epochs", "1",
                                       "--out", str(path), "--no-progress"])
    assert result.exit_code == 2 and "is a file" in result.output
    assert path.read_text() == "x"
