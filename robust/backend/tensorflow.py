"""The TensorFlow backend: gradient tape, ``tf.function``, per-image random numbers, tf.data, tf.distribute."""

from __future__ import annotations

import os
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

#: Compile attack loops with XLA (``jit_compile=True``). Off by default: on CPU
#: XLA made one LeNet-5 gradient pass about 2.4x slower than TensorFlow's own
#: graph executor (``bench/bench_attacks.py --xla`` measures it again).
JIT_COMPILE: bool = False

#: An operation without a registered gradient raises this while tracing.
GRADIENT_ERRORS: tuple[type[Exception], ...] = (LookupError,)


def value_and_grad(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any, Any]]:
    """Wrap ``fn(x, *args) -> (values, aux)`` into ``g(x, *args) -> (values, d sum(values)/dx, aux)``.

    ``values`` holds one number per example; as examples do not interact
    (the model runs in inference mode), the gradient of their sum is each
    example's own gradient. The gradient is ``None`` when ``values`` does
    not depend on ``x`` differentiably.
    """

    def wrapped(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values, aux = fn(x, *args)
            total = tf.reduce_sum(values)
        return values, tape.gradient(total, x), aux

    return wrapped


def compile(fn: Callable, signature: list, *, jit_compile: bool | None = None) -> "Compiled":
    """``fn`` as one compiled graph, traced once per signature (a ``None`` batch axis serves all batch sizes)."""
    jit = JIT_COMPILE if jit_compile is None else jit_compile
    compiled = tf.function(fn, input_signature=signature, jit_compile=jit)
    # Each (model, attack configuration) gets its own function from the same code, traced once;
    # TensorFlow counts those first traces together and would warn about "retracing".
    compiled._omit_frequent_tracing_warning = True
    return Compiled(compiled, signature)


class Compiled:
    """A ``tf.function`` with a fixed signature, called through its one concrete function.

    ``tf.function.__call__`` binds, canonicalises and casts its arguments against the
    signature on every call; with the model's weights among them that cost about 4 ms
    of a 30 ms FGSM batch on a small CNN. The signature is fixed, so the graph is traced
    once and later calls pass the flattened tensors straight to it, converted to the
    signature's dtypes. Other attributes are the ``tf.function``'s.
    """

    def __init__(self, function, signature: list):
        self._function = function
        self._dtypes = [s.dtype for s in tf.nest.flatten(signature)]
        self._concrete = self._call_flat = None

    def __call__(self, *args):
        if self._concrete is None:  # traced once, on the first call
            self._concrete = self._function.get_concrete_function()
            # A TensorFlow without the private entry point gets the public, slower call.
            self._call_flat = getattr(self._concrete, "_call_flat", None)
        if self._call_flat is None:
            return self._function(*args)
        flat = tf.nest.flatten(list(args))
        if len(flat) != len(self._dtypes):
            raise TypeError(f"expected {len(self._dtypes)} tensors for the compiled function, received {len(flat)}")
        flat = [a if isinstance(a, tf.Tensor) and a.dtype == d else tf.convert_to_tensor(a, d)
                for a, d in zip(flat, self._dtypes)]
        return self._call_flat(flat, self._concrete.captured_inputs)

    def __getattr__(self, name):
        return getattr(self._function, name)


def spec(shape, dtype="float32") -> tf.TensorSpec:
    """The signature entry of a compiled function's argument."""
    return tf.TensorSpec(shape=shape, dtype=tf.as_dtype(dtype))


def tensor(x, dtype="float32"):
    return tf.convert_to_tensor(x, dtype=tf.as_dtype(dtype))


def to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


# ------------------------------------------------------------ random numbers

_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low, high = tf.bitwise.bitwise_and(x, 0xFFFF), tf.bitwise.right_shift(x, 16)
    part = tf.bitwise.left_shift(tf.bitwise.bitwise_and(high * (c & 0xFFFF), 0xFFFF), 16)
    return tf.bitwise.bitwise_and(low * c + part, _MASK32)


def _mix32(x):
    """A 32-bit integer finaliser (the "lowbias32" hash): every input bit affects every output bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


class Rng:
    """Per-image random numbers inside compiled code: a counter-based hash of (key, draw, element).

    ``keys`` is ``(batch, 2)`` int32, one ``(seed, image index)`` per image.
    Row ``i`` of every draw depends only on ``keys[i]``, the draw's position
    in the sequence and :meth:`fold` values, never on the rest of the batch,
    so an image gets the same numbers at any batch size.
    """

    def __init__(self, keys, _streams=None):
        keys = tf.cast(keys, tf.int64)
        if _streams is None:
            _streams = _mix32(tf.bitwise.bitwise_and(_mix32(keys[:, 0]) + _mul32(keys[:, 1], 0x9E3779B1), _MASK32))
        self._keys, self._streams, self._count = keys, _streams, 0

    def fold(self, value) -> "Rng":
        """An independent stream for ``value`` (a restart index, a step)."""
        value = tf.cast(value, tf.int64)
        return Rng(self._keys, _mix32(tf.bitwise.bitwise_and(self._streams + _mix32(value + 0x632BE5AB), _MASK32)))

    def _bits(self, shape):
        """Uniform 32-bit integers shaped ``shape`` (its first axis is the batch)."""
        self._count += 1
        per_image = tf.reduce_prod(tf.convert_to_tensor(shape[1:], tf.int64)) if len(shape) > 1 else tf.constant(
            1, tf.int64)
        element = tf.range(per_image, dtype=tf.int64)
        draw = _mix32(tf.bitwise.bitwise_and(self._streams + self._count * 0x85EBCA77, _MASK32))
        flat = _mix32(tf.bitwise.bitwise_and(draw[:, None] + _mix32(element)[None, :], _MASK32))
        return tf.reshape(flat, shape)

    def uniform(self, shape, minval=0.0, maxval=1.0):
        unit = tf.cast(tf.bitwise.right_shift(self._bits(shape), 8), tf.float32) * (1.0 / (1 << 24))
        return minval + unit * (maxval - minval)

    def normal(self, shape):
        # Box-Muller from two independent uniform draws; 1 - u keeps the logarithm finite.
        u1, u2 = 1.0 - self.uniform(shape), self.uniform(shape)
        return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * np.pi * u2)

    def integers(self, shape, low: int, high: int):
        """Integers in ``[low, high)``."""
        span = tf.cast(high, tf.int64) - tf.cast(low, tf.int64)
        return tf.cast(tf.cast(low, tf.int64) + tf.math.floormod(self._bits(shape), span), tf.int32)


# ------------------------------------------------------ devices and training

def device() -> dict[str, Any]:
    """The devices this backend computes on: ``{"description", "gpus", "names"}``."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"description": f"CPU ({cores} cores)", "gpus": 0, "names": []}
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # details are cosmetic; some platforms do not report them
            names.append(gpu.name)
    return {"description": f"GPU x{len(gpus)} ({', '.join(sorted(set(names)))})", "gpus": len(gpus), "names": names}


def backend_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__}


