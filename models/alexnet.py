"""A small AlexNet-style ConvNet (Krizhevsky et al. 2012), sized for 28-32 pixel images."""

from __future__ import annotations

import keras
from keras import layers

from robust.models.registry import ModelSpec, Option


def alexnet_small(input_shape=(32, 32, 3), num_classes=10, *, width=64, dropout=0.5):
    """AlexNet-style CNN: two 5x5 conv + overlapping 3x3/2 max-pool blocks, then 384 and 192 dense units.

    The layout of the cuda-convnet CIFAR-10 model that AlexNet grew from,
    with AlexNet's ReLU, overlapping pooling and dropout.

    Args:
        input_shape: (H, W, C), H and W at least 16.
        num_classes: number of output logits.
        width: filters in each conv layer.
        dropout: dropout rate in the dense layers.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(width, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = layers.Conv2D(width, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(384, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    x = layers.Dense(192, activation="relu", name="fc2")(x)
    x = layers.Dropout(dropout, name="dropout2")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="alexnet_small")


def _check(input_shape, num_classes):
    h, w, _ = input_shape
    if h < 16 or w < 16:
        return f"height and width must be at least 16, received {h}x{w}."
    return None


ALEXNET_SMALL = ModelSpec(
    name="alexnet_small",
    build=alexnet_small,
    description="AlexNet-style small CNN: 2x (conv 5x5, max-pool 3x3/2), dense 384, 192, output",
    input_shapes="HxWxC with H, W >= 16, any C",
    check_input=_check,
    options={"width": Option(64, "int", minimum=1, maximum=4096, help="filters in each conv layer"),
             "dropout": Option(0.5, "float", minimum=0, maximum=1, below_maximum=True, help="dropout rate")},
    kind="conv",
)
