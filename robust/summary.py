"""The architecture table of a Keras model: shapes, activations, weights, biases and memory per image.

This is the "reading CNN diagrams" table of the CS231n notes, computed
exactly for any model of the zoo or any saved model.

What is counted:

* **Activations** of a layer: the number of values it produces for one
  image (the product of its output shape without the batch axis). The
  **input image counts** (it must be held in memory and is where attack
  gradients end). Layers that only reshape their input or are the identity
  at inference (``Flatten``, ``Reshape``, ``Dropout`` and the other noise
  layers, ``Identity``) produce no new values and count 0; their output
  shape is still shown. Every other layer counts its output, so a separate
  ``BatchNormalization`` or ``Activation`` layer adds its own output, while a
  ReLU fused into ``Conv2D(activation="relu")`` does not.
* **Weights** and **biases** of a layer: biases are the ``bias`` vectors
  (and batch-norm ``beta``); weights are every other variable (kernels,
  batch-norm scale and moving statistics). Their sum over all layers is
  ``model.count_params()``.
* **Bytes forward per image** = activations x 4 (float32): the memory to
  keep every layer's output for one image. **Forward+backward** doubles it:
  back-propagation stores a gradient of the same size for each activation.
  Both are the textbook lower bound; frameworks add workspace and masks.
  Parameter memory (``params`` x 4 bytes) is per model, not per image.

VGG-16 at 224x224x3 with 1000 classes has 138,357,544 parameters (exactly
``keras.applications.VGG16``) and 15,237,608 activations per image (input
150,528 + 13 conv outputs 13,547,520 + 5 pool outputs 1,530,368 + FC outputs
9,192), 61.0 MB forward and 121.9 MB forward+backward in float32. The CS231n
table ("TOTAL memory: 24M * 4 bytes ~= 93MB / image") lists the same per-layer
numbers, but its rows add up to 15.2M, not 24M: the total is an arithmetic
slip (24M x 4 bytes would be 96 MB, 91.6 MiB, so even "93MB" does not follow
from it), repeated wherever the table is copied. Forward, one image needs
61.0 MB (58.1 MiB); with the gradients, 121.9 MB.

Example:

    >>> from robust.models import build_model
    >>> from robust.summary import summarize, format_summary
    >>> s = summarize(build_model("lenet5", (28, 28, 1), 10))
    >>> s.params, s.activations
    (61706, 9902)
    >>> print(format_summary(s))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from robust.errors import RobustError

FLOAT32_BYTES = 4


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One layer of the table. Shapes and counts are per image (no batch axis)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    activations: int
    weights: int
    biases: int

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclasses.dataclass(frozen=True)
class Summary:
    """The architecture table of one model and its totals."""

    model_name: str
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    params: int
    trainable_params: int
    bytes_per_value: int = FLOAT32_BYTES

    @property
    def activations(self) -> int:
        """Values produced per image by all layers, the input image included."""
        return sum(r.activations for r in self.rows)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def biases(self) -> int:
        return sum(r.biases for r in self.rows)

    @property
    def bytes_forward(self) -> int:
        """Bytes to hold every activation of one image."""
        return self.activations * self.bytes_per_value

    @property
    def bytes_forward_backward(self) -> int:
        """Bytes per image when training: each activation plus its gradient."""
        return 2 * self.bytes_forward

    @property
    def param_bytes(self) -> int:
        return self.params * self.bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form: ``model``, ``input_shape``, ``rows`` (one dict per layer) and ``totals``."""
        return {
            "model": self.model_name,
            "input_shape": list(self.input_shape),
            "rows": [dict(dataclasses.asdict(r), output_shape=list(r.output_shape)) for r in self.rows],
            "totals": {
                "params": self.params,
                "trainable_params": self.trainable_params,
                "weights": self.weights,
                "biases": self.biases,
                "activations": self.activations,
                "bytes_per_value": self.bytes_per_value,
                "bytes_forward": self.bytes_forward,
                "bytes_forward_backward": self.bytes_forward_backward,
                "param_bytes": self.param_bytes,
            },
        }


def _passthrough_types() -> tuple[type, ...]:
    from keras import layers

    names = ("Flatten", "Reshape", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
             "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity", "ActivityRegularization")
    return tuple(getattr(layers, n) for n in names if hasattr(layers, n))


def summarize(model, input_shape: Sequence[int] | None = None, *, bytes_per_value: int = FLOAT32_BYTES) -> Summary:
    """Per-layer output shapes, activations, weights and biases of a built Keras model.

    Args:
        model: a built Keras model (functional or sequential; nested models are expanded).
        input_shape: (H, W, C) to use when the model accepts images of any size
            (``None`` dimensions); otherwise it must match the model's input.
        bytes_per_value: bytes of one activation or parameter (4 for float32).

    Returns:
        A :class:`Summary`.

    Raises:
        RobustError: the model has undefined input dimensions and no ``input_shape``
            was given, or ``input_shape`` does not fit the model.
    """
    model = _with_input_shape(model, input_shape)
    rows = list(_rows(model, prefix=""))
    trainable = sum(int(math.prod(v.shape)) for v in model.trainable_weights)
    return Summary(
        model_name=model.name,
        input_shape=tuple(int(d) for d in model.input_shape[1:]) if _single_input(model) else (),
        rows=tuple(rows),
        params=int(model.count_params()),
        trainable_params=trainable,
        bytes_per_value=int(bytes_per_value),
    )


def _single_input(model) -> bool:
    return not isinstance(model.input_shape, list) and len(model.inputs) == 1


