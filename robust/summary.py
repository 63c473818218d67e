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
from typing import Any, Callable, Sequence

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
    receptive_field: "ReceptiveField | None" = None

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
            "rows": [dict(dataclasses.asdict(r), output_shape=list(r.output_shape),
                          receptive_field=r.receptive_field.to_dict() if r.receptive_field else None)
                     for r in self.rows],
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


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """The input pixels one unit of a layer sees, per spatial axis (height, width).

    Unit ``(i, j)`` of the layer's output sees input rows ``start[0] + i * jump[0]``
    up to (excluding) that plus ``size[0]``, and likewise columns. ``start`` is
    negative where the field reaches into padding. A layer without spatial axes
    (after ``Flatten``, a ``Dense`` layer, global pooling) has ``spatial=False``:
    each unit sees the whole image.

    The recurrence (Araujo et al. 2019, "Computing receptive fields of
    convolutional neural networks"): a layer with kernel k, dilation d,
    stride s and top padding p maps ``(size, jump, start)`` to
    ``(size + (d(k - 1)) jump, jump s, start - p jump)``.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    image: tuple[int, int]
    spatial: bool = True

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` in input pixels of unit ``(i, j)``; may extend past the image."""
        top, left = self.start[0] + i * self.jump[0], self.start[1] + j * self.jump[1]
        return top, left, top + self.size[0], left + self.size[1]

    def clipped_box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """:meth:`box` cut to the image: the pixels that exist."""
        top, left, bottom, right = self.box(i, j)
        h, w = self.image
        return max(top, 0), max(left, 0), min(bottom, h), min(right, w)

    def describe(self) -> str:
        if not self.spatial:
            return "whole image"
        size = f"{self.size[0]}" if self.size[0] == self.size[1] else f"{self.size[0]}x{self.size[1]}"
        jump = f"{self.jump[0]}" if self.jump[0] == self.jump[1] else f"{self.jump[0]}x{self.jump[1]}"
        return f"{size} px, step {jump}"

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "jump": list(self.jump), "start": list(self.start),
                "image": list(self.image), "spatial": self.spatial}


_POINTWISE = ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "BatchNormalization",
              "LayerNormalization", "GroupNormalization", "UnitNormalization", "Rescaling", "Normalization",
              "Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity",
              "ActivityRegularization", "Dense", "EinsumDense", "InputLayer", "Masking")
_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")


def _padding_before(padding: str, n: int, k: int, s: int) -> int:
    """Rows (or columns) of zeros before the input, as TensorFlow pads ``"same"`` (the smaller half first)."""
    if padding != "same":
        return 0
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2


def _window(layer) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], str] | None:
    """(kernel, strides, dilation, padding) of a 2-D convolution or pooling layer, else None."""
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    if kernel is None or len(kernel) != 2 or getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if type(layer).__name__.endswith("Transpose"):
        return None
    strides = tuple(layer.strides or kernel)
    dilation = tuple(getattr(layer, "dilation_rate", (1, 1)))
    return tuple(kernel), strides, dilation, str(layer.padding).lower()


def layer_receptive_field(layer, inputs: list[ReceptiveField | None], in_shape, out_shape) -> ReceptiveField | None:
    """The receptive field of ``layer``'s output from those of its inputs; ``None`` when it cannot be known.

    Args:
        layer: a Keras layer.
        inputs: the receptive fields of the layer's input tensors.
        in_shape: the first input's shape without the batch axis.
        out_shape: the output's shape without the batch axis.
    """
    if not inputs or any(rf is None for rf in inputs):
        return None
    first = inputs[0]
    whole = ReceptiveField(first.image, (1, 1), (0, 0), first.image, spatial=False)
    if len(out_shape) < 3 or not all(rf.spatial for rf in inputs):
        return whole  # no spatial axes left (flatten, dense, global pooling): every unit sees everything
    kind = type(layer).__name__
    if kind in _MERGE:
        if len({rf.jump for rf in inputs}) != 1:
            return None
        start = tuple(min(rf.start[a] for rf in inputs) for a in (0, 1))
        end = tuple(max(rf.start[a] + rf.size[a] for rf in inputs) for a in (0, 1))
        return ReceptiveField(tuple(e - s for s, e in zip(start, end)), first.jump, start, first.image)
    if kind in ("ZeroPadding2D", "Cropping2D"):
        pads = getattr(layer, "padding", None) if kind == "ZeroPadding2D" else layer.cropping
        sign = -1 if kind == "ZeroPadding2D" else 1
        start = tuple(first.start[a] + sign * int(pads[a][0]) * first.jump[a] for a in (0, 1))
        return ReceptiveField(first.size, first.jump, start, first.image)
    window = _window(layer)
    if window is not None:
        (kernel, strides, dilation, padding) = window
        size, jump, start = [], [], []
        for a in (0, 1):
            k = dilation[a] * (kernel[a] - 1) + 1
            pad = _padding_before(padding, int(in_shape[a]), k, strides[a])
            size.append(first.size[a] + (k - 1) * first.jump[a])
            jump.append(first.jump[a] * strides[a])
            start.append(first.start[a] - pad * first.jump[a])
        return ReceptiveField(tuple(size), tuple(jump), tuple(start), first.image)
    if kind in _POINTWISE and tuple(in_shape[:2]) == tuple(out_shape[:2]):
        return first
    return None


