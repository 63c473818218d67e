"""Pieces shared by the backends.

What every backend uses:

* :class:`AdversarialModel`: the adversarial train step (attack the batch, then
  Keras's own step on it); the stateful backends (TensorFlow, PyTorch) use it
  as it is, JAX's functional train step overrides one method.

What the backends without ``tf.data``, ``tf.distribute`` or ``tf.summary`` (JAX, PyTorch) share:

* :class:`ArrayBatches`: the training input pipeline as a ``keras.utils.PyDataset``
  over arrays held once in host memory, reshuffled every epoch from a seed;
* :class:`OneDevice`: the "strategy" of a single device (its ``scope()`` does nothing);
* :class:`ScalarWriter`: TensorBoard scalars through the ``tensorboard`` package
  when it is installed (no TensorFlow needed), else a ``scalars.csv`` file.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops


@dataclasses.dataclass(frozen=True)
class Spec:
    """The shape (``None`` for the batch axis) and dtype of one argument of a compiled function."""

    shape: tuple
    dtype: str


class ArrayBatches(keras.utils.PyDataset):
    """``(images, labels)`` batches of ``x`` and ``y`` (images only when ``y`` is ``None``).

    With ``shuffle_seed`` the order is a permutation drawn from
    ``(shuffle_seed, epoch)``, new every epoch and the same for the same seed;
    without it, the arrays' order. Batches are gathered on demand, so no
    shuffled copy of the data is made.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None):
        super().__init__()
        self.x = x
        self.y = None if y is None else np.asarray(y, dtype=np.int32)
        self.batch_size, self.shuffle_seed, self.epoch = int(batch_size), shuffle_seed, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray | None:
        if self.shuffle_seed is None:
            return None
        return np.random.default_rng([int(self.shuffle_seed), self.epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        start, stop = index * self.batch_size, min((index + 1) * self.batch_size, len(self.x))
        pick = slice(start, stop) if self._order is None else np.sort(self._order[start:stop])
        xb = self.x[pick]
        return xb if self.y is None else (xb, self.y[pick])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._permutation()


class OneDevice:
    """The distribution strategy of one device: models are built and trained as they are."""

    def scope(self):
        return contextlib.nullcontext()


class ScalarWriter:
    """Scalars of one run folder: TensorBoard event files if ``tensorboard`` is installed, else ``scalars.csv``.

    The event files hold what ``tf.summary.write`` would write (a float tensor
    with the scalar plugin's metadata), so TensorBoard shows them as usual.
    The CSV fallback (``tag,step,value,wall_time``) keeps the numbers on a
    machine without TensorBoard; a warning says so once per folder.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            warnings.warn(f"The tensorboard package is not installed: scalars go to {self.folder / 'scalars.csv'} "
                          "instead of TensorBoard event files (pip install tensorboard to get those).",
                          stacklevel=2)
            self._file = open(self.folder / "scalars.csv", "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(["tag", "step", "value", "wall_time"])
            self._events = None
            return
        self._pb = (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2)
        self._events = EventFileWriter(str(self.folder))

    def write(self, tag: str, value: float, step: int) -> None:
        if self._events is None:
            self._csv.writerow([tag, int(step), float(value), time.time()])
            return
        event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2 = self._pb
        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        metadata = summary_pb2.SummaryMetadata(plugin_data=plugin)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        if self._events is None:
            self._file.close()
        else:
            self._events.close()


# ------------------------------------------------------ adversarial training

class _Stash:
    """A plain holder the Keras layer tracker leaves alone (for tensors alive during one trace)."""

    clean = None


class _KL(keras.losses.Loss):
    """Mean KL(softmax(y_true) || softmax(y_pred)) over the batch (Keras scales it for distribution)."""

    def call(self, y_true, y_pred):
        from robust.gradients import kl_divergence

        return kl_divergence(y_true, y_pred)


class AdversarialModel(keras.Model):
    """A classifier whose train step trains it on adversarial examples of each batch, in one compiled step.

    The step attacks the batch on the current weights (``perturb``), stops the
    gradient through the attack, then runs Keras's own train step (loss
    scaling, distribution, metrics) on the adversarial batch. With ``beta``
    the loss is TRADES's clean cross-entropy + beta x KL(clean || adversarial).
    This is the step of the stateful backends (TensorFlow, PyTorch), whose
    variables are read by reference; JAX's subclass maps its state first.

    Args:
        model: the Keras classifier to train (its weights are this model's weights, in the same order).
        perturb: ``perturb(x, y, step) -> x_adv`` written with ``keras.ops``.
        beta: ``None`` trains on the adversarial batch alone (Madry et al.; Wong et al.);
            a number trains on TRADES's loss (Zhang et al. 2019).
    """

    def __init__(self, model, perturb: Callable, beta: float | None = None):
        super().__init__(name=f"{model.name}_adversarial")
        self.inner = model
        self._attack, self._beta = perturb, beta
        self._stash = _Stash()
        self._kl = _KL(name="kl")

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def adversarial_batch(self, x, y):
        """The attacked batch, on the weights the variables hold now; no gradient flows back through it."""
        return ops.stop_gradient(self._attack(x, y, ops.convert_to_tensor(self.optimizer.iterations)))

    @contextlib.contextmanager
    def clean_batch(self, x):
        """While Keras's step runs, :meth:`compute_loss` sees the clean batch (TRADES needs it)."""
        self._stash.clean = x if self._beta is not None else None
        try:
            yield
        finally:
            self._stash.clean = None

    def train_step(self, data):
        x, y = data[0], data[1]
        x_adv = self.adversarial_batch(x, y)
        with self.clean_batch(x):
            return super().train_step((x_adv, y))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._stash.clean is None or not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        clean = self.inner(self._stash.clean, training=True)
        return super().compute_loss(x, y, clean, sample_weight, training) + self._beta * self._kl(clean, y_pred)


def adversarial_model(model, perturb: Callable, beta: float | None = None) -> AdversarialModel:
    """``model`` wrapped so that ``fit`` trains it on adversarial examples (see :class:`AdversarialModel`).

    Returns:
        A ``keras.Model`` to compile and fit; ``model`` is what gets saved.
    """
    return AdversarialModel(model, perturb, beta)


def roll(x, shift, axis):
    """``keras.ops.roll``; a ``shift`` computed inside the kernel is fine on TensorFlow and JAX (PyTorch has its own)."""
    return ops.roll(x, shift, axis=axis)