def _with_input_shape(model, input_shape):
    if not getattr(model, "built", False) or not getattr(model, "inputs", None):
        raise RobustError(f"Model {model.name!r} is not built (it has no input yet): build or call it on an "
                          "input first, or give it a keras.Input, before summarizing it.")
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    unknown = any(d is None for s in shapes for d in s)
    if input_shape is None:
        if unknown:
            exp = "x".join("?" if d is None else str(d) for d in shapes[0])
            raise RobustError(f"Model {model.name!r} takes images of any size ({exp}), so activation counts "
                              "need a concrete input shape: pass input_shape (--input-shape H,W,C).")
        return model
    from robust.models import check_model_input

    input_shape = tuple(int(d) for d in input_shape)
    if len(shapes) != 1:
        raise RobustError(f"Model {model.name!r} has {len(shapes)} inputs; input_shape applies to one-input models.")
    check_model_input(model, input_shape, data_name=f"--input-shape {'x'.join(map(str, input_shape))}")
    if not unknown:
        return model
    import keras

    # A copy of the graph on a fixed-size input; weights are shared, not copied.
    return keras.models.clone_model(model, input_tensors=keras.Input(shape=input_shape),
                                    clone_function=lambda layer: layer)


def _layer_nodes(model, layer) -> list:
    """The calls of ``layer`` that belong to ``model`` (a layer can be reused by other models)."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth:
        return [n for nodes in by_depth.values() for n in nodes if n.operation is layer]
    return list(getattr(layer, "_inbound_nodes", []))


def _rows(model, prefix: str):
    import keras

    passthrough = _passthrough_types()
    layers = list(model.layers)
    nested = bool(prefix)
    if not nested and not any(isinstance(layer, keras.layers.InputLayer) for layer in layers):
        # Sequential models keep their InputLayer out of .layers.
        for tensor in model.inputs:
            shape = _concrete(tensor.shape[1:], "input")
            yield LayerRow(tensor.name, "InputLayer", shape, math.prod(shape), 0, 0)
    for layer in layers:
        if isinstance(layer, keras.layers.InputLayer) and nested:
            continue  # a nested model's input is its caller's tensor, already counted
        if _is_graph_model(layer) and layer.layers:
            yield from _rows(layer, prefix=f"{prefix}{layer.name}/")
            continue
        name = f"{prefix}{layer.name}"
        shapes = [_concrete(t.shape[1:], name) for node in _layer_nodes(model, layer) for t in node.output_tensors]
        if not shapes:
            shapes = [_concrete(layer.output.shape[1:], name)]
        activations = 0 if isinstance(layer, passthrough) else sum(math.prod(s) for s in shapes)
        biases = sum(int(math.prod(v.shape)) for v in layer.weights if _is_bias(v))
        weights = sum(int(math.prod(v.shape)) for v in layer.weights) - biases
        yield LayerRow(name, type(layer).__name__, shapes[0], activations, weights, biases)


def _is_graph_model(layer) -> bool:
    """A functional or Sequential model nested as a layer: its layers have recorded outputs to read.

    A subclassed model has no graph to walk; it is counted as one row, like any layer.
    """
    import keras
    from keras.src.models.functional import Functional

    return isinstance(layer, (Functional, keras.Sequential))


def _is_bias(variable) -> bool:
    return variable.name.split("/")[-1] in ("bias", "beta")


def _concrete(shape, where: str) -> tuple[int, ...]:
    if any(d is None for d in shape):
        raise RobustError(f"Layer {where!r} has an output of undefined size {tuple(shape)}; pass a concrete "
                          "input shape (--input-shape H,W,C) to count its activations.")
    return tuple(int(d) for d in shape)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:g}"


def _bytes(n: int) -> str:
    for dec, bin_, scale in (("GB", "GiB", 3), ("MB", "MiB", 2), ("kB", "KiB", 1)):
        if n >= 1000**scale:
            return f"{n:,} bytes ({n / 1000**scale:,.1f} {dec}, {n / 1024**scale:,.1f} {bin_})"
    return f"{n:,} bytes"


def format_summary(summary: Summary) -> str:
    """The table as text: one line per layer, then the totals."""
    header = ("Layer (type)", "Output shape", "Activations", "Weights", "Biases")
    body = [(f"{r.name} ({r.type})", "x".join(map(str, r.output_shape)) or "scalar",
             f"{r.activations:,}" + ("*" if r.activations == 0 and r.type != "InputLayer" else ""),
             f"{r.weights:,}", f"{r.biases:,}") for r in summary.rows]
    total = ("Total", "", f"{summary.activations:,}", f"{summary.weights:,}", f"{summary.biases:,}")
    widths = [max(len(line[i]) for line in [header, total, *body]) for i in range(5)]

    def fmt(line):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    rule = "-" * len(fmt(header))
    shape = "x".join(map(str, summary.input_shape)) or "several inputs"
    bits = 8 * summary.bytes_per_value
    lines = [f"Model {summary.model_name!r} on {shape} images", rule, fmt(header), rule, *map(fmt, body), rule,
             fmt(total), "",
             f"Parameters:  {summary.params:,} ({_human(summary.params)}; {summary.trainable_params:,} trainable), "
             f"{_bytes(summary.param_bytes)} as float{bits}",
             f"Activations: {summary.activations:,} per image ({_human(summary.activations)}), input image included",
             f"Memory per image (float{bits}): forward {_bytes(summary.bytes_forward)}; "
             f"forward+backward {_bytes(summary.bytes_forward_backward)}"]
    if any(r.activations == 0 and r.type != "InputLayer" for r in summary.rows):
        lines.append("* reshapes or is the identity at inference: reuses its input's values, adds none.")
    return "\n".join(lines)
