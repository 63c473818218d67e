"""Training a zoo model on a dataset: seeded input pipeline, best checkpoint, model card.

:func:`train` is what ``robust train`` runs. It holds out a class-balanced,
seeded part of the train split for validation, fits with AdamW and a cosine
learning-rate decay, keeps the weights of the epoch with the best validation
accuracy (the test split is only used once, at the end, to report clean
accuracy) and returns the model with its card; writing them is the caller's
business (:func:`robust.artifacts.save_trained`). :func:`train_cell` is the
same as a pure function of a picklable :class:`TrainCell`, for the study.

It uses every GPU the backend sees (several: a mirrored strategy, see
:mod:`robust.backend`), optionally in mixed precision, and the CPU otherwise.
The same seed gives the same split, initial weights and batch order, so a
run on the same device can be repeated.

Example:

    >>> from robust.data import load_dataset
    >>> from robust.training import train
    >>> result = train("lenet5", load_dataset("mnist"))  # doctest: +SKIP
    >>> result.card["test_accuracy"]  # doctest: +SKIP
    0.9911
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import keras
import numpy as np

from robust import backend
from robust.cells import DataRef, StudyCell
from robust.data import Dataset, balanced_indices
from robust.errors import RobustError

if TYPE_CHECKING:
    from robust.adversarial import AdversarialConfig

CARD_SCHEMA = "robust.model/1"
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class TrainDefaults:
    """Epochs and initial learning rate used when the caller gives none."""

    epochs: int
    lr: float


# Chosen on 2 CPU cores: lenet5 reaches 99% and mlp 98% on full MNIST with
# these (see bench/bench_train.py); models not listed get the fallback.
TRAIN_DEFAULTS: dict[str, TrainDefaults] = {
    "mlp": TrainDefaults(epochs=10, lr=1e-3),
    "lenet5": TrainDefaults(epochs=12, lr=2e-3),
    "alexnet_small": TrainDefaults(epochs=10, lr=1e-3),
    "vgg11": TrainDefaults(epochs=15, lr=1e-3),
    "vgg13": TrainDefaults(epochs=15, lr=1e-3),
    "vgg16": TrainDefaults(epochs=15, lr=1e-3),
    "vgg19": TrainDefaults(epochs=15, lr=1e-3),
    # FGSM-RS at eps 0.3 on 30,000 MNIST images: lr 1e-3 left PGD-10 accuracy near 0.2 after 5 epochs,
    # 5e-3 reached 0.79 after 6 (bench/bench_adversarial.py); Wong et al. 2020 also peak at 5e-3.
    "cnn_wong": TrainDefaults(epochs=10, lr=5e-3),
}
FALLBACK_DEFAULTS = TrainDefaults(epochs=10, lr=1e-3)


def defaults_for(model_name: str) -> TrainDefaults:
    return TRAIN_DEFAULTS.get(model_name, FALLBACK_DEFAULTS)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained Keras model (float32, weights of the best validation epoch).
        card: the model card, as written to ``model.json``.
        history: per-epoch metrics (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``).
        epoch_seconds: wall time of each epoch (training plus validation).
        epoch_cpu_seconds: CPU time of the process (all threads) in each epoch.
    """

    model: Any
    card: dict
    history: dict[str, list[float]]
    epoch_seconds: list[float]
    epoch_cpu_seconds: list[float]


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """Where training runs: a description of the device and the distribution strategy."""

    device: str
    strategy_name: str
    strategy: Any
    gpus: int