def distribution(gpus: int) -> tuple[str, Any]:
    """``(name, strategy)``: one device as it is, several GPUs mirrored."""
    if gpus <= 1:
        return "default (one device)", tf.distribute.get_strategy()
    return f"MirroredStrategy ({gpus} replicas)", tf.distribute.MirroredStrategy()


def mixed_precision_policy(gpus: int) -> str | None:
    """The Keras policy for ``--mixed-precision``: float16 on GPUs (with loss scaling); none on the CPU."""
    return "mixed_float16" if gpus else None


def pipeline(x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None):
    """A tf.data pipeline of (images, labels) batches (images only when ``y`` is ``None``).

    Reshuffled every epoch when ``shuffle_seed`` is set. Indices are shuffled
    and batched, then each batch is gathered from the arrays held once in
    host memory, so no shuffle buffer copies the images.
    """
    with tf.device("/cpu:0"):
        xs = tf.constant(x)
        ys = None if y is None else tf.constant(np.asarray(y, dtype=np.int32))
    ds = tf.data.Dataset.range(len(x))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)

    def images(i):
        return tf.gather(xs, i)

    def images_and_labels(i):
        return tf.gather(xs, i), tf.gather(ys, i)

    ds = ds.batch(batch_size).map(images if ys is None else images_and_labels,
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


class ScalarWriter:
    """Scalars for TensorBoard in one run folder (tags as given), with the scalar plugin's metadata."""

    def __init__(self, folder):
        from tensorflow.core.framework import summary_pb2

        self._meta = summary_pb2.SummaryMetadata()
        self._meta.plugin_data.plugin_name = "scalars"
        self._writer = tf.summary.create_file_writer(str(folder))

    def write(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            tf.summary.write(tag, tf.constant(float(value)), step=step, metadata=self._meta)

    def close(self) -> None:
        self._writer.close()


# ------------------------------------------------------ adversarial training

# TensorFlow reads variables by reference inside the compiled step: the shared stateful step serves as it is.
from robust.backend.common import adversarial_model, roll  # noqa: E402,F401
