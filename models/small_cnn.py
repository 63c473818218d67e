"""The small MNIST ConvNets of the adversarial-robustness literature, so results compare with published numbers.

* :func:`cnn_wong`: the CPU-sized network of Wong, Rice, Kolter 2020, "Fast is
  better than free: revisiting adversarial training" (conv 16@4x4 stride 2,
  conv 32@4x4 stride 2, fc 100, output; 166,406 parameters on MNIST);
* :func:`cnn_madry`: the network of Madry, Makelov, Schmidt, Tsipras, Vladu
  2018, "Towards deep learning models resistant to adversarial attacks"
  (conv 32@5x5, pool, conv 64@5x5, pool, fc 1024, output; 3,274,634
  parameters on MNIST), the GPU-sized one.
"""

from __future__ import annotations

import keras
from keras import layers

from robust.models.registry import ModelSpec


def cnn_wong(input_shape=(28, 28, 1), num_classes=10):
    """Wong et al. 2020's MNIST network: conv 16@4x4/2, conv 32@4x4/2, fc 100, output, ReLU.

    The paper's convolutions pad one pixel on each side (28 -> 14 -> 7), which
    is Keras's ``"same"`` padding for a 4x4 kernel with stride 2 on even sizes.

    Args:
        input_shape: (H, W, C), H and W at least 4.
        num_classes: number of output logits.

    Returns:
        A ``keras.Model`` named ``cnn_wong`` that outputs logits.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(16, 4, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(32, 4, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(100, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="cnn_wong")


def cnn_madry(input_shape=(28, 28, 1), num_classes=10):
    """Madry et al. 2018's MNIST network: conv 32@5x5, pool 2, conv 64@5x5, pool 2, fc 1024, output, ReLU.

    Convolutions keep the size (``"same"`` padding, as in the authors' code), so
    28x28 becomes 7x7x64 before the dense layer.

    Args:
        input_shape: (H, W, C), H and W at least 4.
        num_classes: number of output logits.

    Returns:
        A ``keras.Model`` named ``cnn_madry`` that outputs logits.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="cnn_madry")


def _check(input_shape, num_classes):
    h, w, _ = input_shape
    if h < 4 or w < 4:
        return f"height and width must be at least 4 (two stride-2 stages), received {h}x{w}."
    return None


CNN_WONG = ModelSpec(
    name="cnn_wong",
    build=cnn_wong,
    description="Wong et al. 2020's CPU-sized robust-training CNN: conv 16@4x4/2, conv 32@4x4/2, fc 100, output",
    input_shapes="HxWxC with H, W >= 4, any C (MNIST: 166,406 parameters)",
    check_input=_check,
    kind="conv",
)

CNN_MADRY = ModelSpec(
    name="cnn_madry",
    build=cnn_madry,
    description="Madry et al. 2018's MNIST CNN: conv 32@5x5, pool, conv 64@5x5, pool, fc 1024, output",
    input_shapes="HxWxC with H, W >= 4, any C (MNIST: 3,274,634 parameters)",
    check_input=_check,
    kind="conv",
)
