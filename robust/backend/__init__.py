"""The seam between ``robust`` and the Keras backend.

Attacks, losses, norms and training are written with ``keras.ops``. What
cannot be is here, behind the same names for every backend, as Keras does
with ``keras/src/backend/<name>/``: one module per backend, chosen once from
``keras.backend.backend()``.

Primitives every backend module provides:

* ``compile(fn, signature)``: ``fn`` as one compiled function, traced once per
  signature (a ``None`` batch axis serves every batch size);
* ``spec(shape, dtype)``: one entry of such a signature;
* ``value_and_grad(fn)``: per-example values, their input gradient and an aux
  output; the gradient is ``None`` when none exists (known while tracing);
* ``GRADIENT_ERRORS``: the exceptions raised for an operation without a gradient;
* ``Rng``: per-image random numbers keyed by ``(seed, image index)``, usable
  inside compiled code, so results do not depend on how images are batched;
* ``tensor``, ``to_numpy``: the host boundary;
* ``roll(x, shift, axis)``: ``keras.ops.roll`` with a shift computed in the kernel;
* ``device()``, ``backend_versions()``: what runs the work, for cards and reports;
* ``distribution()``, ``pipeline(...)``, ``ScalarWriter``: the training input
  pipeline, the device strategy and TensorBoard scalars;
* ``mixed_precision_policy(gpus)``: the Keras dtype policy ``--mixed-precision``
  trains in (``None`` where the device has none worth using);
* ``adversarial_model(model, perturb, beta)``: a model whose train step attacks
  each batch and updates the weights in one compiled step.

Modules: :mod:`robust.backend.tensorflow` (the default), :mod:`robust.backend.jax`,
:mod:`robust.backend.torch`;
:mod:`robust.backend.common` holds what the backends without ``tf.data``,
``tf.distribute`` and ``tf.summary`` share. Only the chosen module is imported,
so the JAX and PyTorch paths never import TensorFlow; nor does Keras for them
(see :func:`_keras_without_tensorflow`).

Backend-neutral pieces live here too: :func:`stateless` (run a model on given
weight values: every compiled kernel takes the model's state as an argument,
so one kernel serves every weight update), :func:`image_keys` and
:func:`versions`.
"""

from __future__ import annotations

import contextlib
import importlib
import platform
import sys
from typing import Sequence

from robust import BACKENDS, check_keras_backend
from robust.errors import RobustError

check_keras_backend()  # before Keras, which raises its own error (and a traceback) on an unknown name

import keras  # noqa: E402
import numpy as np  # noqa: E402

NAME = keras.backend.backend()

if NAME not in BACKENDS:
    raise RobustError(
        f"Keras is running on the {NAME!r} backend (KERAS_BACKEND or ~/.keras/keras.json), which robust does "
        f"not support. Supported backends: {', '.join(BACKENDS)}; set KERAS_BACKEND to one of them."
    )


def _keras_without_tensorflow() -> None:
    """Under JAX or PyTorch, let Keras see TensorFlow as not installed (unless something imported it already).

    Keras imports TensorFlow wherever it is installed, whatever the backend:
    ``keras.utils.set_random_seed`` to seed it, ``model.save`` to recognise its
    shape and dtype objects. That costs seconds and hundreds of MB, and fails
    where the installed TensorFlow is broken. Keras asks one lazy module
    whether TensorFlow is available; answering no makes it skip exactly what
    it skips on a machine without TensorFlow, where robust runs anyway (no
    TensorFlow object can reach Keras from robust on these backends). A Keras
    without that lazy module keeps its own behaviour.
    """
    if NAME == "tensorflow" or "tensorflow" in sys.modules:
        return
    try:
        from keras.src.utils.module_utils import tensorflow as lazy_tensorflow
    except ImportError:
        return
    if getattr(lazy_tensorflow, "module", None) is None:
        lazy_tensorflow._available = False


_keras_without_tensorflow()
_module = importlib.import_module(f"robust.backend.{NAME}")
GRADIENT_ERRORS = _module.GRADIENT_ERRORS
Rng = _module.Rng
ScalarWriter = _module.ScalarWriter
backend_versions = _module.backend_versions
compile = _module.compile
device = _module.device
distribution = _module.distribution
mixed_precision_policy = _module.mixed_precision_policy
pipeline = _module.pipeline
roll = _module.roll
spec = _module.spec
tensor = _module.tensor
to_numpy = _module.to_numpy
value_and_grad = _module.value_and_grad
adversarial_model = _module.adversarial_model


def image_keys(seed: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Random keys ``(seed, index)`` for images, shape ``(n, 2)`` int32: one independent stream per image."""
    indices = np.asarray(indices, dtype=np.int64)
    return np.stack([np.full(len(indices), int(seed) % (2**31 - 1)), indices % (2**31 - 1)], axis=1).astype(np.int32)


def model_state(variables) -> list:
    """The current values of ``variables`` (the argument every compiled kernel takes)."""
    return [v.value for v in variables]


@contextlib.contextmanager
def stateless(variables, values):
    """Inside this block, reading ``variables`` gives ``values`` (Keras's own stateless scope).

    Calling a model here runs it on the given weights, so a kernel that
    takes them as an argument never sees stale ones.
    """
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        yield


def versions() -> dict[str, str | None]:
    """Versions of robust, the Keras backend, Keras, numpy and Python (for cards and results)."""
    from robust import __version__

    return {"robust": __version__, "backend": NAME, **backend_versions(), "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