def select_device() -> DevicePlan:
    """The strategy for the devices the backend sees: GPUs when present, else the CPU."""
    found = backend.device()
    name, strategy = backend.distribution(found["gpus"])
    return DevicePlan(found["description"], name, strategy, found["gpus"])


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation) of a class-balanced, seeded hold-out of the train split."""
    n = len(y)
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    val = balanced_indices(y, n_val, seed)
    fit = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return fit, val


make_pipeline = backend.pipeline


def compile_for_training(model, *, lr: float, total_steps: int, weight_decay: float = WEIGHT_DECAY,
                         loss_scale: bool = False) -> None:
    """AdamW with cosine decay from ``lr`` to 0 over ``total_steps``; cross-entropy on logits; accuracy.

    ``loss_scale`` wraps the optimizer in dynamic loss scaling, which float16
    gradients need so that small values do not underflow to zero.
    """
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _check_args(epochs, batch_size, lr, validation_fraction, tensorboard, dataset) -> None:
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise RobustError(f"epochs must be a positive integer; received epochs={epochs!r}.")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise RobustError(f"batch_size must be a positive integer; received batch_size={batch_size!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise RobustError(f"lr (learning rate) must be a positive number such as 0.001; received lr={lr!r}.")
    if not 0 < validation_fraction < 1:
        raise RobustError(f"validation_fraction must be between 0 and 1 (e.g. 0.1); received {validation_fraction!r}.")
    if tensorboard is not None and Path(tensorboard).exists() and not Path(tensorboard).is_dir():
        raise RobustError(f"tensorboard must be a folder; {tensorboard} exists and is a file. Choose another path.")
    if len(dataset.x_train) < 2 or len(dataset.x_test) < 1:
        raise RobustError(f"Training needs at least 2 train images and 1 test image; {dataset.describe()}.")


def train(model_name: str, dataset: Dataset, *, epochs: int | None = None, batch_size: int = 128,
          lr: float | None = None, seed: int = 0, model_options: dict | None = None,
          tensorboard: str | os.PathLike | None = None, mixed_precision: bool = False, progress: bool = True,
          data_path: str | os.PathLike | None = None, limit: int | None = None, validation_fraction: float = 0.1,
          log: Callable[[str], None] | None = None, adversarial: AdversarialConfig | None = None,
          on_epoch: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Train zoo model ``model_name`` on ``dataset``; nothing is written (see :func:`robust.artifacts.save_trained`).

    Args:
        model_name: a name of the zoo (``robust models``).
        dataset: the data (already limited if a limit applies).
        epochs: passes over the fitting part of the train split; default per model
            (:data:`TRAIN_DEFAULTS`).
        batch_size: images per step (global, over all replicas).
        lr: initial learning rate of AdamW, decayed to 0 along a cosine; default per model.
        seed: seeds the validation split, weight initialisation and batch order.
        model_options: builder options of the model (``{"width": 0.25}``).
        tensorboard: folder for TensorBoard logs (epoch scalars, ``train/`` and ``validation/``).
        mixed_precision: compute in the backend's 16-bit type (:func:`robust.backend.mixed_precision_policy`:
            float16 on GPUs, bfloat16 on JAX on any device; ignored where there is none); the returned
            model is float32.
        progress: show a progress bar per epoch on stderr.
        data_path: the ``--data`` path the dataset came from, recorded in the card.
        limit: the ``--limit`` the dataset was cut to, recorded in the card.
        validation_fraction: share of the train split held out to choose the best epoch.
        log: called with one line of text for each step worth reporting (device, result ...).
        adversarial: train against this threat model (:mod:`robust.adversarial`): every batch is
            attacked inside the train step, and the epoch with the best PGD validation accuracy is kept.
        on_epoch: ``on_epoch(epoch, epochs, {"val_accuracy", "seconds"})`` after each epoch (1-based).

    Returns:
        A :class:`TrainResult`.

    Raises:
        RobustError: unknown model or option, a model that cannot take the dataset's
            images, or bad argument values.
    """
    from robust.models import get_spec

    say = log or (lambda line: None)
    defaults = defaults_for(get_spec(model_name).name)
    epochs = defaults.epochs if epochs is None else epochs
    lr = defaults.lr if lr is None else lr
    options = dict(model_options or {})
    _check_args(epochs, batch_size, lr, validation_fraction, tensorboard, dataset)
    _check_adversarial(adversarial, dataset, epochs)

    plan = select_device()
    policy = backend.mixed_precision_policy(plan.gpus) if mixed_precision else None
    use_mixed = policy is not None
    say(f"data: {dataset.describe()}")
    say(f"device: {plan.device}; strategy: {plan.strategy_name}"
        + (f"; mixed precision {policy.removeprefix('mixed_')}" if use_mixed else "")
        + ("  (mixed precision needs a GPU: training in float32)" if mixed_precision and not use_mixed else ""))
    keras.utils.set_random_seed(seed)
    split = split_validation(dataset.y_train, validation_fraction, seed)
    model, inner, params = _prepare(model_name, dataset, options, plan, policy, lr, epochs, batch_size,
                                    len(split[0]), adversarial, seed)
    say(f"model: {model_name} ({params:,} parameters{', options ' + repr(options) if options else ''}); "
        f"{epochs} epochs of {len(split[0]):,} images (batch {batch_size}, lr {lr:g}, seed {seed}); "
        f"{len(split[1]):,} held out for validation"
        + (f"; adversarial training {adversarial.describe()}" if adversarial else ""))

    fitted = _fit(model, dataset, split, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                  tensorboard=tensorboard, robust_check=_robust_check(adversarial, inner, dataset, split, seed, say),
                  on_epoch=on_epoch)
    final = _float32_copy(model_name, dataset, options, inner) if use_mixed else inner
    test_acc = accuracy(final, dataset.x_test, dataset.y_test, batch_size=max(batch_size, 256))
    best = fitted["best"]
    robust_note = f" (PGD-10 {best.history['pgd'][best.epoch]:.4f}, kept for it)" if adversarial else ""
    say(f"best epoch {best.epoch + 1}/{epochs}: validation accuracy {best.accuracy:.4f}{robust_note}; "
        f"clean test accuracy {test_acc:.4f} on {len(dataset.x_test):,} images ({fitted['seconds']:.1f} s)")
    card = _card(model_name, final, options, dataset, split, params=params, test_acc=test_acc, best=best,
                 epochs=epochs, batch_size=batch_size, lr=lr, seconds=fitted["seconds"], seed=seed, plan=plan,
                 mixed=use_mixed, data_path=data_path, limit=limit)
    if adversarial is not None:
        card["adversarial"] = _adversarial_card(adversarial, fitted, model_name, dataset, options, split,
                                                batch_size=batch_size, lr=lr)
    return TrainResult(final, card, fitted["history"], list(fitted["timer"].seconds),
                       list(fitted["timer"].cpu_seconds))


