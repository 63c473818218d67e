"""The JAX backend: ``jax.value_and_grad``, ``jax.jit`` over batch-size buckets, per-image random numbers.

No TensorFlow is imported: the input pipeline, the one-device strategy and
the TensorBoard scalars come from :mod:`robust.backend.common`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust.backend.common import AdversarialModel, ArrayBatches, OneDevice, ScalarWriter, Spec, roll  # noqa: F401

#: An operation without a differentiation rule raises this while tracing.
GRADIENT_ERRORS: tuple[type[Exception], ...] = (NotImplementedError,)


def _use_compilation_cache() -> str | None:
    """Keep XLA's compiled kernels on disk, so another process (or model object) of the same shapes reuses them.

    A kernel is cached per model object in memory; on CPU XLA takes 0.1-2 s to compile each, and a
    study compiles a hundred or more (every attack, check and batch bucket). JAX's persistent cache
    is keyed by the compiled program, not the weights, so a second ``robust`` command, or a second
    checkpoint of the same architecture, loads them instead. The folder is ``ROBUST_JAX_CACHE``, by
    default ``$XDG_CACHE_HOME/robust/jax`` (``~/.cache/robust/jax``); ``ROBUST_JAX_CACHE=off``
    turns it off, and a cache folder already given to JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.

    Returns:
        The folder in use, or ``None`` when off.
    """
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("ROBUST_JAX_CACHE")
    if folder is not None and folder.strip().lower() in ("", "0", "off", "no", "false", "none"):
        return None
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "robust", "jax")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # JAX's default (1 s) skips most of ours
    return folder


COMPILATION_CACHE = _use_compilation_cache()


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


def spec(shape, dtype="float32") -> Spec:
    """The signature entry of a compiled function's argument."""
    return Spec(tuple(shape), jnp.dtype(dtype).name)


class Compiled:
    """``jax.jit(fn)`` that serves every batch size from a few compiled ones.

    ``jax.jit`` compiles once per input shape. Arguments whose signature has
    a ``None`` batch axis are padded (by repeating their last row, so every
    padded row is a valid input) up to a bucket, and outputs whose first axis
    is the bucket are cut back. The bucket is the smallest size already
    compiled that holds the batch if it is at most twice the batch; else
    the batch size itself when nothing compiled holds it (the full batches
    compile once and the last, smaller batch reuses them), or the next power
    of two. On CPU, XLA takes seconds to compile a LeNet-5 attack loop, so
    padding a little wins over compiling every size; but PGD's compaction
    leaves batches of a few dozen images standing, and padding those to 256
    computed 16% more images than attacked in a PGD-40 run on 1,000 images
    (2% with the power-of-two buckets, at most log2(batch) extra compiles).
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
        if fits and min(fits) <= 2 * n:
            return min(fits)
        size = 1 << (n - 1).bit_length() if fits else n  # below 2n and below every compiled size that holds n
        self.sizes.add(size)
        return size

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

_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """The "lowbias32" integer finaliser on uint32 (multiplication wraps mod 2**32, as the hash needs)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class Rng:
    """Per-image random numbers inside compiled code: a counter-based hash of (key, draw, element).

    ``keys`` is ``(batch, 2)`` int32, one ``(seed, image index)`` per image.
    Row ``i`` of every draw depends only on ``keys[i]``, the draw's position
    and :meth:`fold` values, so an image gets the same numbers at any batch
    size. It is the TensorFlow and PyTorch backends' hash in uint32
    arithmetic, so every backend draws the same numbers: a random-start PGD
    gives the same images under each.
    """

    def __init__(self, keys, _streams=None):
        if _streams is None:
            keys = jnp.asarray(keys).astype(jnp.uint32)
            _streams = _mix32(_mix32(keys[:, 0]) + keys[:, 1] * jnp.uint32(0x9E3779B1))
        self._streams, self._count = _streams, 0

    def fold(self, value) -> "Rng":
        """An independent stream for ``value`` (a restart index, a step)."""
        value = jnp.asarray(value).astype(jnp.uint32)
        return Rng(None, _mix32(self._streams + _mix32(value + jnp.uint32(0x632BE5AB))))

    def _bits(self, shape):
        self._count += 1
        shape = tuple(int(d) for d in shape)
        per_image = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        element = jnp.arange(per_image, dtype=jnp.uint32)
        draw = _mix32(self._streams + jnp.uint32((self._count * 0x85EBCA77) & _MASK32))
        return _mix32(draw[:, None] + _mix32(element)[None, :]).reshape(shape)

    def uniform(self, shape, minval=0.0, maxval=1.0):
        unit = (self._bits(shape) >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
        return minval + unit * (maxval - minval)

    def normal(self, shape):
        # Box-Muller from two independent uniform draws; 1 - u keeps the logarithm finite.
        u1, u2 = 1.0 - self.uniform(shape), self.uniform(shape)
        return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * np.pi * u2)

    def integers(self, shape, low: int, high: int):
        """Integers in ``[low, high)``."""
        return int(low) + (self._bits(shape) % jnp.uint32(int(high) - int(low))).astype(jnp.int32)


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


def mixed_precision_policy(gpus: int) -> str | None:
    """The Keras policy for ``--mixed-precision``: bfloat16 on every device.

    XLA computes bfloat16 on CPUs and GPUs alike, and bfloat16 keeps float32's
    exponent range, so no loss scaling is needed (unlike float16).
    """
    return "mixed_bfloat16"


def pipeline(x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None):
    """Batches of ``(images, labels)`` (images only when ``y`` is ``None``), reshuffled per epoch with a seed."""
    return ArrayBatches(x, y, batch_size, shuffle_seed=shuffle_seed)


# ------------------------------------------------------ adversarial training

class StatelessAdversarialModel(AdversarialModel):
    """:class:`~robust.backend.common.AdversarialModel` for Keras's functional JAX train step.

    Keras jits ``train_step(state, data)`` with the weights, optimizer and
    metric variables as arguments, not as the variables' values. The attack
    runs first in a ``StatelessScope`` that maps each variable to its traced
    value, so it reads the weights of this step (and the optimizer's step
    count), all inside the one jitted step.
    """

    def train_step(self, state, data):
        import keras

        trainable, non_trainable, optimizer_values = state[0], state[1], state[2]
        mapping = [*zip(self.trainable_variables, trainable), *zip(self.non_trainable_variables, non_trainable),
                   *zip(self.optimizer.variables, optimizer_values)]
        x, y = data[0], data[1]
        with keras.StatelessScope(state_mapping=mapping):
            x_adv = self.adversarial_batch(x, y)
        with self.clean_batch(x):
            return keras.Model.train_step(self, state, (x_adv, y))


def adversarial_model(model, perturb: Callable, beta: float | None = None) -> StatelessAdversarialModel:
    """``model`` wrapped so that ``fit`` attacks each batch inside Keras's jitted train step.

    Args:
        model: the Keras classifier to train (its weights are the wrapper's weights, same order).
        perturb: ``perturb(x, y, step) -> x_adv`` written with ``keras.ops``.
        beta: ``None`` trains on the adversarial batch alone; a number on TRADES's loss.

    Returns:
        A ``keras.Model`` to compile and fit; ``model`` is what gets saved.
    """
    return StatelessAdversarialModel(model, perturb, beta)
