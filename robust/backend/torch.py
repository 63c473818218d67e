"""The PyTorch backend: autograd for input gradients, eager kernels, per-image random numbers from a hash.

Kernels run eagerly (Keras's own PyTorch backend does too): ``torch.compile``
is not used, because a kernel's loops (PGD's steps, the fooling images'
``while``) unroll in Python and recompile for every configuration, which
costs more than it saves for the few calls an evaluation makes. No
TensorFlow is imported: the input pipeline, the one-device strategy and the
TensorBoard scalars come from :mod:`robust.backend.common`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import keras
import numpy as np
import torch

from robust.backend.common import ArrayBatches, OneDevice, ScalarWriter, Spec  # noqa: F401
# The attack runs eagerly on the live parameters, then Keras's step: the shared stateful step serves as it is.
from robust.backend.common import adversarial_model  # noqa: F401

#: An operation without a derivative raises this when the gradient is taken.
GRADIENT_ERRORS: tuple[type[Exception], ...] = (NotImplementedError,)


def value_and_grad(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any, Any]]:
    """Wrap ``fn(x, *args) -> (values, aux)`` into ``g(x, *args) -> (values, d sum(values)/dx, aux)``.

    ``values`` holds one number per example; as examples do not interact
    (the model runs in inference mode), the gradient of their sum is each
    example's own gradient. The gradient is ``None`` when ``values`` does
    not depend on ``x`` differentiably (autograd records no path to it).
    """

    def wrapped(x, *args):
        with torch.enable_grad():
            xt = x.detach().requires_grad_(True)
            values, aux = fn(xt, *args)
            total = values.sum()
            grad = None
            if total.requires_grad:
                (grad,) = torch.autograd.grad(total, xt, allow_unused=True)
        detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return values.detach(), grad, (None if aux is None else torch.utils._pytree.tree_map(detach, aux))

    return wrapped


def spec(shape, dtype="float32") -> Spec:
    """The signature entry of a kernel's argument (PyTorch needs none; kept for the same calls)."""
    return Spec(tuple(shape), str(dtype))


def compile(fn: Callable, signature: list) -> Callable:
    """``fn`` run eagerly without recording gradients (``value_and_grad`` records its own)."""

    def run(*args):
        with torch.no_grad():
            return fn(*args)

    run.signature = signature
    return run


def tensor(x, dtype="float32"):
    return keras.ops.convert_to_tensor(np.asarray(x), dtype=dtype)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def roll(x, shift, axis):
    """``keras.ops.roll`` with a tensor ``shift``: Keras hands it to ``torch.roll``, which takes only ints."""
    if isinstance(shift, torch.Tensor):
        shift = tuple(int(v) for v in shift.reshape(-1).tolist())
    return torch.roll(keras.ops.convert_to_tensor(x), shift, dims=axis)


# ------------------------------------------------------------ random numbers

_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * (c & 0xFFFF)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    """A 32-bit integer finaliser (the "lowbias32" hash): every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Rng:
    """Per-image random numbers: a counter-based hash of (key, draw, element), as on TensorFlow.

    ``keys`` is ``(batch, 2)`` int32, one ``(seed, image index)`` per image.
    Row ``i`` of every draw depends only on ``keys[i]``, the draw's position
    and :meth:`fold` values, so an image gets the same numbers at any batch
    size. It is the TensorFlow backend's hash, so the integers drawn are the
    same there and here.
    """

    def __init__(self, keys, _streams=None):
        keys = torch.as_tensor(keys).to(torch.int64)
        if _streams is None:
            _streams = _mix32((_mix32(keys[:, 0]) + _mul32(keys[:, 1], 0x9E3779B1)) & _MASK32)
        self._keys, self._streams, self._count = keys, _streams, 0

    def fold(self, value) -> "Rng":
        """An independent stream for ``value`` (a restart index, a step)."""
        value = torch.as_tensor(value, device=self._streams.device).to(torch.int64)
        return Rng(self._keys, _mix32((self._streams + _mix32(value + 0x632BE5AB)) & _MASK32))

    def _bits(self, shape):
        self._count += 1
        shape = tuple(int(d) for d in shape)
        per_image = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        element = torch.arange(per_image, dtype=torch.int64, device=self._streams.device)
        draw = _mix32((self._streams + self._count * 0x85EBCA77) & _MASK32)
        return _mix32((draw[:, None] + _mix32(element)[None, :]) & _MASK32).reshape(shape)

    def uniform(self, shape, minval=0.0, maxval=1.0):
        unit = (self._bits(shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return minval + unit * (maxval - minval)

    def normal(self, shape):
        u1, u2 = 1.0 - self.uniform(shape), self.uniform(shape)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * np.pi * u2)

    def integers(self, shape, low: int, high: int):
        """Integers in ``[low, high)``."""
        return (int(low) + torch.remainder(self._bits(shape), int(high) - int(low))).to(torch.int32)


# ------------------------------------------------------ devices and training

def device() -> dict[str, Any]:
    """The devices this backend computes on: ``{"description", "gpus", "names"}``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"description": f"CPU ({cores} cores)", "gpus": 0, "names": []}
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return {"description": f"GPU x{count} ({', '.join(sorted(set(names)))})", "gpus": count, "names": names}


def backend_versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def distribution(gpus: int) -> tuple[str, Any]:
    """``(name, strategy)``: one device (Keras's PyTorch backend trains on one device per process)."""
    return "default (one device)", OneDevice()


def mixed_precision_policy(gpus: int) -> str | None:
    """The Keras policy for ``--mixed-precision``: float16 on GPUs (with loss scaling); none on the CPU."""
    return "mixed_float16" if gpus else None


def pipeline(x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None):
    """Batches of ``(images, labels)`` (images only when ``y`` is ``None``), reshuffled per epoch with a seed."""
    return ArrayBatches(x, y, batch_size, shuffle_seed=shuffle_seed)
