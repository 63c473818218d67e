"""The JAX backend: ``jax.value_and_grad``, ``jax.jit`` over batch-size buckets, ``jax.random`` per image.

No TensorFlow is imported: the input pipeline, the one-device strategy and
the TensorBoard scalars come from :mod:`robust.backend.common`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust.backend.common import ArrayBatches, OneDevice, ScalarWriter  # noqa: F401

#: An operation without a differentiation rule raises this while tracing.
GRADIENT_ERRORS: tuple[type[Exception], ...] = (NotImplementedError,)


def value_and_grad(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any, Any]]:
    """Wrap ``fn(x, *args) -> (values, aux)`` into ``g(x, *args) -> (values, d sum(values)/dx, aux)``.

    ``values`` holds one number per example; as examples do not interact
    (the model runs in inference mode), the gradient of their sum is each
    example's own gradient. Unlike TensorFlow, JAX never reports a missing
    gradient: where ``values`` does not depend differentiably on ``x``
    (an argmax, a rounding) the gradient is zeros, which
    :func:`robust.gradients.check_gradients` refuses as "exactly zero".
    """

    def wrapped(x, *args):
        def total(xt):
            values, aux = fn(xt, *args)
            return jnp.sum(values), (values, aux)

        (_, (values, aux)), grad = jax.value_and_grad(total, has_aux=True)(x)
        return values, grad, aux

    return wrapped


@dataclasses.dataclass(frozen=True)
class Spec:
    """The shape (``None`` for the batch axis) and dtype of one argument of a compiled function."""

    shape: tuple
    dtype: str


def spec(shape, dtype="float32") -> Spec:
    """The signature entry of a compiled function's argument."""
    return Spec(tuple(shape), jnp.dtype(dtype).name)


class Compiled:
    """``jax.jit(fn)`` that serves every batch size from a few compiled ones.

    ``jax.jit`` compiles once per input shape. Arguments whose signature has
    a ``None`` batch axis are padded (by repeating their last row, so every
    padded row is a valid input) up to a bucket, and outputs whose first axis
    is the bucket are cut back. The bucket is the smallest size already
    compiled that holds the batch, else the batch size itself: the full
    batches compile once and the last, smaller batch reuses them. On CPU,
    XLA takes seconds to compile a LeNet-5 attack loop and a fraction of a
    second to run a padded batch, so padding wins over compiling a new size.
    Examples must not interact, as in every attack kernel.

    Attributes:
        sizes: the batch sizes compiled so far.
    """

    def __init__(self, fn: Callable, signature: list):
        self._jitted = jax.jit(fn)
        self._signature = signature
        self._batched = [i for i, s in enumerate(signature) if isinstance(s, Spec) and s.shape[:1] == (None,)]
        self.sizes: set[int] = set()

    def _bucket(self, n: int) -> int:
        fits = [s for s in self.sizes if s >= n]
        if fits:
            return min(fits)
        self.sizes.add(n)
        return n

    def __call__(self, *args):
        args = [jnp.asarray(a, s.dtype) if isinstance(s, Spec) else a for a, s in zip(args, self._signature)]
        if not self._batched:
            return self._jitted(*args)
        n = int(args[self._batched[0]].shape[0])
        size = self._bucket(n)
        if size == n:
            return self._jitted(*args)
        for i in self._batched:
            a = args[i]
            args[i] = jnp.pad(a, [(0, size - n)] + [(0, 0)] * (a.ndim - 1), mode="edge")
        out = self._jitted(*args)
        return jax.tree_util.tree_map(lambda o: o[:n] if o.ndim and o.shape[0] == size else o, out)


def compile(fn: Callable, signature: list) -> Compiled:
    """``fn`` as one ``jax.jit`` function; a ``None`` batch axis serves all batch sizes (see :class:`Compiled`)."""
    return Compiled(fn, signature)


def tensor(x, dtype="float32"):
    return jnp.asarray(x, dtype=jnp.dtype(dtype))


def to_numpy(x) -> np.ndarray:
    return np.asarray(x)


# ------------------------------------------------------------ random numbers

def _stream(seed_and_index):
    return jax.random.fold_in(jax.random.PRNGKey(seed_and_index[0]), seed_and_index[1])


class Rng:
    """Per-image random numbers inside compiled code: one ``jax.random`` key per image.

    ``keys`` is ``(batch, 2)`` int32, one ``(seed, image index)`` per image;
    image ``i``'s key is the index folded into the seed's key. Every draw
    and every :meth:`fold` derives new keys per image (``vmap``), so an image
    gets the same numbers at any batch size. The numbers differ from the
    TensorFlow backend's (a different generator), not their distribution.
    """

    def __init__(self, keys, _keys=None):
        self._keys = jax.vmap(_stream)(jnp.asarray(keys, jnp.uint32)) if _keys is None else _keys
        self._count = 0

    def fold(self, value) -> "Rng":
        """An independent stream for ``value`` (a restart index, a step)."""
        value = jnp.asarray(value, jnp.uint32)
        return Rng(None, jax.vmap(lambda k: jax.random.fold_in(jax.random.split(k)[0], value))(self._keys))

    def _draw_keys(self):
        self._count += 1
        count = self._count
        return jax.vmap(lambda k: jax.random.fold_in(jax.random.split(k)[1], count))(self._keys)

    def uniform(self, shape, minval=0.0, maxval=1.0):
        rest = tuple(int(d) for d in shape[1:])
        unit = jax.vmap(lambda k: jax.random.uniform(k, rest))(self._draw_keys())
        return minval + unit * (maxval - minval)

    def normal(self, shape):
        rest = tuple(int(d) for d in shape[1:])
        return jax.vmap(lambda k: jax.random.normal(k, rest))(self._draw_keys())

    def integers(self, shape, low: int, high: int):
        """Integers in ``[low, high)``."""
        rest = tuple(int(d) for d in shape[1:])
        return jax.vmap(lambda k: jax.random.randint(k, rest, low, high, dtype=jnp.int32))(self._draw_keys())


# ------------------------------------------------------ devices and training

def device() -> dict[str, Any]:
    """The devices this backend computes on: ``{"description", "gpus", "names"}``."""
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"description": f"CPU ({cores} cores)", "gpus": 0, "names": []}
    names = [getattr(d, "device_kind", str(d)) for d in gpus]
    return {"description": f"GPU x{len(gpus)} ({', '.join(sorted(set(names)))})", "gpus": len(gpus), "names": names}


def backend_versions() -> dict[str, str]:
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def distribution(gpus: int) -> tuple[str, Any]:
    """``(name, strategy)``: one device as it is, several GPUs data-parallel (Keras's ``DataParallel``)."""
    if gpus <= 1:
        return "default (one device)", OneDevice()
    import keras

    return f"DataParallel ({gpus} replicas)", keras.distribution.DataParallel()


def pipeline(x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None):
    """Batches of ``(images, labels)`` (images only when ``y`` is ``None``), reshuffled per epoch with a seed."""
    return ArrayBatches(x, y, batch_size, shuffle_seed=shuffle_seed)
