"""The TensorFlow-specific part of the attacks, kept in one small module.

Everything else in :mod:`robust.attacks` and :mod:`robust.gradients` is
written with ``keras.ops``; what cannot be is here: the gradient tape, the
compiled function (``tf.function``, XLA), stateless random numbers drawn
from a seed tensor, and the cache of compiled functions per model. Running
the attacks on Keras's JAX backend means writing this module again with
``jax.value_and_grad``, ``jax.jit`` and ``jax.random``.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


#: Compile attack loops with XLA (``jit_compile=True``). Off by default: on CPU
#: XLA made one LeNet-5 gradient pass about 2.4x slower than TensorFlow's own
#: graph executor (``bench/bench_attacks.py --xla`` measures it again).
JIT_COMPILE: bool = False

FLOAT = tf.float32
INT = tf.int32


def value_and_grad(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any, Any]]:
    """Wrap ``fn(x, *args) -> (values, aux)`` into ``g(x, *args) -> (values, d sum(values)/dx, aux)``.

    ``values`` holds one number per example; as examples do not interact
    (the model runs in inference mode), the gradient of their sum is each
    example's own gradient. The gradient is ``None`` when ``values`` does
    not depend on ``x`` differentiably (see :func:`robust.gradients.check_gradients`).
    """

    def wrapped(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values, aux = fn(x, *args)
            total = tf.reduce_sum(values)
        return values, tape.gradient(total, x), aux

    return wrapped


def compile(fn: Callable, signature: list, *, jit_compile: bool | None = None) -> Callable:
    """``fn`` as one compiled graph (XLA unless ``JIT_COMPILE`` is off), traced once per signature.

    ``signature`` is a list of :func:`spec` with a ``None`` batch axis, so
    every batch size shares one trace.
    """
    jit = JIT_COMPILE if jit_compile is None else jit_compile
    compiled = tf.function(fn, input_signature=signature, jit_compile=jit)
    # Each (model, attack configuration) gets its own function from the same code, traced once;
    # TensorFlow counts those first traces together and would warn about "retracing".
    compiled._omit_frequent_tracing_warning = True
    return compiled


def spec(shape, dtype="float32") -> tf.TensorSpec:
    """The signature entry of a compiled function's argument."""
    return tf.TensorSpec(shape=shape, dtype=tf.as_dtype(dtype))


def tensor(x, dtype="float32"):
    return tf.convert_to_tensor(x, dtype=tf.as_dtype(dtype))


def to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


class Rng:
    """Stateless random numbers from a seed tensor of shape (2,), usable inside compiled code.

    Each draw folds a counter into the seed, so draws are independent and
    the whole sequence is fixed by the seed.
    """

    def __init__(self, seed):
        self._seed = tf.cast(seed, INT)
        self._count = 0

    def _next(self):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)

    def fold(self, value) -> "Rng":
        """An independent stream for ``value`` (a restart index, a step)."""
        return Rng(tf.random.experimental.stateless_fold_in(self._seed, tf.cast(value, INT)))

    def uniform(self, shape, minval=0.0, maxval=1.0):
        return tf.random.stateless_uniform(shape, self._next(), minval=minval, maxval=maxval, dtype=FLOAT)

    def normal(self, shape):
        return tf.random.stateless_normal(shape, self._next(), dtype=FLOAT)

    def integers(self, shape, low: int, high: int):
        """Integers in ``[low, high)``."""
        return tf.random.stateless_uniform(shape, self._next(), minval=low, maxval=high, dtype=INT)


# Compiled functions are cached per model, keyed by the attack's configuration.
# The model is a weak key, and the functions reach it only through a weak
# proxy, so dropping a model frees its compiled attacks.
_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def cached(model, key: tuple, build: Callable[[Any], Any]):
    """``build(model_proxy)`` once per ``(model, key)``; later calls return the same object."""
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build(weakref.proxy(model))
    return per_model[key]


def cache_size(model) -> int:
    """How many compiled functions are cached for ``model`` (for tests and benchmarks)."""
    return len(_CACHE.get(model, {}))
