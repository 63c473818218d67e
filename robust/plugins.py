"""Models we did not write: model references, the plugin contract, and what robust assumes about them.

A *model reference* (``robust eval MODEL_REF``, or ``ref = "..."`` in a run
spec's ``[[models]]``) is one of:

1. a ``.keras`` file, or a folder written by ``robust train``; loaded with
   Keras's safe mode, so a file that carries code (a ``Lambda`` layer) is
   refused unless ``unsafe=True`` (``--unsafe``);
2. ``module.path:factory``: a callable returning a ready Keras model;
3. the name of a ready model that an installed package registers in the
   entry-point group ``robust.models`` (a :class:`robust.models.ModelPlugin`
   or a bare callable; a :class:`robust.models.ModelSpec` there is an
   architecture to train instead).

The contract of a factory (README, "Evaluating models we did not write"):
it takes no arguments and returns a ``keras.Model`` or a pair ``(model,
metadata)``. The model maps a batch of images ``(batch, height, width,
channels)`` to one score per class, logits or probabilities (a final softmax
is detected); any preprocessing (``Rescaling``, ``Normalization``) lives
inside it, and it runs in inference mode (``training=False``). ``metadata``
is a dict with any of the keys of :data:`METADATA_KEYS`.

The input value range is taken from, in order: the metadata (or a ``robust
train`` model card), the caller's ``value_range`` (``--value-range``), a
leading ``Rescaling`` layer whose scale and offset map ``[0, X]`` onto
``[0, 1]`` or ``[-1, 1]``; otherwise ``[0, 1]`` is assumed, and
:meth:`LoadedModel.describe` says so. A ``Normalization`` layer standardises
inputs but does not reveal their range, so it is never used to infer one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from robust.errors import RobustError, known_names

#: Keys a factory's metadata may hold, and what each must be.
METADATA_KEYS: dict[str, str] = {
    "name": "a non-empty string: the model's display name",
    "value_range": "(low, high): the pixel values the model expects, e.g. (0, 255)",
    "class_names": "a sequence of strings, one per model output",
    "input_shape": "(height, width, channels): required when the model has no keras.Input (subclassed models)",
    "outputs": "\"logits\" or \"probabilities\" (detected when absent)",
    "dataset": "the name of the dataset the model was trained on (the default of --dataset)",
    "description": "a string: one line about the model",
}

_MODULE_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_PROBE_SIZE = 4
_ASSUMED = "assumed [0, 1]"


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """What a reference resolves to before its value range is settled (loaded once, reusable)."""

    model: Any
    name: str
    source: str
    what: str                  # how errors name it: "model plugin 'x' from ...", "model file ...", ...
    metadata: dict[str, Any]
    range_source: str          # what a value range in ``metadata`` is called: "plugin metadata", "model card"
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A ready model, checked against the contract, with what was found and what was assumed.

    Attributes:
        model: the ``keras.Model`` (a subclassed model is wrapped in a functional
            model with a ``keras.Input`` of its declared input shape).
        name: display name (metadata, else the plugin / factory / file name).
        source: where it came from: a file path, ``"module:factory"`` or ``"plugin <dist> (...)"``.
        value_range: ``(low, high)`` of the pixels the model expects.
        value_range_source: where that range came from: ``"plugin metadata"``,
            ``"model card"``, ``"--value-range"``, ``"Rescaling layer 'r' (scale 1/255)"``
            or ``"assumed [0, 1]"``.
        class_names: one name per output, or ``None`` when not given.
        input_shape: ``(height, width, channels)``; ``None`` for a size the model leaves open.
        num_classes: number of outputs.
        outputs: ``"logits"`` or ``"probabilities"``.
        kind: ``"conv"`` when the model has a convolution layer, else ``"fc"``.
        dataset: the dataset the metadata names, or ``None``.
        notes: what the user should know (safe mode off, ranges that disagree ...).
        ref: the reference it was loaded from.
        unsafe: whether safe mode was off.
    """

    model: Any
    name: str
    source: str
    value_range: tuple[float, float]
    value_range_source: str
    class_names: tuple[str, ...] | None
    input_shape: tuple[int | None, ...]
    num_classes: int
    outputs: str
    kind: str
    dataset: str | None = None
    notes: tuple[str, ...] = ()
    ref: str = ""
    unsafe: bool = False
    _resolved: _Resolved | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def value_range_assumed(self) -> bool:
        return self.value_range_source == _ASSUMED

    def describe(self) -> str:
        """One line: what was loaded and what was assumed."""
        lo, hi = self.value_range
        shape = "x".join("?" if d is None else str(d) for d in self.input_shape)
        kind = "ConvNet" if self.kind == "conv" else "fully connected"
        line = (f"{self.name} from {self.source}: {kind}, {shape} images -> {self.num_classes} {self.outputs}, "
                f"inputs in [{lo:g}, {hi:g}] ({self.value_range_source})")
        return "; ".join([line, *self.notes])


