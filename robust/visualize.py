"""What a network learned: activation maximisation and top activating images, per unit of a layer.

* :class:`ActivationMaximization` (Erhan et al. 2009; Yosinski, Clune, Nguyen,
  Fuchs, Lipson 2015, "Understanding neural networks through deep
  visualization"): gradient ascent on the input, from small noise, that makes
  one unit fire, with Yosinski et al.'s regularisers (L2 decay, a Gaussian
  blur every few steps, jitter, clipping of pixels with a small norm or a
  small contribution). Every chosen unit, of one layer or of several, is one
  image of a batch ascended in one compiled loop: the same machinery as the
  attacks, the gradient of an activation with respect to the input.
* :func:`top_images` (Zeiler & Fergus 2014, "Visualizing and understanding
  convolutional networks"): over a set of images, the K that excite a unit
  most, each cropped to the unit's receptive field around its strongest
  position (the field is computed analytically by
  :func:`robust.summary.receptive_fields`).
* :func:`locality`: how much of a first-layer unit's input-gradient mass lies
  inside its most active small window (a ConvNet's units are local by
  construction; a fully connected unit may spread over the whole image).
* :func:`report_arrays`: the arrays the study saves for the report's "What
  the network learned" section.

A unit's *activation* is the value of one channel of the layer's output: at
the centre position (or the spatial mean) for a convolutional layer, the unit
itself for a dense one. For a ``Conv2D`` or ``Dense`` layer with a built-in
activation the ascent climbs the net input before that activation (monotone
activations have the same maximiser, and a ReLU that is off at the start
would give no gradient); top images are ranked by the layer's output itself,
after its activation, as Zeiler & Fergus ranked feature-map activations.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from robust.errors import MAX_COUNT, RobustError

OBJECTIVES = ("center", "mean")


# ------------------------------------------------------------------ layers

def _graph_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _is_conv(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Conv2D) or type(layer).__name__ in ("DepthwiseConv2D", "SeparableConv2D")


def _is_dense(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense)


def get_layer(model, name: str):
    """The layer called ``name``, or a RobustError listing the model's layers."""
    for layer in _graph_layers(model):
        if layer.name == name:
            return layer
    names = ", ".join(layer.name for layer in _graph_layers(model))
    raise RobustError(f"Model {model.name!r} has no layer named {name!r}. Its layers: {names}. Pass names from "
                      "this list (--layers c1,c3), or 'conv' or 'all'.")


def default_layers(model) -> list[str]:
    """Every convolution layer; for a model without any, its hidden dense layers (all but the output layer)."""
    layers = _graph_layers(model)
    conv = [layer.name for layer in layers if _is_conv(layer)]
    if conv:
        return conv
    dense = [layer.name for layer in layers if _is_dense(layer)]
    return dense[:-1] if len(dense) > 1 else dense


def choose_layers(model, which: str | Sequence[str] | None = None) -> list[str]:
    """Layer names from ``None`` (:func:`default_layers`), ``"conv"``, ``"all"`` or a list / comma-separated names.

    ``"all"`` is every layer that computes something: convolutions, pooling,
    dense, normalisation and activation layers, not inputs nor layers that
    only reshape or drop out.
    """
    from robust.summary import _passthrough_types

    if which is None:
        chosen = default_layers(model)
    elif isinstance(which, str) and which.strip().lower() == "conv":
        chosen = [layer.name for layer in _graph_layers(model) if _is_conv(layer)]
        if not chosen:
            raise RobustError(f"Model {model.name!r} has no convolution layer, so --layers conv selects nothing. "
                              f"Its layers: {', '.join(layer.name for layer in _graph_layers(model))}.")
    elif isinstance(which, str) and which.strip().lower() == "all":
        chosen = [layer.name for layer in _graph_layers(model) if not isinstance(layer, _passthrough_types())]
    else:
        names = [n.strip() for n in (which.split(",") if isinstance(which, str) else which) if n.strip()]
        if not names:
            raise RobustError(f"Expected layer names, 'conv' or 'all'; received {which!r}.")
        chosen = [get_layer(model, n).name for n in names]
    if not chosen:
        raise RobustError(f"Model {model.name!r} has no layer to visualise.")
    return list(dict.fromkeys(chosen))


def _num_units(layer) -> int:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError) as exc:
        raise RobustError(f"Layer {layer.name!r} has no single output tensor in a model graph ({exc}); only "
                          "layers of a functional or Sequential model, called once, can be visualised.") from None
    return int(shape[-1]) if len(shape) >= 2 and shape[-1] is not None else 1


