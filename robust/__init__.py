"""robust: adversarial-robustness testing for Keras models.

The import namespace is ``robust``: ``robust.models`` (the model zoo),
``robust.attacks`` (FGSM, PGD, fooling images), ``robust.data`` (datasets),
``robust.summary``, ``robust.training`` and the click CLI in ``robust.cli``.
Importing this package does not import TensorFlow; submodules that need it do.
It runs on the Keras backend that ``KERAS_BACKEND`` names (see
:mod:`robust.backend`); a name Keras does not know fails here, with the list,
instead of deep inside ``import keras``.
"""

import os as _os

from robust.errors import RobustError

__version__ = "0.1.0"
__all__ = ["BACKENDS", "RobustError", "__version__"]

#: The Keras backends robust runs on, each with a module in :mod:`robust.backend`.
BACKENDS = ("tensorflow", "jax", "torch")


def _check_keras_backend() -> None:
    requested = _os.environ.get("KERAS_BACKEND")
    if requested is not None and requested not in BACKENDS:
        raise RobustError(
            f"KERAS_BACKEND={requested!r} is not a backend robust runs on. Supported backends: "
            f"{', '.join(BACKENDS)} (TensorFlow is the default); set KERAS_BACKEND to one of them or unset it."
        )


_check_keras_backend()