def _prepare(model_name, dataset, options, plan, policy, lr, epochs, batch_size, n_fit, adversarial, seed):
    """``(model to fit, the model itself, parameters)`` compiled inside the device strategy's scope.

    For adversarial training the model to fit wraps the model: its train step attacks each batch.
    """
    from robust.models import check_model_input, count_params

    steps = math.ceil(n_fit / batch_size)
    with plan.strategy.scope():
        model = _build(model_name, dataset, options, policy)
        check_model_input(model, dataset.input_shape, data_name=f"the {dataset.name} data")
        fit_model = model
        if adversarial is not None:
            from robust.adversarial import wrap_for_training

            fit_model = wrap_for_training(model, adversarial, dataset.num_classes, dataset.value_range,
                                          steps_per_epoch=steps, seed=seed)
        # bfloat16 has float32's exponent range: only float16 needs loss scaling.
        compile_for_training(fit_model, lr=lr, total_steps=epochs * steps, loss_scale=policy == "mixed_float16")
    return fit_model, model, count_params(model)


def _check_adversarial(adversarial, dataset, epochs) -> None:
    from robust.adversarial import AdversarialConfig

    if adversarial is None:
        return
    if not isinstance(adversarial, AdversarialConfig):
        raise RobustError(f"adversarial must be an AdversarialConfig (method, eps, ...) or None; "
                          f"received {type(adversarial).__name__}.")
    adversarial.check_for(dataset.input_shape, dataset.value_range, epochs)


