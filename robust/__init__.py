"""robust: adversarial-robustness testing for Keras models.

The import namespace is ``robust``: ``robust.models`` (the model zoo),
``robust.attacks`` (FGSM, PGD, fooling images), ``robust.data`` (datasets),
``robust.summary``, ``robust.training`` and the click CLI in ``robust.cli``.
Importing this package imports neither Keras nor TensorFlow; submodules that
need them do. It runs on the Keras backend that ``KERAS_BACKEND`` names (see
:mod:`robust.backend`): :func:`check_keras_backend` refuses any other name
with the list, before ``import keras`` would fail on it with a traceback
(``import robust.backend`` and every ``robust`` command call it first).
"""

import os as _os
import sys as _sys

from robust.errors import RobustError

__version__ = "0.1.0"
__all__ = ["BACKENDS", "RobustError", "__version__", "check_keras_backend"]

#: The Keras backends robust runs on, each with a module in :mod:`robust.backend`.
BACKENDS = ("tensorflow", "jax", "torch")


def check_keras_backend() -> None:
    """Refuse a ``KERAS_BACKEND`` robust does not run on, naming the supported ones.

    Raises:
        RobustError: ``KERAS_BACKEND`` is set to a name outside :data:`BACKENDS`
            (a typo, or a Keras backend robust has no module for, such as ``numpy``),
            or names a backend whose package is not installed.
    """
    requested = _os.environ.get("KERAS_BACKEND")
    if requested is not None and requested not in BACKENDS:
        raise RobustError(
            f"KERAS_BACKEND={requested!r} is not a backend robust runs on. Supported backends: "
            f"{', '.join(BACKENDS)} (TensorFlow is the default); set KERAS_BACKEND to one of them or unset it."
        )
    import importlib.util

    backend = requested or "tensorflow"
    package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    if importlib.util.find_spec(package) is None:
        install = {"tensorflow": 'pip install "tensorflow>=2.16"', "jax": 'pip install "robust[jax]"',
                   "torch": 'pip install "robust[torch]" (README: the CPU build first)'}[backend]
        raise RobustError(
            f"KERAS_BACKEND={backend!r} asks for Keras's {backend} backend, but the {package} package is not "
            f"installed in this Python ({_sys.executable}). Install it ({install}), or set KERAS_BACKEND to an "
            f"installed backend ({', '.join(b for b in BACKENDS if importlib.util.find_spec(b)) or 'none found'})."
        )
