"""Fully connected baselines: the multilayer perceptron, optionally matched in size to a ConvNet."""

from __future__ import annotations

import math

import keras
from keras import layers

from robust.errors import RobustError
from robust.models.registry import ModelSpec, Option, build_model, check_buildable, count_params


def matched_width(target_params: int, input_size: int, num_classes: int, depth: int) -> int:
    """Hidden width w such that an MLP of ``depth`` hidden layers of w units has about ``target_params``.

    params(w) = (input_size + 1) w + (depth - 1)(w + 1) w + (w + 1) num_classes,
    a quadratic in w solved for the nearest integer.
    """
    a = depth - 1
    b = (input_size + 1) + (depth - 1) + num_classes
    c = num_classes - target_params
    w = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, round(w))


def mlp(input_shape=(28, 28, 1), num_classes=10, *, depth=2, width=512, dropout=0.2, match=None,
        match_options=None):
    """A multilayer perceptron: flatten, ``depth`` hidden ReLU layers of ``width`` units, logits.

    The default (two hidden layers of 512, three weight layers) is the classic
    3-layer fully connected network of the MNIST literature.

    Args:
        input_shape: (H, W, C) of the images; any shape is flattened.
        num_classes: number of output logits.
        depth: number of hidden layers (>= 1).
        width: units per hidden layer; ignored when ``match`` is given.
        dropout: dropout rate after each hidden layer (0 disables it).
        match: name of a zoo model whose parameter count the MLP should match
            (for a fair comparison in capacity); the width is solved for.
        match_options: options of that model (e.g. ``{"width": 0.25}`` for a slim VGG).

    Returns:
        A ``keras.Model`` named ``mlp`` (or ``mlp_match_<name>``) that outputs logits.
    """
    if int(depth) < 1:
        raise RobustError(f"mlp needs depth >= 1 hidden layer; received depth={depth}.")
    name = "mlp"
    if match:
        if match == "mlp":
            raise RobustError("mlp cannot be matched to itself; give --match the name of a ConvNet such as 'lenet5'.")
        target = count_params(build_model(match, input_shape, num_classes, **(match_options or {})))
        width = matched_width(target, math.prod(input_shape), num_classes, int(depth))
        name = f"mlp_match_{match}"
    if int(width) < 1:
        raise RobustError(f"mlp needs width >= 1; received width={width}.")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    for i in range(1, int(depth) + 1):
        x = layers.Dense(int(width), activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(float(dropout), name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _check_options(options: dict, input_shape, num_classes: int) -> None:
    """match names another zoo model (not mlp) that fits the data; width and match exclude each other."""
    match = options.get("match")
    if match is None:
        if options.get("match_options"):
            raise RobustError("Model 'mlp' option match_options applies only with match=MODEL; received "
                              f"match_options={options['match_options']!r} without match.")
        return
    if match == "mlp":
        raise RobustError("Model 'mlp' option match must name a ConvNet such as 'lenet5'; received match='mlp' "
                          "(an MLP cannot be matched to itself).")
    if "width" in options:
        raise RobustError(f"Model 'mlp' options width and match exclude each other: match={match!r} solves for "
                          f"the width; received width={options['width']!r} too. Pass one of them.")
    try:
        check_buildable(match, input_shape, num_classes, options.get("match_options"))
    except RobustError as exc:
        raise RobustError(f"Model 'mlp' option match={match!r}: {exc}") from None


MLP = ModelSpec(
    name="mlp",
    build=mlp,
    description="fully connected baseline: flatten, hidden ReLU layers, logits (match=MODEL matches a ConvNet's size)",
    input_shapes="any HxWxC (the image is flattened)",
    check_input=lambda input_shape, num_classes: None,
    options={
        "depth": Option(2, "int", minimum=1, maximum=64, help="hidden layers"),
        "width": Option(512, "int", minimum=1, maximum=65536, help="units per hidden layer"),
        "dropout": Option(0.2, "float", minimum=0, maximum=1, below_maximum=True,
                          help="dropout rate after each hidden layer"),
        "match": Option(None, "str", optional=True, help="a ConvNet of the zoo whose parameter count to match"),
        "match_options": Option(None, "table", optional=True, help="options of that ConvNet"),
    },
    check_options=_check_options,
    kind="fc",
)
