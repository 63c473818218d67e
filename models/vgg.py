"""VGG-11/13/16/19 (Simonyan and Zisserman 2015, "Very deep convolutional networks for large-scale image recognition")."""

from __future__ import annotations

import keras
from keras import layers

from robust.errors import RobustError
from robust.models.registry import ModelSpec, Option

# Filters per block; the number of 3x3 convolutions per block gives the depth
# (configurations A, B, D and E of the paper's Table 1).
_BLOCKS = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_FILTERS = (64, 128, 256, 512, 512)


def vgg(depth, input_shape=(32, 32, 3), num_classes=10, *, width=1.0, batch_norm=False, head="auto", dropout=0.5):
    """A VGG network of ``depth`` weight layers that outputs logits.

    Layer names follow ``keras.applications.VGG16`` (``block1_conv1`` ...
    ``fc1``, ``fc2``, ``predictions``), so at 224x224x3 with 1000 classes and
    width 1 the ``imagenet`` head has exactly the Keras parameter count
    (138,357,544 for VGG-16).

    Args:
        depth: 11, 13, 16 or 19.
        input_shape: (H, W, C), H and W at least 32 (five 2x2 poolings).
        num_classes: number of output logits.
        width: multiplier on the filter counts (0.25 gives 16..128 filters).
        batch_norm: add batch normalization after every convolution.
        head: ``"imagenet"`` (flatten, two 4096-unit layers scaled by width),
            ``"cifar"`` (flatten, one 512-unit layer scaled by width) or
            ``"auto"`` (imagenet for inputs of 224 and more, cifar otherwise).
        dropout: dropout rate in the head.
    """
    if head == "auto":
        head = "imagenet" if min(input_shape[:2]) >= 224 else "cifar"
    if head not in ("imagenet", "cifar"):
        raise RobustError(f"vgg{depth} head must be 'imagenet', 'cifar' or 'auto'; received head={head!r}.")
    if not float(width) > 0:
        raise RobustError(f"vgg{depth} width must be a positive multiplier; received width={width!r}.")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for b, (convs, filters) in enumerate(zip(_BLOCKS[depth], _FILTERS), start=1):
        for c in range(1, convs + 1):
            name = f"block{b}_conv{c}"
            n = max(1, int(round(filters * width)))
            if batch_norm:
                x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=name)(x)
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
                x = layers.Activation("relu", name=f"{name}_relu")(x)
            else:
                x = layers.Conv2D(n, 3, padding="same", activation="relu", name=name)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    units = (4096, 4096) if head == "imagenet" else (512,)
    for i, u in enumerate(units, start=1):
        x = layers.Dense(max(1, int(round(u * width))), activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"vgg{depth}")


def _check(input_shape, num_classes):
    h, w, _ = input_shape
    if h < 32 or w < 32:
        return (f"height and width must be at least 32 (five 2x2 poolings), received {h}x{w}; "
                "pad or resize the images, or use lenet5 / alexnet_small for 28x28 data.")
    return None


def _spec(depth):
    def build(input_shape, num_classes, **options):
        return vgg(depth, input_shape, num_classes, **options)

    build.__name__ = f"vgg{depth}"
    build.__doc__ = vgg.__doc__
    return ModelSpec(
        name=f"vgg{depth}",
        build=build,
        description=f"VGG-{depth} (Simonyan & Zisserman 2015); width multiplier, batch norm, CIFAR or ImageNet head",
        input_shapes="HxWxC with H, W >= 32: 32x32x3 CIFAR head, 224x224x3 ImageNet head",
        check_input=_check,
        options={
            "width": Option(1.0, "float", minimum=1 / 64, maximum=16, help="multiplier on the filter counts"),
            "batch_norm": Option(False, "bool", help="batch normalization after every convolution"),
            "head": Option("auto", "choice", choices=("auto", "cifar", "imagenet"), help="classifier head"),
            "dropout": Option(0.5, "float", minimum=0, maximum=1, below_maximum=True, help="dropout rate in the head"),
        },
        kind="conv",
    )


VGG11, VGG13, VGG16, VGG19 = (_spec(d) for d in (11, 13, 16, 19))
