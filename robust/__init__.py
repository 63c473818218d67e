"""robust: adversarial-robustness testing for Keras models.

The import namespace is ``robust``: ``robust.models`` (the model zoo),
``robust.attacks`` (FGSM, PGD, fooling images), ``robust.data`` (datasets),
``robust.summary``, ``robust.training`` and the click CLI in ``robust.cli``.
Importing this package does not import TensorFlow; submodules that need it do.
"""

from robust.errors import RobustError

__version__ = "0.1.0"
__all__ = ["RobustError", "__version__"]