def _preactivation(model, layer):
    """``(tensor, fn)``: what to read from the graph, and how to turn it into the unit values (pre-activation)."""
    import keras
    from keras import ops

    activation = getattr(layer, "activation", None)
    linear = activation is None or getattr(activation, "__name__", "") == "linear"
    if linear or not (isinstance(layer, keras.layers.Conv2D) and getattr(layer, "groups", 1) == 1
                      or isinstance(layer, keras.layers.Dense)) or type(layer).__name__.endswith("Transpose"):
        return layer.output, lambda t: t
    if isinstance(layer, keras.layers.Dense):
        def dense(t):
            z = ops.matmul(t, layer.kernel)
            return z + layer.bias if layer.bias is not None else z
        return layer.input, dense

    def conv(t):
        z = layer.convolution_op(t, layer.kernel)
        return z + layer.bias if layer.bias is not None else z
    return layer.input, conv


def _check_layer_in_graph(model, layer) -> None:
    try:
        layer.output  # noqa: B018  a layer called more than once, or never, has no single output
    except (AttributeError, ValueError) as exc:
        raise RobustError(f"Layer {layer.name!r} of model {model.name!r} has no single output tensor ({exc}); "
                          "only layers called once in the model's graph can be visualised.") from None


def unit_values(model, layer_names: Sequence[str], *, preactivation: bool = True):
    """``fn(x) -> [values per layer]`` in ``keras.ops``: each layer's output (or net input), one feature extractor.

    Args:
        model: a functional or Sequential Keras model.
        layer_names: the layers to read.
        preactivation: read a ``Conv2D`` / ``Dense`` layer's net input before its built-in activation.

    Returns:
        A function of an image batch returning a list of float32 tensors, (B, h, w, C) or (B, C).
    """
    import keras
    from keras import ops

    tensors, maps = [], []
    for name in layer_names:
        layer = get_layer(model, name)
        _check_layer_in_graph(model, layer)
        tensor, fn = _preactivation(model, layer) if preactivation else (layer.output, lambda t: t)
        tensors.append(tensor)
        maps.append(fn)
    extractor = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, tensors)

    def values(x):
        outs = extractor(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [ops.cast(fn(t), "float32") for fn, t in zip(maps, outs)]

    return values


def _pick(values, units: np.ndarray, objective: str):
    """(B,) the unit ``units[b]`` of image b: at the centre position or averaged over positions."""
    from keras import ops

    shape = values.shape
    if len(shape) > 2:
        if objective == "mean":
            values = ops.mean(values, axis=tuple(range(1, len(shape) - 1)))
        else:
            centre = tuple(int(d) // 2 for d in shape[1:-1])
            values = values[(slice(None), *centre)]
    return ops.take_along_axis(values, ops.convert_to_tensor(units[:, None].astype("int32")), axis=1)[:, 0]


def target_values(model, targets: Sequence[tuple[str, int]], objective: str = "center"):
    """``fn(x) -> (B,)``: image b's value of unit ``targets[b] = (layer, unit)``; B must equal ``len(targets)``."""
    from keras import ops

    names = list(dict.fromkeys(name for name, _ in targets))
    values = unit_values(model, names)
    layer_of = np.array([names.index(name) for name, _ in targets])
    units = np.array([int(u) for _, u in targets], np.int64)

    def fn(x):
        total = 0.0
        for i, v in enumerate(values(x)):
            mine = layer_of == i
            picked = _pick(v, np.where(mine, np.minimum(units, int(v.shape[-1]) - 1), 0), objective)
            total = total + ops.where(ops.convert_to_tensor(mine), picked, 0.0)
        return total

    return fn


def check_targets(model, targets: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """``(layer name, unit index)`` pairs checked against the model: known layers, units in range."""
    out = []
    for name, unit in targets:
        layer = get_layer(model, name)
        n = _num_units(layer)
        if not (isinstance(unit, (int, np.integer)) and 0 <= int(unit) < n):
            raise RobustError(f"Layer {name!r} has {n} units (indices 0..{n - 1}); received unit {unit!r}.")
        out.append((layer.name, int(unit)))
    if not out:
        raise RobustError("Expected at least one (layer, unit) to visualise; received none.")
    return out


# ------------------------------------------------------- activation maximisation

@dataclasses.dataclass
class Maximization:
    """Images grown to excite one unit each.

    Attributes:
        targets: ``(layer, unit)`` per image.
        images: (n, H, W, C) float32 in the value range.
        start: (n,) the unit's activation on its starting noise.
        value: (n,) the unit's activation on the final image.
        params: the hyper-parameters used.
        seconds: wall-clock time of the call.
    """

    targets: list[tuple[str, int]]
    images: np.ndarray
    start: np.ndarray
    value: np.ndarray
    params: dict
    seconds: float


def _check(name: str, value, *, minimum: float = 0.0, below: float | None = None, integer: bool = False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value)) and float(value) >= minimum and (below is None or float(value) < below)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and integer and value > MAX_COUNT:
        raise RobustError(f"{name} must be at most {MAX_COUNT:,}; received {value!r}.")
    if not ok:
        what = "an integer" if integer else "a number"
        rng = f">= {minimum:g}" + (f" and < {below:g}" if below is not None else "")
        raise RobustError(f"{name} must be {what} {rng}; received {value!r}.")
    return int(value) if integer else float(value)


def unit_gains(start, value) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: how many times the grown image excites it over the starting noise, and whether it is dead.

    The ratio means something only where the starting activation is clearly positive; near zero or
    below it (x16434993152 from a start of 1e-10) it is NaN, and :func:`gain_label` gives both values
    instead. A unit is *dead* when the ascent could not make it fire: its final activation is at most 0
    (a ReLU unit whose input never gets positive) or unchanged from the start (a zero gradient). Its
    grown image is noise and says nothing about what it detects.

    Returns:
        ``(gains, dead)``: float64 ratios (NaN where undefined) and a boolean mask, one per unit.
    """
    start, value = np.asarray(start, np.float64), np.asarray(value, np.float64)
    dead = (value <= 0) | (np.abs(value - start) <= 1e-6 * np.maximum(1.0, np.abs(start)))
    defined = ~dead & (start > 1e-6) & (start >= 1e-3 * np.abs(value))
    return np.where(defined, value / np.where(defined, start, 1.0), np.nan), dead


def gain_label(start: float, value: float, gain: float, dead: bool) -> str:
    """A unit's gain as a figure shows it: ``x12``, ``0 -> 3.1`` (no meaningful ratio) or ``dead``."""
    if dead:
        return "dead"
    return f"{start:.2g} -> {value:.2g}" if math.isnan(gain) else f"x{gain:.0f}"


class ActivationMaximization:
    """Grow an image that makes one unit fire (Yosinski et al. 2015), for many units at once.

    From small noise just above the low end of the value range (the image's
    *base*: black for [0, 1] images), each step takes the
    input gradient of the unit's activation (normalised to unit RMS per
    image), moves ``step_size`` along it, shrinks the image towards the base
    (L2 decay) and clips it to the value range. Jitter shifts the image by a
    random few pixels before every gradient, so the picture cannot rely on
    exact pixel positions. Every ``blur_every`` steps the image is blurred with
    a Gaussian, and pixels whose norm (distance from the base, over
    channels) or whose contribution (|(x - base) . gradient|) is in the lowest
    ``norm_pct`` / ``contribution_pct`` fraction are reset to the base.

    Args:
        steps: gradient steps.
        step_size: pixel change per step at unit gradient RMS; ``None`` is 2% of the value range.
        l2_decay: fraction by which the image shrinks towards the base each step.
        blur_every: blur every this many steps (0 = never).
        blur_sigma: standard deviation of that blur, in pixels.
        jitter: random shift of up to this many pixels per step (0 = none); capped at a quarter of the
            smallest receptive field among the targets (:meth:`jitter_for`).
        norm_pct: fraction of pixels with the smallest norm reset every ``blur_every`` steps.
        contribution_pct: fraction of pixels with the smallest contribution reset likewise.
        noise: the starting noise is uniform in [low, low + noise * (high - low)].
        objective: ``"center"`` (the unit at the centre position) or ``"mean"`` (averaged over positions).
        seed: seed of the noise and the jitter.

    Example:
        >>> result = ActivationMaximization(steps=200)(model, [("c3", u) for u in range(16)])
        >>> result.value / result.start
    """

    def __init__(self, *, steps: int = 200, step_size: float | None = None, l2_decay: float = 0.01,
                 blur_every: int = 4, blur_sigma: float = 0.5, jitter: int = 1, norm_pct: float = 0.1,
                 contribution_pct: float = 0.1, noise: float = 0.01, objective: str = "center", seed: int = 0):
        self.steps = _check("steps", steps, minimum=1, integer=True)
        self.step_size = None if step_size is None else _check("step_size", step_size, minimum=1e-12)
        self.l2_decay = _check("l2_decay", l2_decay, below=1.0)
        self.blur_every = _check("blur_every", blur_every, integer=True)
        self.blur_sigma = _check("blur_sigma", blur_sigma, minimum=1e-6)
        self.jitter = _check("jitter", jitter, integer=True)
        self.norm_pct = _check("norm_pct", norm_pct, below=1.0)
        self.contribution_pct = _check("contribution_pct", contribution_pct, below=1.0)
        self.noise = _check("noise", noise)
        if objective not in OBJECTIVES:
            raise RobustError(f"objective must be one of {', '.join(OBJECTIVES)}; received {objective!r}.")
        self.objective = objective
        self.seed = _check("seed", seed, integer=True)

    @property
    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("steps", "step_size", "l2_decay", "blur_every", "blur_sigma", "jitter",
                                              "norm_pct", "contribution_pct", "noise", "objective", "seed")}

    def __repr__(self) -> str:
        return f"ActivationMaximization({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def _regularise(self, x, grad, base, kernel):
        """Blur, then reset the pixels of smallest norm and smallest contribution to ``base``."""
        from keras import ops

        if kernel is not None:
            x = base + ops.depthwise_conv(x - base, kernel, strides=1, padding="same")
        flat_hw = int(np.prod(x.shape[1:3]))
        for pct, score in ((self.norm_pct, lambda d: ops.sqrt(ops.sum(d * d, axis=-1))),
                           (self.contribution_pct, lambda d: ops.abs(ops.sum(d * grad, axis=-1)))):
            k = int(pct * flat_hw)
            if k < 1:
                continue
            s = score(x - base)                                       # (B, H, W)
            threshold = -ops.top_k(-ops.reshape(s, (-1, flat_hw)), k, sorted=True)[0][:, k - 1]  # k-th smallest
            keep = ops.expand_dims(s > ops.reshape(threshold, (-1, 1, 1)), -1)
            x = ops.where(keep, x, base)
        return x

    def _compiled(self, fn, image_shape: tuple[int, ...], jitter: int):
        """One compiled loop: ``run(x0, shifts, step_size, low, high) -> (x, start value, final value)``.

        ``shifts`` (steps, 2) are the jitter offsets, drawn by the caller.
        """
        from keras import ops

        from robust import backend
        from robust.attacks.fooling import gaussian_kernel

        every, steps = self.blur_every, self.steps
        spatial = len(image_shape) == 3
        kernel = gaussian_kernel(self.blur_sigma, image_shape[-1]) if every and spatial else None
        value_and_grad = backend.value_and_grad(lambda x: (fn(x), None))
        decay = 1.0 - self.l2_decay

        def run(x0, shifts, step_size, low, high):
            base = low  # the background the image decays to and clipped pixels return to
            if jitter and spatial:
                # Each step rolls by the change from the previous shift, so the image stays in its
                # shifted frame and is rolled back once at the end.
                moves = shifts - ops.concatenate([ops.zeros((1, 2), "int32"), shifts[:-1]], axis=0)

            def body(i, x):
                if jitter and spatial:
                    x = backend.roll(x, moves[i], axis=(1, 2))
                _, grad, _ = value_and_grad(x)
                rms = ops.sqrt(ops.mean(grad * grad, axis=tuple(range(1, len(image_shape) + 1)), keepdims=True))
                x = base + (x - base) * decay + grad * (step_size * decay / (rms + 1e-12))
                if spatial and every and (kernel is not None or self.norm_pct or self.contribution_pct):
                    x = ops.cond(ops.equal((i + 1) % every, 0),
                                 lambda: self._regularise(x, grad, base, kernel), lambda: x)
                return ops.clip(x, low, high)

            x = ops.fori_loop(0, steps, body, x0)
            if jitter and spatial:
                x = backend.roll(x, -shifts[-1], axis=(1, 2))
            return x, fn(x0), fn(x)

        scalar = backend.spec(())
        signature = [backend.spec((None,) + tuple(image_shape)), backend.spec((steps, 2), "int32"), scalar, scalar,
                     scalar]
        return backend.compile(run, signature)

    def jitter_for(self, model, layer_names: Sequence[str]) -> int:
        """The jitter used: at most a quarter of the smallest receptive field among the layers.

        A shift as large as a small field (a 3x3 first layer) moves the
        pattern off the unit, and the ascent climbs a blur of all shifts instead.
        """
        from robust.summary import receptive_fields

        fields = receptive_fields(model)
        sizes = [min(fields[n].size) for n in layer_names if fields.get(n) is not None and fields[n].spatial]
        return min([self.jitter] + [(size - 1) // 4 for size in sizes])

    def prepare(self, model, targets: Sequence[tuple[str, int]], *,
                value_range: Sequence[float] = (0.0, 1.0)) -> Callable[[], Maximization]:
        """Check the inputs and build the compiled loop; calling the result runs it (the first call traces it).

        :meth:`__call__` is ``prepare(...)()``; benchmarks call the result more than once.
        """
        from robust import backend
        from robust.gradients import check_value_range

        low, high = check_value_range(value_range)
        targets = check_targets(model, targets)
        image_shape = _image_shape(model)
        jitter = self.jitter_for(model, [name for name, _ in targets])
        run = self._compiled(target_values(model, targets, self.objective), image_shape, jitter)
        rng = np.random.default_rng(self.seed)
        x0 = (low + self.noise * (high - low) * rng.uniform(size=(len(targets),) + image_shape)).astype(np.float32)
        step_size = self.step_size if self.step_size is not None else 0.02 * (high - low)
        shifts = rng.integers(-jitter, jitter + 1, size=(self.steps, 2))
        args = (backend.tensor(x0), backend.tensor(shifts, "int32"),
                backend.tensor(step_size), backend.tensor(low), backend.tensor(high))

        def go() -> Maximization:
            started = time.perf_counter()
            x, start, value = run(*args)
            return Maximization(targets=targets, images=backend.to_numpy(x), start=backend.to_numpy(start),
                                value=backend.to_numpy(value), params=dict(self.params, jitter_used=jitter),
                                seconds=time.perf_counter() - started)

        return go

    def __call__(self, model, targets: Sequence[tuple[str, int]], *,
                 value_range: Sequence[float] = (0.0, 1.0)) -> Maximization:
        """Grow one image per ``(layer name, unit index)`` target, all in one batch.

        Args:
            model: a functional or Sequential Keras model taking images in ``value_range``.
            targets: the units, from one layer or several.
            value_range: (low, high) of valid pixel values.

        Returns:
            A :class:`Maximization`.
        """
        started = time.perf_counter()
        result = self.prepare(model, targets, value_range=value_range)()
        result.seconds = time.perf_counter() - started
        return result


def _image_shape(model) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise RobustError(f"Model {model.name!r} has {len(model.inputs)} inputs; visualisation needs one image input.")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise RobustError(f"Model {model.name!r} takes inputs of any size {shape}; visualisation needs a fixed "
                          "image size (rebuild it on keras.Input(shape=(H, W, C))).")
    return tuple(int(d) for d in shape)


# ------------------------------------------------------- top activating images

@dataclasses.dataclass
class TopImages:
    """The K images of a set that excite each unit of one layer most (Zeiler & Fergus 2014).

    Attributes:
        layer: the layer's name.
        units: (U,) unit indices.
        index: (U, K) indices into the images, most exciting first (ties: lower index first).
        value: (U, K) the unit's activation: its maximum over positions in that image.
        position: (U, K, 2) the output position (row, column) of that maximum; (0, 0) for a non-spatial layer.
        box: (U, K, 4) the unit's receptive field there, (top, left, bottom, right) in input pixels,
            end-exclusive; it may extend past the image (padding).
        crops: (U, K, h, w, C) the input pixels inside the field, NaN where it lies outside the image;
            (h, w) is the field's size, or the image's where the field is larger than the image (a
            non-spatial layer shows whole images). ``None`` when crops were not asked for.
        receptive_field: the layer's :class:`robust.summary.ReceptiveField` (``None`` if unknown).
    """

    layer: str
    units: np.ndarray
    index: np.ndarray
    value: np.ndarray
    position: np.ndarray
    box: np.ndarray
    crops: np.ndarray | None
    receptive_field: Any


def _max_fn(model, layer_names: Sequence[str], units: dict[str, np.ndarray]):
    """Compiled ``x -> [(B, U) max over positions, (B, U) flat argmax position] per layer`` of the layer outputs."""
    from keras import ops

    from robust import backend

    values = unit_values(model, layer_names, preactivation=False)

    def run(x):
        out = []
        for name, v in zip(layer_names, values(x)):
            picked = ops.take(v, ops.convert_to_tensor(units[name].astype("int32")), axis=-1)
            flat = ops.reshape(picked, (ops.shape(picked)[0], -1, len(units[name])))
            out += [ops.max(flat, axis=1), ops.cast(ops.argmax(flat, axis=1), "int32")]
        return out

    return backend.compile(run, [backend.spec((None,) + _image_shape(model))])


def _crop_field(model, name: str, crop: str | bool):
    """The layer's receptive field for cropping, or a RobustError saying why its units cannot be cropped."""
    from robust.summary import receptive_fields

    rf = receptive_fields(model).get(name)
    layer = get_layer(model, name)
    if crop is True and (rf is None or not rf.spatial):
        shape = tuple(layer.output.shape[1:])
        why = (f"its output {shape} has no spatial axes, so every unit sees the whole image and there is no "
               "window to crop" if rf is not None else
               "its receptive field cannot be computed (a layer before it changes positions in a way robust does "
               "not know, such as resizing or upsampling)")
        raise RobustError(f"Layer {name!r} ({type(layer).__name__}) cannot give cropped top images: {why}. "
                          "Ask for whole top images instead (--no-crop, crop=False), or pick a convolution or "
                          "pooling layer.")
    return rf


def top_images(model, x: np.ndarray, layers: dict[str, Sequence[int]], *, k: int = 9, crop: str | bool = "auto",
               batch_size: int = 256) -> dict[str, TopImages]:
    """The ``k`` images of ``x`` that excite each chosen unit most, cropped to its receptive field.

    One compiled pass over ``x`` reads all layers; only the per-image maximum
    and its position are kept, so memory does not grow with the feature maps.

    Args:
        model: a functional or Sequential Keras model.
        x: (N, H, W, C) images in the model's value range.
        layers: layer name -> unit indices.
        k: images per unit (at most N).
        crop: ``True`` crops to the receptive field (an error for a layer without spatial output),
            ``False`` keeps whole images, ``"auto"`` crops where the layer has spatial output.
        batch_size: images per compiled call.

    Returns:
        Layer name -> :class:`TopImages`.
    """
    from robust import backend
    from robust.gradients import batches

    if crop not in (True, False, "auto"):
        raise RobustError(f"crop must be True, False or 'auto'; received {crop!r}.")
    x = np.asarray(x, np.float32)
    k = _check("k", k, minimum=1, integer=True)
    if len(x) < k:
        raise RobustError(f"Top-{k} images need at least {k} images; received {len(x)}.")
    names = list(layers)
    units = {n: np.asarray(check_targets_units(model, n, layers[n]), np.int64) for n in names}
    fields = {n: (_crop_field(model, n, crop) if crop is not False else None) for n in names}
    run = _max_fn(model, names, units)
    best = {n: [] for n in names}
    where = {n: [] for n in names}
    for s, e in batches(len(x), batch_size):
        out = run(backend.tensor(x[s:e]))
        for i, n in enumerate(names):
            best[n].append(backend.to_numpy(out[2 * i]))
            where[n].append(backend.to_numpy(out[2 * i + 1]))
    result = {}
    for n in names:
        vals, pos = np.concatenate(best[n]), np.concatenate(where[n])            # (N, U)
        order = np.argsort(-vals, axis=0, kind="stable")[:k].T                   # (U, K)
        result[n] = _top_result(model, n, x, units[n], order, vals, pos, fields[n])
    return result


def check_targets_units(model, name: str, units: Sequence[int]) -> list[int]:
    return [u for _, u in check_targets(model, [(name, u) for u in units])]


def _top_result(model, name, x, units, order, vals, pos, rf) -> TopImages:
    out_shape = tuple(int(d) for d in get_layer(model, name).output.shape[1:])
    width = out_shape[1] if len(out_shape) == 3 else 1
    cols = np.arange(len(units))[:, None]
    flat = pos[order, cols]                                                       # (U, K)
    position = np.stack([flat // width, flat % width], -1) if len(out_shape) == 3 else np.zeros(flat.shape + (2,),
                                                                                                 np.int64)
    h, w = x.shape[1:3]
    if rf is not None and rf.spatial:
        box = np.array([[rf.box(int(i), int(j)) for i, j in row] for row in position], np.int64).reshape(
            len(units), -1, 4)
    else:
        box = np.broadcast_to(np.array([0, 0, h, w]), order.shape + (4,)).copy()
    crops = None if rf is None else _crops(x, order, box, rf)
    return TopImages(layer=name, units=units, index=order, value=vals[order, cols], position=position, box=box,
                     crops=crops, receptive_field=rf)


def _crops(x: np.ndarray, order: np.ndarray, box: np.ndarray, rf) -> np.ndarray:
    """The pixels of each box, NaN outside the image; boxes larger than the image keep the image's frame."""
    n_img, h, w, c = x.shape
    fh, fw = (min(rf.size[0], h), min(rf.size[1], w)) if rf.spatial else (h, w)
    out = np.full(order.shape + (fh, fw, c), np.nan, np.float32)
    for u, k in np.ndindex(order.shape):
        top, left, bottom, right = box[u, k]
        if bottom - top > h or not rf.spatial:
            top, bottom = 0, h
        if right - left > w or not rf.spatial:
            left, right = 0, w
        t, lft, b, r = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
        out[u, k, t - top:b - top, lft - left:r - left] = x[order[u, k], t:b, lft:r]
    return out


def centre_field(model, name: str, images: np.ndarray) -> np.ndarray:
    """Images grown for units of layer ``name`` (objective ``"center"``), cut to the centre unit's receptive field.

    Only that window can influence the unit, so the rest of a grown image is
    background. Layers without spatial output (or with an unknown field) keep
    the whole image. NaN marks padding, as in :class:`TopImages` crops.
    """
    from robust.summary import receptive_fields

    rf = receptive_fields(model).get(name)
    out_shape = tuple(get_layer(model, name).output.shape[1:])
    if rf is None or not rf.spatial or len(out_shape) != 3:
        return np.asarray(images, np.float32)
    box = np.array(rf.box(int(out_shape[0]) // 2, int(out_shape[1]) // 2), np.int64)
    n = len(images)
    return _crops(np.asarray(images, np.float32), np.arange(n)[:, None], np.broadcast_to(box, (n, 1, 4)), rf)[:, 0]


# --------------------------------------------------------------------- locality

def first_layer(model) -> str | None:
    """The name of the first convolution or dense layer (in graph order), or None."""
    for layer in _graph_layers(model):
        if _is_conv(layer) or _is_dense(layer):
            return layer.name
    return None


def locality(model, x: np.ndarray, *, layer: str | None = None, window: int = 5, max_units: int = 256) -> np.ndarray:
    """Per unit of ``layer`` (default: the first conv or dense layer): the fraction of its input-gradient mass
    inside its most active ``window`` x ``window`` window of pixels.

    The gradient of the unit's net input (at the centre position for a
    convolution) with respect to an image, in absolute value summed over
    channels, is the unit's template on the input: for a first layer it is
    its weights. A 5x5 convolution keeps all of it in one 5x5 window; a
    fully connected unit that spreads its weights evenly over an H x W image
    keeps 25 / (H W).

    Args:
        model: a Keras model taking images.
        x: at least one image (N, H, W, C) in the model's value range; the first is used.
        layer: the layer to measure.
        window: the window's side in pixels.
        max_units: measure at most this many units (the first ones).

    Returns:
        (U,) fractions in [0, 1].
    """
    from robust import backend

    layer = layer or first_layer(model)
    if layer is None:
        raise RobustError(f"Model {model.name!r} has no convolution or dense layer to measure.")
    n = min(_num_units(get_layer(model, layer)), max_units)
    targets = [(layer, u) for u in range(n)]
    fn = target_values(model, targets)
    value_and_grad = backend.value_and_grad(lambda t: (fn(t), None))
    batch = np.repeat(np.asarray(x[:1], np.float32), n, axis=0)
    _, grad, _ = value_and_grad(backend.tensor(batch))
    mass = np.abs(backend.to_numpy(grad)).reshape((n,) + batch.shape[1:3] + (-1,)).sum(-1)   # (U, H, W)
    return window_fraction(mass, window)


def window_fraction(mass: np.ndarray, window: int) -> np.ndarray:
    """(U,) the largest sum of ``mass`` (U, H, W) in a window x window square, over its total (0 if no mass)."""
    mass = np.asarray(mass, np.float64)  # float32 would round the guard below to 0 and divide 0 by 0
    u, h, w = mass.shape
    kh, kw = min(window, h), min(window, w)
    c = np.pad(mass.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    sums = c[:, kh:, kw:] - c[:, :-kh, kw:] - c[:, kh:, :-kw] + c[:, :-kh, :-kw]
    total = mass.reshape(u, -1).sum(1)
    return np.where(total > 0, sums.reshape(u, -1).max(1) / np.maximum(total, 1e-300), 0.0)


# ------------------------------------------------------------------ the report

def why_not_visualizable(model) -> str | None:
    """Why :func:`report_arrays` cannot read ``model``'s units (a sentence), or None when it can."""
    inputs = getattr(model, "inputs", None) if not _is_subclassed(model) else None
    if not inputs:
        return "it has no graph of layers to read inner activations from (a subclassed model)"
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or any(d is None for d in inputs[0].shape[1:]):
        return f"it does not take one fixed-size image input (its inputs: {[tuple(t.shape) for t in inputs]})"
    if not default_layers(model):
        return "it has no convolution or dense layer"
    return None


def _is_subclassed(model) -> bool:
    import keras
    from keras.src.models.functional import Functional

    return not isinstance(model, (Functional, keras.Sequential))


def report_layers(model, n: int = 3) -> list[str]:
    """Up to ``n`` of :func:`default_layers`, spread from the first to the last."""
    names = default_layers(model)
    if len(names) <= n:
        return names
    return [names[i] for i in sorted({round(j * (len(names) - 1) / (n - 1)) for j in range(n)})]


def rf_vector(rf) -> np.ndarray:
    """A receptive field as 7 integers for an ``.npz``: size (h, w), jump (h, w), start (h, w), spatial.

    An unknown field is all -1 (a size of -1 tells it apart; a start of -1 is an ordinary padded field).
    """
    if rf is None:
        return np.full(7, -1, np.int64)
    return np.array([*rf.size, *rf.jump, *rf.start, int(rf.spatial)], np.int64)


def report_arrays(model, x: np.ndarray, *, value_range: Sequence[float] = (0.0, 1.0),
                  layers: Sequence[str] | None = None, units: int = 4, top: int = 4, steps: int = 100,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of the report's "What the network learned" section, for one model.

    A few layers (:func:`report_layers`), the first ``units`` units of each:
    activation maximisation of all of them in one compiled batch, the
    ``top`` most exciting images of ``x`` cropped to each unit's receptive
    field, and :func:`locality` of the first layer's units. Images are
    scaled to [0, 1] for the figures.

    Returns:
        Nothing (an empty dict) for a model :func:`why_not_visualizable` refuses; else
        ``learned_layers`` (L,) names, ``learned_locality`` (U0,), ``learned_locality_layer``,
        ``learned_locality_window``, and per layer i: ``learned{i}_units``, ``learned{i}_max``
        (U, h, w, C) grown images cut to the centre unit's field (:func:`centre_field`),
        ``learned{i}_start`` and ``learned{i}_value`` (U,) activations before and after, ``learned{i}_top``
        (U, K, h, w, C) crops (NaN outside the image), ``learned{i}_top_value`` (U, K), ``learned{i}_rf``
        (:func:`rf_vector`).
    """
    from robust.gradients import check_value_range

    lo, hi = check_value_range(value_range)
    if layers is None and why_not_visualizable(model):
        return {}
    names = list(layers) if layers is not None else report_layers(model)
    chosen = {n: list(range(min(units, _num_units(get_layer(model, n))))) for n in names}
    targets = [(n, u) for n in names for u in chosen[n]]
    grown = ActivationMaximization(steps=steps, seed=seed)(model, targets, value_range=(lo, hi))
    tops = top_images(model, x, chosen, k=min(top, len(x)), crop="auto")
    scale = 1.0 / (hi - lo)
    first = first_layer(model)
    arrays: dict[str, np.ndarray] = {
        "learned_layers": np.array(names, dtype=str),
        "learned_locality": locality(model, x).astype(np.float32),
        "learned_locality_layer": np.array(first or "", dtype=str),
        "learned_locality_window": np.array(5),
    }
    for i, n in enumerate(names):
        mine = np.array([m == n for m, _ in targets])
        t = tops[n]
        crops = t.crops if t.crops is not None else np.zeros((len(t.units), 0, 1, 1, 1), np.float32)
        arrays.update({
            f"learned{i}_units": t.units,
            f"learned{i}_max": ((centre_field(model, n, grown.images[mine]) - lo) * scale).astype(np.float32),
            f"learned{i}_start": grown.start[mine], f"learned{i}_value": grown.value[mine],
            f"learned{i}_top": ((crops - lo) * scale).astype(np.float32), f"learned{i}_top_value": t.value,
            f"learned{i}_rf": rf_vector(t.receptive_field),
        })
    return arrays