def _robust_check(adversarial, model, dataset, split, seed, say):
    """For adversarial training, the callback that measures PGD and FGSM accuracy each epoch (else None)."""
    if adversarial is None:
        return None
    from robust.adversarial import VALIDATION_IMAGES, RobustValidation

    val = split[1]
    chosen = val[balanced_indices(dataset.y_train[val], min(VALIDATION_IMAGES, len(val)), seed)]
    return RobustValidation(model, adversarial, dataset.x_train[chosen], dataset.y_train[chosen],
                            dataset.value_range, seed=seed, log=say)


def _adversarial_card(adversarial, fitted, model_name, dataset, options, split, *, batch_size, lr) -> dict:
    """The card's ``adversarial`` entry: threat model, per-epoch validation accuracies and times, the guard."""
    from robust.adversarial import VALIDATION_PGD_STEPS

    check, seconds = fitted["best"], list(fitted["timer"].seconds)
    fit_idx = split[0][:batch_size * 22]
    standard = standard_epoch_seconds(model_name, dataset, options, dataset.x_train[fit_idx],
                                      dataset.y_train[fit_idx], batch_size=batch_size, lr=lr,
                                      steps_per_epoch=math.ceil(len(split[0]) / batch_size))
    value = lambda key, e: None if math.isnan(check.history[key][e]) else round(check.history[key][e], 4)  # noqa: E731
    epochs = [{"epoch": e + 1, "clean_val_accuracy": value("clean", e), "pgd_val_accuracy": value("pgd", e),
               "fgsm_val_accuracy": value("fgsm", e), "seconds": round(seconds[e], 3),
               "ratio_to_standard": round(seconds[e] / standard, 3) if standard > 0 else None}
              for e in range(len(check.history["pgd"]))]
    return {**adversarial.describe(), "validation": {"images": len(check.x), "pgd_steps": VALIDATION_PGD_STEPS,
                                                     "eps": adversarial.eps, "chooses": "best PGD accuracy"},
            "best_epoch": check.epoch + 1, "pgd_val_accuracy": value("pgd", check.epoch),
            "epochs": epochs, "standard_epoch_seconds": round(standard, 3),
            "standard_epoch_how": "20 timed steps of a fresh standard copy of the model x steps per epoch",
            "stopped": check.stopped}


def _fit(model, dataset, split, *, epochs, batch_size, seed, progress, tensorboard, robust_check=None,
         on_epoch=None) -> dict:
    """``model.fit`` with the callbacks that keep the best epoch, time epochs, show progress and log."""
    fit_idx, val_idx = split
    train_ds = make_pipeline(dataset.x_train[fit_idx], dataset.y_train[fit_idx], batch_size, shuffle_seed=seed)
    val_ds = make_pipeline(dataset.x_train[val_idx], dataset.y_train[val_idx], max(batch_size, 256))
    best, timer = robust_check or KeepBest(), EpochTimer()
    callbacks = [timer, best]
    if progress:
        callbacks.append(ProgressBar(epochs, math.ceil(len(fit_idx) / batch_size)))
    if tensorboard is not None:
        callbacks.append(ScalarLogger(tensorboard))
    if on_epoch is not None:
        callbacks.append(EpochReport(on_epoch, epochs, timer))
    start = time.perf_counter()
    history = model.fit(train_ds, epochs=epochs, validation_data=val_ds, shuffle=False, verbose=0,
                        callbacks=callbacks)
    seconds = time.perf_counter() - start
    model.set_weights(best.weights)
    return {"best": best, "timer": timer, "seconds": seconds,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}


