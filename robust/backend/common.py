"""Pieces shared by the backends that have no ``tf.data``, ``tf.distribute`` or ``tf.summary`` (JAX, PyTorch).

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

import keras
import numpy as np


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
