"""An example robust plugin: a ready MNIST model on raw 0-255 pixels and a random-noise attack.

Importing this package does not import TensorFlow or train anything: robust
imports every registered plugin to list it, so the work happens when the
model factory is called.
"""

__version__ = "0.1.0"