def _card(model_name, model, options, dataset, split, *, params, test_acc, best, epochs, batch_size, lr, seconds,
          seed, plan, mixed, data_path, limit) -> dict:
    """The model card written as ``model.json``."""
    return {
        "schema": CARD_SCHEMA, "model": model_name, "keras_name": model.name, "options": options,
        "dataset": dataset.name, "data_source": dataset.source,
        "data_path": None if data_path is None else str(data_path), "limit": limit,
        "train_size": int(len(split[0])), "validation_size": int(len(split[1])),
        "test_size": int(len(dataset.x_test)), "input_shape": list(dataset.input_shape),
        "value_range": [float(v) for v in dataset.value_range], "class_names": list(dataset.class_names),
        "num_classes": int(dataset.num_classes), "params": params, "test_accuracy": float(test_acc),
        "val_accuracy": float(best.accuracy), "best_epoch": best.epoch + 1, "epochs": int(epochs),
        "batch_size": int(batch_size), "lr": float(lr),
        "optimizer": f"AdamW(weight_decay={WEIGHT_DECAY:g}), cosine decay of lr to 0",
        "seconds": round(seconds, 2), "seed": int(seed), "device": plan.device, "backend": backend.NAME,
        "strategy": plan.strategy_name, "mixed_precision": mixed, "versions": backend.versions(),
        "adversarial": None,  # the threat model and per-epoch robust validation, when adversarially trained
    }


@dataclasses.dataclass(frozen=True)
class TrainCell(StudyCell):
    """One model to train, as a picklable value: what :func:`train_cell` needs and nothing live.

    The data is named, not carried: ``dataset`` and ``data_path`` are read
    where the cell runs, then cut to ``train_limit`` images (class-balanced,
    ``seed``), as the study does.
    """

    model: str
    options: tuple[tuple[str, Any], ...]
    dataset: str
    data_path: str | None
    train_limit: int | None
    epochs: int
    batch_size: int
    lr: float
    seed: int
    adversarial: AdversarialConfig | None = None  # a frozen dataclass: picklable like the rest

    needs_train_split: ClassVar[bool] = True

    def data_ref(self) -> DataRef:
        return DataRef(self.dataset, self.data_path, self.train_limit, self.seed)

    def model_refs(self) -> tuple[None, ...]:
        return (None,)  # a zoo name: no file to ship


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """What :func:`train_cell` returns: the ``.keras`` file's bytes and the model card."""

    keras_bytes: bytes
    card: dict


def train_cell(cell: TrainCell, *, progress: bool = False,
               on_epoch: Callable[[TrainCell, int, int, dict], None] | None = None) -> TrainedModel:
    """Train the cell's model; a pure function of the cell (the caller writes the files).

    ``on_epoch(cell, epoch, epochs, logs)`` is called when training starts (epoch 0) and after each
    epoch, in the process that trains (an in-process study prints a line per epoch with it).
    """
    import tempfile

    from robust.cells import study_data

    dataset = study_data(cell.dataset, cell.data_path, train_limit=cell.train_limit, seed=cell.seed)
    if on_epoch is not None:
        on_epoch(cell, 0, cell.epochs, {})
    result = train(cell.model, dataset, epochs=cell.epochs, batch_size=cell.batch_size, lr=cell.lr, seed=cell.seed,
                   model_options=dict(cell.options), progress=progress, data_path=cell.data_path,
                   limit=cell.train_limit, adversarial=cell.adversarial,
                   on_epoch=None if on_epoch is None else functools.partial(on_epoch, cell))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        result.model.save(path)
        return TrainedModel(path.read_bytes(), result.card)


def _build(model_name, dataset, options, mixed: str | None):
    """The zoo model; under a mixed policy (``"mixed_bfloat16"``...), built in it with float32 logits."""
    from robust.models import build_model

    if not mixed:
        return build_model(model_name, dataset.input_shape, dataset.num_classes, **options)

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(mixed)
    try:
        inner = build_model(model_name, dataset.input_shape, dataset.num_classes, **options)
    finally:
        keras.config.set_dtype_policy(previous)
    # Softmax cross-entropy in 16 bits loses precision; the logits go to float32 first (attacks' losses too).
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(inner.output)
    return keras.Model(inner.input, logits, name=inner.name)


def _float32_copy(model_name, dataset, options, trained):
    """The same architecture in float32 with the trained weights (what gets saved and evaluated)."""
    from robust.models import build_model

    model = build_model(model_name, dataset.input_shape, dataset.num_classes, **options)
    model.set_weights(trained.get_weights())
    return model