def receptive_fields(model) -> dict[str, ReceptiveField | None]:
    """The receptive field of every layer of a model whose input is an image (H, W, C), by layer name.

    Nested functional and Sequential models are expanded, with names
    ``outer/inner`` as in :func:`summarize`. A layer after one whose effect
    on positions is unknown (resizing, upsampling, a subclassed block) maps
    to ``None``. A model whose input is not an image gets an empty dict.
    """
    if not _single_input(model) or len(model.inputs[0].shape) != 4:
        return {}
    h, w = (int(d) if d is not None else 0 for d in model.inputs[0].shape[1:3])
    identity = ReceptiveField((1, 1), (1, 1), (0, 0), (h, w))
    names: dict[str, ReceptiveField | None] = {}
    tensors = {id(model.inputs[0]): identity}
    names[model.inputs[0].name] = identity
    _walk_fields(model, tensors, names, prefix="")
    return names


def _walk_fields(model, tensors: dict, names: dict, prefix: str) -> None:
    """Fill ``tensors`` (id of a Keras tensor -> field) and ``names`` (layer name -> field) through ``model``."""
    import keras

    sequential = isinstance(model, keras.Sequential)
    previous = model.inputs[0]
    for layer in model.layers:
        nodes = [] if sequential else _layer_nodes(model, layer)
        ins = [previous] if sequential else (list(nodes[0].input_tensors) if nodes else [])
        outs = [layer.output] if sequential else (list(nodes[0].output_tensors) if nodes else [])
        if isinstance(layer, keras.layers.InputLayer):
            for t in outs:
                tensors.setdefault(id(t), tensors.get(id(model.inputs[0])))
            names[f"{prefix}{layer.name}"] = tensors.get(id(model.inputs[0]))
            continue
        fields = [tensors.get(id(t)) for t in ins]
        if _is_graph_model(layer) and layer.layers and len(layer.inputs) == 1:
            tensors[id(layer.inputs[0])] = fields[0] if fields else None
            _walk_fields(layer, tensors, names, prefix=f"{prefix}{layer.name}/")
            rf = tensors.get(id(layer.outputs[0])) if len(layer.outputs) == 1 else None
        else:
            in_shape = tuple(ins[0].shape[1:]) if ins else ()
            out_shape = tuple(outs[0].shape[1:]) if outs else ()
            rf = layer_receptive_field(layer, fields, in_shape, out_shape)
        for t in outs:
            tensors[id(t)] = rf
        names[f"{prefix}{layer.name}"] = rf
        if outs:
            previous = outs[0]


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
    fields = receptive_fields(model)
    rows = [dataclasses.replace(r, receptive_field=fields.get(r.name)) for r in _rows(model, prefix="")]
    trainable = sum(int(math.prod(v.shape)) for v in model.trainable_weights)
    return Summary(
        model_name=model.name,
        input_shape=tuple(int(d) for d in model.input_shape[1:]) if _single_input(model) else (),
        rows=tuple(rows),
        params=int(model.count_params()),
        trainable_params=trainable,
        bytes_per_value=int(bytes_per_value),
    )


def summarize_architecture(build: Callable[[], Any], *, bytes_per_value: int = FLOAT32_BYTES) -> Summary:
    """:func:`summarize` a model that ``build()`` creates, without allocating its weights.

    The counts need only shapes. Under a ``keras.StatelessScope`` that does
    not initialise variables, a layer's weights get their shapes but no
    values, so ``robust summary mlp --input-shape 100000,100000,3`` counts
    its 15 trillion parameters instead of running out of memory. The model
    is for counting only: it has no weights to run with.
    """
    import keras
    from keras.src.backend.common import global_state

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = build()
            return summarize(model, bytes_per_value=bytes_per_value)
    finally:
        # The deferred variables would otherwise be initialised (allocated) by the next scope that exits.
        global_state.set_global_attribute(key, before)


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
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:g}"


def _bytes(n: int) -> str:
    for dec, bin_, scale in (("TB", "TiB", 4), ("GB", "GiB", 3), ("MB", "MiB", 2), ("kB", "KiB", 1)):
        if n >= 1000**scale:
            return f"{n:,} bytes ({n / 1000**scale:,.1f} {dec}, {n / 1024**scale:,.1f} {bin_})"
    return f"{n:,} bytes"


def format_summary(summary: Summary) -> str:
    """The table as text: one line per layer, then the totals."""
    header = ("Layer (type)", "Output shape", "Activations", "Weights", "Biases", "Receptive field")
    body = [(f"{r.name} ({r.type})", "x".join(map(str, r.output_shape)) or "scalar",
             f"{r.activations:,}" + ("*" if r.activations == 0 and r.type != "InputLayer" else ""),
             f"{r.weights:,}", f"{r.biases:,}", r.receptive_field.describe() if r.receptive_field else "?")
            for r in summary.rows]
    total = ("Total", "", f"{summary.activations:,}", f"{summary.weights:,}", f"{summary.biases:,}", "")
    widths = [max(len(line[i]) for line in [header, total, *body]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(c.ljust(w) if i < 2 or i == 5 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths))).rstrip()

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
    if any(r.receptive_field for r in summary.rows):
        lines.append("Receptive field: input pixels one unit sees (height = width unless HxW), and the step between "
                     "neighbouring units; '?' where a layer's effect on positions is unknown.")
    return "\n".join(lines)