# ------------------------------------------------------------------ loading

_REUSE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("robust_plugins_reuse", default=None)


@contextlib.contextmanager
def reuse(*loaded: LoadedModel):
    """Within the block, :func:`load_model_ref` returns these models instead of loading them again.

    A command that loads a model to check it before starting a study (which
    loads its models by reference) uses this so a factory runs and a file is
    read once. The value range is settled again for each call.
    """
    token = _REUSE.set({(m.ref, m.unsafe): m._resolved for m in loaded if m._resolved is not None})
    try:
        yield
    finally:
        _REUSE.reset(token)


def load_model_ref(ref: str | Path, *, value_range: Sequence[float] | None = None,
                   unsafe: bool = False) -> LoadedModel:
    """Load a ready model from a reference and check it against the plugin contract.

    Args:
        ref: a ``.keras`` file, a ``robust train`` folder, ``module.path:factory``, or
            the name of a ready model registered in the entry-point group ``robust.models``.
        value_range: ``(low, high)`` of the model's inputs when its metadata does not say
            (``--value-range``); a contradiction with the metadata is an error.
        unsafe: load ``.keras`` files that carry code (Keras safe mode off).

    Returns:
        A :class:`LoadedModel`.

    Raises:
        RobustError: an unknown reference, a file that is not a readable model, a plugin
            that fails to import or breaks the contract (the error names the plugin and
            what is wrong).

    Example:
        >>> loaded = load_model_ref("examples/cnn.keras", value_range=(0, 255))
        >>> print(loaded.describe())
    """
    ref = str(ref)
    if not ref.strip():
        raise RobustError("A model reference is empty. Expected a .keras file, a folder written by `robust train`, "
                          "module.path:factory, or the name of a ready model registered by a plugin.")
    explicit = _check_range(value_range, "value_range (--value-range)") if value_range is not None else None
    reused = (_REUSE.get() or {}).get((ref, bool(unsafe)))
    resolved = reused if reused is not None else _resolve(ref, bool(unsafe))
    return _finish(ref, bool(unsafe), resolved, explicit)


def _resolve(ref: str, unsafe: bool) -> _Resolved:
    path = Path(ref)
    if path.exists() or path.suffix == ".keras" or "/" in ref or "\\" in ref:
        return _from_file(path, unsafe)
    if _MODULE_REF.fullmatch(ref):
        return _from_module(ref)
    return _from_plugin(ref)


def _from_file(path: Path, unsafe: bool) -> _Resolved:
    from robust.artifacts import CARD_FILE, load_model

    model, card = load_model(path, unsafe=unsafe)
    notes = ("loaded with Keras safe mode off (--unsafe): code in the file was allowed to run",) if unsafe else ()
    metadata: dict[str, Any] = {}
    if card:
        # A robust train card: the keys the contract knows, under their names there.
        for key, card_key in (("name", "name"), ("value_range", "value_range"),
                              ("class_names", "class_names"), ("dataset", "dataset")):
            if key not in metadata and card.get(card_key) is not None:
                metadata[key] = card[card_key]
        metadata = _check_metadata(metadata, f"model card {path / CARD_FILE}")
    default = path.name if path.is_dir() else path.stem
    return _Resolved(model=model, name=metadata.get("name") or default, source=str(path),
                     what=f"model file {path}", metadata=metadata, range_source="model card", notes=notes)


