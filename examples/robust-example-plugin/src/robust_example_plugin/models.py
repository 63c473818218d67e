"""A ready model for robust: a small MNIST ConvNet on raw 0-255 pixels, with its metadata.

The contract (robust's README, "Evaluating models we did not write"): the
factory takes no arguments and returns ``(model, metadata)``. The model maps
images ``(batch, 28, 28, 1)`` to logits and carries its own preprocessing (a
``Rescaling`` layer), as models are usually shipped; the metadata says what
robust cannot see in the weights: the pixel range, the class names and the
dataset.
"""

from __future__ import annotations

import functools

from robust.models import ModelPlugin

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_IMAGES = 3000
SEED = 0


def build_digits_cnn_255(seed: int = SEED):
    """The architecture: raw pixels -> Rescaling(1/255) -> two conv blocks -> logits."""
    import keras
    from keras import layers

    init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731  seeded, no global state
    image = keras.Input(shape=(28, 28, 1), name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="to_unit_range")(image)
    x = layers.Conv2D(16, 3, activation="relu", kernel_initializer=init(1), name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(32, 3, activation="relu", kernel_initializer=init(2), name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(10, kernel_initializer=init(3), name="logits")(x)
    return keras.Model(image, logits, name="digits_cnn_255")


@functools.cache
def digits_cnn_255():
    """Small MNIST ConvNet on raw 0-255 pixels (Rescaling inside), trained on 3,000 images at first use."""
    import keras
    import numpy as np

    from robust.data import load_dataset

    data = load_dataset("mnist", limit=TRAIN_IMAGES, seed=SEED)  # robust's loader: real MNIST or its shipped subset
    order = np.random.default_rng(SEED).permutation(len(data.y_train))
    x = data.x_train[order] * np.float32(255.0)  # this model takes raw pixels
    y = data.y_train[order]
    model = build_digits_cnn_255()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
    metadata = {
        "name": "digits_cnn_255",
        "value_range": (0, 255),
        "class_names": CLASS_NAMES,
        "dataset": "mnist",
        "description": f"MNIST ConvNet on raw 0-255 pixels, trained on {TRAIN_IMAGES} images",
    }
    return model, metadata


DIGITS_CNN_255 = ModelPlugin(name="digits_cnn_255", factory=digits_cnn_255)
