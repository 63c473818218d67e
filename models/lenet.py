"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition")."""

from __future__ import annotations

import keras
from keras import layers

from robust.models.registry import ModelSpec, Option

#: Element-wise activations of keras.activations that LeNet-5's hidden layers may use.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "silu", "softplus", "softsign",
               "leaky_relu", "relu6", "mish", "hard_sigmoid", "hard_silu", "linear")


def lenet5(input_shape=(28, 28, 1), num_classes=10, *, activation="relu", pooling="max"):
    """LeNet-5 in the 1998 layout: C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output.

    28x28 inputs are zero-padded to 32x32 as in the paper. The paper used
    scaled tanh and trainable average pooling; ``activation="tanh",
    pooling="avg"`` is the closer variant, the default ReLU + max pooling
    trains faster to the same accuracy.

    Args:
        input_shape: (H, W, C), H and W at least 28.
        num_classes: number of output logits.
        activation: activation of the hidden layers.
        pooling: ``"max"`` or ``"avg"`` subsampling.

    Returns:
        A ``keras.Model`` named ``lenet5`` that outputs logits.
    """
    pool = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}[pooling]
    h, w, _ = input_shape
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if h < 32 or w < 32:
        ph, pw = max(0, 32 - h), max(0, 32 - w)
        x = layers.ZeroPadding2D(((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), name="pad")(x)
    x = layers.Conv2D(6, 5, activation=activation, name="c1")(x)
    x = pool(2, name="s2")(x)
    x = layers.Conv2D(16, 5, activation=activation, name="c3")(x)
    x = pool(2, name="s4")(x)
    x = layers.Conv2D(120, 5, activation=activation, name="c5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(84, activation=activation, name="f6")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="lenet5")


def _check(input_shape, num_classes):
    h, w, _ = input_shape
    if h < 28 or w < 28:
        return f"height and width must be at least 28 (three 5x5 convolutions and two 2x2 poolings), received {h}x{w}."
    return None


LENET5 = ModelSpec(
    name="lenet5",
    build=lenet5,
    description="LeNet-5 (LeCun et al. 1998): conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, output",
    input_shapes="HxWxC with H, W >= 28 (28x28 is padded to 32x32 as in the paper), any C",
    check_input=_check,
    options={"activation": Option("relu", "choice", choices=ACTIVATIONS, help="activation of the hidden layers"),
             "pooling": Option("max", "choice", choices=("max", "avg"), help="subsampling")},
    kind="conv",
)