def _from_module(ref: str) -> _Resolved:
    module_name, attr = ref.split(":", 1)
    what = f"model factory {ref!r}"
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module in the current folder, as `python -m` finds it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise RobustError(
                f"{what}: there is no module {module_name!r} to import. Expected module.path:factory naming an "
                "importable module (installed, on PYTHONPATH, or in the current folder) and a callable in it."
            ) from None
        raise RobustError(f"{what}: importing {module_name!r} failed: {type(exc).__name__}: {exc}.") from exc
    except Exception as exc:
        raise RobustError(f"{what}: importing {module_name!r} failed: {type(exc).__name__}: {exc}.") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RobustError(f"{what}: {module_name!r} has no attribute {attr!r}. Expected module.path:factory "
                              "naming a callable that returns a Keras model.")
        obj = getattr(obj, part)
    return _call_factory(obj, what=what, source=ref, default_name=attr.rsplit(".", 1)[-1],
                         range_source="factory metadata")


def _from_plugin(name: str) -> _Resolved:
    from robust.models.registry import entries

    reg = entries()
    if name in reg.ready:
        plugin = reg.ready[name]
        return _call_factory(plugin.factory, what=f"model plugin {name!r} from {plugin.source}",
                             source=plugin.source, default_name=name, range_source="plugin metadata")
    if name in reg.broken:
        raise RobustError(f"{reg.broken[name]}. Fix or uninstall that plugin; other models are not affected.")
    if name in reg.specs:
        raise RobustError(
            f"{name!r} is an architecture of the zoo ({reg.specs[name].source}), not a trained model. Train it "
            f"first (`robust train {name} --dataset D --out DIR`) and evaluate DIR, or name it in a run spec."
        )
    raise RobustError(
        f"No model {name!r}: it is not a file or folder, not module.path:factory, and no installed plugin "
        f"registers a ready model of that name (ready models: {known_names(reg.ready) or 'none installed'}). "
        "Expected a .keras file, a folder written by `robust train`, module.path:factory, or a plugin's model "
        "name; `robust models` lists the registered ones."
    )


def _call_factory(obj: Any, *, what: str, source: str, default_name: str, range_source: str) -> _Resolved:
    from robust.models.registry import ModelPlugin, ModelSpec

    if isinstance(obj, ModelSpec):
        raise RobustError(f"{what} names a ModelSpec, an architecture to train, not a ready model. Train it with "
                          "`robust train` and evaluate the folder, or register it as a zoo model.")
    if isinstance(obj, ModelPlugin):
        obj = obj.factory
    if isinstance(obj, keras.Model):
        returned = obj
    elif callable(obj):
        try:
            returned = obj()
        except RobustError as exc:
            raise RobustError(f"{what}: {exc}") from exc
        except Exception as exc:
            raise RobustError(f"{what} raised {type(exc).__name__} when called: {exc}. A model factory takes no "
                              "arguments and returns a keras.Model or (model, metadata).") from exc
    else:
        raise RobustError(f"{what} is a {type(obj).__name__}, not callable. Expected a callable that takes no "
                          "arguments and returns a keras.Model or (model, metadata).")
    if isinstance(returned, keras.Model):
        model, metadata = returned, {}
    elif isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[1], Mapping):
        model, metadata = returned
        if not isinstance(model, keras.Model):
            raise RobustError(f"{what} returned ({_type(model)}, metadata); the first item must be a Keras 3 "
                              "keras.Model.")
    else:
        raise RobustError(f"{what} returned {_type(returned)}; expected a Keras 3 keras.Model or a pair "
                          "(keras.Model, metadata dict).")
    metadata = _check_metadata(metadata, what)
    return _Resolved(model=model, name=metadata.get("name") or default_name, source=source, what=what,
                     metadata=metadata, range_source=range_source)


def _type(obj: Any) -> str:
    t = type(obj)
    return f"an object of type {t.__qualname__ if t.__module__ == 'builtins' else t.__module__ + '.' + t.__qualname__}"


# ------------------------------------------------------------------ the contract