def accuracy(model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Share of images whose highest logit is the label."""
    logits = model.predict(make_pipeline(x, None, batch_size), verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


class KeepBest(keras.callbacks.Callback):
    """Keeps (in memory) the weights of the epoch with the best validation accuracy, ties to lower loss."""

    def __init__(self):
        super().__init__()
        self.key = None
        self.epoch = -1
        self.accuracy = float("nan")
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        acc, loss = float(logs["val_accuracy"]), float(logs["val_loss"])
        key = (acc, -loss if math.isfinite(loss) else -math.inf)
        if self.key is None or key > self.key:
            self.key, self.epoch, self.accuracy = key, epoch, acc
            self.weights = self.model.get_weights()


class EpochTimer(keras.callbacks.Callback):
    """Wall time and process CPU time (all threads) of every epoch, training plus validation."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)


class EpochReport(keras.callbacks.Callback):
    """Calls ``report(epoch, epochs, {"val_accuracy", "seconds"})`` after each epoch (1-based)."""

    def __init__(self, report: Callable[[int, int, dict], None], epochs: int, timer: EpochTimer):
        super().__init__()
        self.report, self.epochs, self.timer = report, epochs, timer

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.timer.seconds[-1] if len(self.timer.seconds) > epoch else float("nan")
        self.report(epoch + 1, self.epochs, {"val_accuracy": float((logs or {}).get("val_accuracy", float("nan"))),
                                             "seconds": seconds})


class ProgressBar(keras.callbacks.Callback):
    """One tqdm bar per epoch on stderr; metrics are read at most once a second (no per-step sync)."""

    def __init__(self, epochs: int, steps: int, file=None):
        super().__init__()
        self.epochs, self.steps, self.file = epochs, steps, file or sys.stderr
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                        file=self.file, mininterval=0.5, dynamic_ncols=True, leave=True)
        self._shown = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        now = time.monotonic()
        if logs and now - self._shown >= 1.0:
            self._shown = now
            self.bar.set_postfix(_short(logs), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.set_postfix(_short(logs or {}), refresh=False)
            self.bar.close()
            self.bar = None

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()


def _short(logs: dict) -> dict[str, str]:
    names = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    return {short: f"{float(logs[k]):.4f}" for k, short in names.items() if k in logs}


class ScalarLogger(keras.callbacks.Callback):
    """Epoch scalars for TensorBoard (``train/`` and ``validation/`` runs, tags ``epoch_<metric>``).

    Written through :class:`robust.backend.ScalarWriter`; viewing the logs needs the ``tensorboard`` package.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = Path(log_dir)

    def on_train_begin(self, logs=None):
        self._writers = {run: backend.ScalarWriter(self.log_dir / run) for run in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writers[run].write(f"epoch_{name}", float(value), epoch)
        self._writers["train"].write("epoch_learning_rate", float(self.model.optimizer.learning_rate), epoch)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()


def standard_epoch_seconds(model_name: str, dataset, options: dict, x, y, *, batch_size: int, lr: float,
                           steps_per_epoch: int, timed_steps: int = 20) -> float:
    """Seconds a standard (not adversarial) epoch of the same model takes, from ``timed_steps`` timed steps.

    A fresh copy of the model is compiled as :func:`train` compiles it, stepped
    twice to trace, then timed; the time per step times the steps of an epoch is the estimate.
    """
    from robust.models import build_model

    copy = build_model(model_name, dataset.input_shape, dataset.num_classes, **options)
    compile_for_training(copy, lr=lr, total_steps=steps_per_epoch)
    batches = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(x) - batch_size + 1, batch_size)]
    batches = (batches or [(x, y)])[:timed_steps + 2]
    for xb, yb in batches[:2]:
        copy.train_on_batch(xb, yb)
    started = time.perf_counter()
    for xb, yb in batches[2:] or batches[:1]:
        copy.train_on_batch(xb, yb)
    per_step = (time.perf_counter() - started) / max(1, len(batches[2:] or batches[:1]))
    return per_step * steps_per_epoch