def _check_metadata(metadata: Mapping, what: str) -> dict[str, Any]:
    """The metadata as a plain dict with normalized values, or a RobustError naming the plugin and the key."""

    def bad(key: str, got: Any) -> RobustError:
        return RobustError(f"{what}: metadata {key!r} must be {METADATA_KEYS[key]}; received {got!r}.")

    unknown = set(metadata) - set(METADATA_KEYS)
    if unknown:
        raise RobustError(f"{what}: unknown metadata key {known_names(map(str, unknown))}. "
                          f"Allowed keys: {known_names(METADATA_KEYS)}.")
    out: dict[str, Any] = {}
    for key in ("name", "dataset", "description"):
        value = metadata.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise bad(key, value)
            out[key] = value.strip()
    if metadata.get("value_range") is not None:
        try:
            out["value_range"] = _check_range(metadata["value_range"], "value_range")
        except RobustError:
            raise bad("value_range", metadata["value_range"]) from None
    names = metadata.get("class_names")
    if names is not None:
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) < 2 \
                or not all(isinstance(n, str) for n in names):
            raise bad("class_names", names)
        out["class_names"] = tuple(names)
    shape = metadata.get("input_shape")
    if shape is not None:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3 or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape):
            raise bad("input_shape", shape)
        out["input_shape"] = tuple(int(d) for d in shape)
    outputs = metadata.get("outputs")
    if outputs is not None:
        if outputs not in ("logits", "probabilities"):
            raise bad("outputs", outputs)
        out["outputs"] = outputs
    return out


def _check_range(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        raise RobustError(f"{name} must be two numbers (low, high) such as (0, 255); received {value!r}.")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise RobustError(f"{name} must be finite with low < high, such as (0, 255); received {value!r}.")
    return lo, hi


def _finish(ref: str, unsafe: bool, resolved: _Resolved, explicit: tuple[float, float] | None) -> LoadedModel:
    """Check the model against the contract and settle its value range."""
    what, meta = resolved.what, resolved.metadata
    model = _with_input(resolved.model, meta.get("input_shape"), what)
    resolved = dataclasses.replace(resolved, model=model)  # reused later: wrap once
    input_shape = tuple(None if d is None else int(d) for d in model.inputs[0].shape[1:])

    notes = list(resolved.notes)
    guess, why = infer_value_range(model)
    declared = meta.get("value_range")
    if declared is not None:
        if explicit is not None and not np.allclose(declared, explicit):
            raise RobustError(
                f"{what} declares its inputs in [{declared[0]:g}, {declared[1]:g}] ({resolved.range_source}), but "
                f"--value-range gives [{explicit[0]:g}, {explicit[1]:g}]. The model's own metadata wins: drop "
                "--value-range, or fix the metadata if it is wrong."
            )
        value_range, range_source = declared, resolved.range_source
        if guess is not None and not np.allclose(guess, declared):
            notes.append(f"warning: its {why} takes pixels in [{guess[0]:g}, {guess[1]:g}], but its "
                         f"{resolved.range_source} says [{declared[0]:g}, {declared[1]:g}], which robust uses; if the "
                         "layer is right, every eps and clip is off: fix the metadata")
    elif explicit is not None:
        if guess is not None and not np.allclose(guess, explicit):
            raise RobustError(
                f"{what} starts with a {why}, which takes pixels in [{guess[0]:g}, {guess[1]:g}], but --value-range "
                f"gives [{explicit[0]:g}, {explicit[1]:g}]; attacked with the wrong range, every eps and clip would "
                f"be off by a factor of {(guess[1] - guess[0]) / (explicit[1] - explicit[0]):g}. Drop --value-range "
                f"(the layer settles it), or pass --value-range {guess[0]:g},{guess[1]:g}."
            )
        value_range = explicit
        range_source = why if guess is not None else "--value-range"
    elif guess is not None:
        value_range, range_source = guess, why
    else:
        value_range, range_source = (0.0, 1.0), _ASSUMED
        notes.append(f"no value range in its metadata, no --value-range, {why}: pass --value-range LO,HI "
                     "if it expects other pixel values (e.g. 0,255)")

    num_classes, outputs = _probe(model, input_shape, value_range, meta.get("outputs"), what)
    names = meta.get("class_names")
    if names is not None and len(names) != num_classes:
        raise RobustError(f"{what}: metadata 'class_names' has {len(names)} names but the model has {num_classes} "
                          "outputs; give one name per output.")
    return LoadedModel(
        model=model, name=resolved.name, source=resolved.source, value_range=value_range,
        value_range_source=range_source, class_names=names, input_shape=input_shape, num_classes=num_classes,
        outputs=outputs, kind="conv" if _has_conv(model) else "fc", dataset=meta.get("dataset"),
        notes=tuple(notes), ref=ref, unsafe=unsafe, _resolved=resolved,
    )


def _with_input(model, declared: tuple[int, ...] | None, what: str):
    """The model with exactly one image input of a known rank; a subclassed model is wrapped with a keras.Input."""
    inputs = _graph_inputs(model)
    if inputs is None:
        if declared is None:
            raise RobustError(
                f"{what} returned a model without a keras.Input (a subclassed keras.Model or a Sequential "
                "without an Input), so robust cannot tell its input shape. Add it to the metadata: return "
                "model, {\"input_shape\": (28, 28, 1)}; or start the model with keras.Input(shape)."
            )
        image = keras.Input(shape=declared, name="image")
        try:
            wrapped = keras.Model(image, _Opaque(model)(image), name=model.name)
        except Exception as exc:
            raise RobustError(f"{what}: calling the model on inputs of its declared shape {declared} failed: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return wrapped
    if len(inputs) != 1:
        raise RobustError(f"{what} returned a model with {len(inputs)} inputs; robust feeds one batch of images "
                          "(batch, height, width, channels). Wrap it in a model with a single image input.")
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3:
        raise RobustError(f"{what} returned a model whose input has shape {tuple(inputs[0].shape)}; expected "
                          "images (batch, height, width, channels), e.g. (None, 28, 28, 1).")
    if declared is not None and any(s is not None and s != d for s, d in zip(shape, declared)):
        raise RobustError(f"{what}: metadata 'input_shape' {declared} contradicts the model's input shape {shape}.")
    return model


class _Opaque(keras.layers.Layer):
    """A subclassed model as one layer of a functional wrapper: its ``call`` is arbitrary Python, so
    summaries and checks see one layer with its weights rather than layers that never ran in a graph."""

    def __init__(self, model, **kwargs):
        super().__init__(name=model.name, **kwargs)
        self.model = model

    def call(self, x, training=False):
        return self.model(x, training=training)


def _graph_inputs(model):
    """The symbolic inputs of a functional or Sequential model with a keras.Input, else ``None``."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _probe(model, input_shape, value_range, declared: str | None, what: str) -> tuple[int, str]:
    """Run the model on a few random images in its range: output shape, finiteness, logits or probabilities."""
    shape = tuple(32 if d is None else d for d in input_shape)
    lo, hi = value_range
    x = np.random.default_rng(0).uniform(lo, hi, size=(_PROBE_SIZE, *shape)).astype(np.float32)
    try:
        out = model(x, training=False)
    except Exception as exc:
        raise RobustError(f"{what} fails on a batch of {_PROBE_SIZE} random images of shape {shape} in "
                          f"[{lo:g}, {hi:g}]: {type(exc).__name__}: {_first_line(exc)}") from exc
    if isinstance(out, (list, tuple, Mapping)):
        heads = list(out.items()) if isinstance(out, Mapping) else list(enumerate(out))
        shapes = ", ".join(f"{k}: {tuple(keras.ops.shape(v))}" for k, v in heads)
        raise RobustError(f"{what} has {len(heads)} outputs ({shapes}); robust attacks one classifier output, "
                          "shape (batch, classes). Give it a model with the head to attack as its only output, "
                          "e.g. keras.Model(model.inputs, model.outputs[0]).")
    out = np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float64)  # any backend (torch: detached)
    if out.ndim != 2 or out.shape[1] < 2:
        raise RobustError(f"{what} must output one score per class, shape (batch, classes) with at least 2 "
                          f"classes; on a batch of {_PROBE_SIZE} images it returned shape {out.shape}.")
    if not np.isfinite(out).all():
        raise RobustError(f"{what} returned NaN or infinite scores on random images in [{lo:g}, {hi:g}]; is the "
                          "value range right?")
    probabilities = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    if declared == "probabilities" and not probabilities:
        raise RobustError(f"{what} declares outputs='probabilities' but its scores on random images are not "
                          "non-negative rows summing to 1. Declare outputs='logits', or end the model with a softmax.")
    if declared == "logits" and probabilities:
        raise RobustError(f"{what} declares outputs='logits' but its scores on random images are probabilities "
                          "(non-negative, each row summing to 1). Declare outputs='probabilities'.")
    if not probabilities and declared != "logits":
        from robust.gradients import looks_like_sigmoid

        if looks_like_sigmoid(out):
            return int(out.shape[1]), "sigmoid probabilities"  # one independent probability per class, not logits
    return int(out.shape[1]), "probabilities" if probabilities else "logits"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


# ------------------------------------------------------------------ what the layers say

def _leading_layer(model):
    """The first layer applied to the input, looking into leading Sequential / functional sub-models."""
    layers = [layer for layer in getattr(model, "layers", []) if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        return None
    first = layers[0]
    if isinstance(first, keras.Model) and _graph_inputs(first) is not None or isinstance(first, keras.Sequential):
        return _leading_layer(first) or first
    return first


def infer_value_range(model) -> tuple[tuple[float, float] | None, str]:
    """The input range a leading ``Rescaling`` layer reveals, and how it was found.

    ``Rescaling(scale, offset)`` computes ``x * scale + offset``; when that maps
    ``[0, X]`` onto ``[0, 1]`` or ``[-1, 1]`` the model expects pixels in
    ``[0, X]``: ``scale=1/255`` means ``[0, 255]``, ``scale=1/127.5, offset=-1``
    too. A leading ``Normalization`` layer standardises with the data's mean
    and variance and does not say what the pixels were, so it gives no range.

    Returns:
        ``((low, high), "Rescaling layer 'name' (scale 1/255)")``, or ``(None, why not)``.
    """
    first = _leading_layer(model)
    if isinstance(first, keras.layers.Rescaling):
        scale = np.atleast_1d(np.asarray(first.scale, dtype=np.float64)).ravel()
        offset = np.atleast_1d(np.asarray(first.offset, dtype=np.float64)).ravel()
        described = f"Rescaling layer {first.name!r} (scale {_fmt_scale(scale)}" + (
            f", offset {_fmt(offset)})" if np.any(offset != 0) else ")")
        if np.ptp(scale) > 1e-12 * np.abs(scale).max() or np.ptp(offset) > 1e-12 or scale[0] == 0:
            return None, f"the leading {described} differs per channel, so no single range follows from it"
        s, o = float(scale[0]), float(offset[0])
        for t_lo, t_hi in ((0.0, 1.0), (-1.0, 1.0)):
            a, b = sorted(((t_lo - o) / s, (t_hi - o) / s))
            if abs(a) <= 1e-6 * max(1.0, abs(b)):
                return (0.0, float(np.round(b, 6))), described
        return None, f"the leading {described} maps no range [0, X] onto [0, 1] or [-1, 1]"
    if isinstance(first, keras.layers.Normalization):
        return None, (f"and its first layer, Normalization {first.name!r}, standardises inputs without revealing "
                      "their range")
    return None, "no leading Rescaling layer"


def _fmt(values: np.ndarray) -> str:
    return f"{values[0]:g}" if values.size == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _fmt_scale(scale: np.ndarray) -> str:
    def one(s: float) -> str:
        inv = 1.0 / s if s else math.inf
        if math.isfinite(inv) and abs(inv) >= 2 and abs(inv - round(inv, 3)) <= 1e-6 * abs(inv):
            return f"1/{round(inv, 3):g}"
        return f"{s:g}"

    return one(float(scale[0])) if scale.size == 1 else "[" + ", ".join(one(float(s)) for s in scale) + "]"


def _has_conv(model) -> bool:
    """Whether any layer, nested models included, is a convolution (Conv2D, DepthwiseConv2D, ...)."""
    seen, stack = set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer is not model and "Conv" in type(layer).__name__:
            return True
        stack.extend(getattr(layer, "layers", None) or [])
        if isinstance(layer, _Opaque):
            stack.append(layer.model)
    return False
