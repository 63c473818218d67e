"""The model registry: named, lazily built Keras models.

Every model, built-in or third-party, is published through the entry-point
group ``robust.models`` (the built-ins in this package's own
``pyproject.toml``), so the registry is one declarative table and ``robust
models`` shows where each entry comes from. An entry point names one of:

* a :class:`ModelSpec`: an architecture of the zoo, built untrained and
  trained by ``robust train`` / ``robust run``;
* a :class:`ModelPlugin`, or a bare callable: a factory of a *ready*
  (trained) model, evaluated as it is by ``robust eval NAME`` (the contract
  is in :mod:`robust.plugins`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import warnings
from typing import Any, Callable

from robust.errors import RobustError, known_names

ENTRY_POINT_GROUP = "robust.models"

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Option:
    """A builder option's type, default and allowed range, checked before any model is built.

    Attributes:
        default: the builder's default value.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``choices``), ``"str"``,
            ``"table"`` (a dict of options) or ``"any"`` (unchecked; options of plugins that
            declare only a default).
        minimum, maximum: inclusive bounds of a number (``None``: unbounded).
        below_maximum: the maximum itself is excluded (a dropout rate must be below 1).
        choices: the allowed values of a ``"choice"`` option.
        optional: ``None`` is allowed too.
        help: one line for ``robust models``.
    """

    default: Any
    kind: str
    minimum: float | None = None
    maximum: float | None = None
    below_maximum: bool = False
    choices: tuple = ()
    optional: bool = False
    help: str = ""

    @classmethod
    def infer(cls, default: Any) -> "Option":
        """The declaration of an option a plugin gave only as a default: its type is the default's type."""
        if isinstance(default, Option):
            return default
        for py_type, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (dict, "table")):
            if isinstance(default, py_type):
                return cls(default, kind)
        return cls(default, "any")

    def expected(self) -> str:
        """What a valid value is, in words: ``an integer in [1, 64]``."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            lo, hi = self.minimum, self.maximum
            if lo is not None and hi is not None:
                text = f"{noun} in [{lo:g}, {hi:g}{')' if self.below_maximum else ']'}"
            elif lo is not None:
                text = f"{noun} >= {lo:g}"
            else:
                text = noun if hi is None else f"{noun} {'<' if self.below_maximum else '<='} {hi:g}"
        else:
            text = {"bool": "true or false", "str": "a string", "table": "a table of options such as "
                    "{ width = 0.25 }", "any": "any value"}[self.kind]
        return text + (" or none" if self.optional else "")

    def check(self, value: Any) -> Any:
        """``value`` as the builder takes it (an int given for a float option becomes a float).

        Raises:
            ValueError: the value is not what :meth:`expected` says.
        """
        if value is None and (self.optional or self.kind == "any"):
            return None
        ok, out = self._convert(value)
        if not ok:
            raise ValueError(self.expected())
        return out

    def _convert(self, value: Any) -> tuple[bool, Any]:
        if self.kind == "any":
            return True, value
        if self.kind == "bool":
            return isinstance(value, bool), value
        if self.kind in ("str", "choice"):
            return isinstance(value, str) and (self.kind == "str" or value in self.choices), value
        if self.kind == "table":
            return isinstance(value, dict), value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and not isinstance(value, int):
            number = False
        if not number or not math.isfinite(value):
            return False, value
        value = float(value) if self.kind == "float" else int(value)
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and (value >= self.maximum if self.below_maximum else value > self.maximum)
        return not (too_low or too_high), value

    def describe(self) -> str:
        """``512 (an integer in [1, 65536])`` for ``robust models``."""
        return f"{self.default!r} ({self.expected()})"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo.

    Attributes:
        name: registry name, e.g. ``"lenet5"``.
        build: ``build(input_shape, num_classes, **options) -> keras.Model``
            returning a model that outputs logits.
        description: one line for ``robust models``.
        input_shapes: human description of the accepted inputs.
        check_input: ``check_input(input_shape, num_classes)`` returns ``None``
            when the shape is accepted, otherwise a short reason.
        options: the builder's keyword options: name -> :class:`Option` (type, default and
            range), or name -> default for a plugin that declares only defaults (the type is
            then the default's).
        check_options: optional ``check_options(options, input_shape, num_classes)`` for rules
            across options (raises RobustError); runs after every option passed its own check.
        kind: ``"conv"`` or ``"fc"`` (reports group ConvNets vs baselines).
        source: where the entry was registered (filled in by the registry).
    """

    name: str
    build: Callable[..., Any]
    description: str
    input_shapes: str
    check_input: Callable[[Shape, int], str | None]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = "conv"
    source: str = "built-in"
    check_options: Callable[[dict, Shape, int], None] | None = None

    def declared(self) -> dict[str, Option]:
        """Every option as an :class:`Option`."""
        return {k: Option.infer(v) for k, v in self.options.items()}

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.declared().items()}


@dataclasses.dataclass(frozen=True)
class ModelPlugin:
    """A ready (trained) model published by a package, evaluated as it is (``robust eval NAME``).

    Attributes:
        name: registry name (the entry point's name).
        factory: ``factory() -> keras.Model`` or ``(keras.Model, metadata dict)``; the
            contract is documented in :mod:`robust.plugins`. It may be called more
            than once per process; cache inside it if building is expensive.
        description: one line for ``robust models`` (default: the factory's docstring).
        source: where the entry was registered (filled in by the registry).
    """

    name: str
    factory: Callable[[], Any]
    description: str = ""
    source: str = "built-in"


@dataclasses.dataclass(frozen=True)
class Registry:
    """What the entry-point group holds: zoo architectures, ready models, and the plugins skipped."""

    specs: dict[str, ModelSpec]
    ready: dict[str, ModelPlugin]
    broken: dict[str, str]  # name -> why it was skipped (failed import, wrong kind of object)


def entry_point_source(ep: importlib.metadata.EntryPoint) -> str:
    """``"built-in"`` for this package's own entry points, else ``"plugin <dist> (<target>)"``."""
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else "?"
    return "built-in" if name == "robust" else f"plugin {name} ({ep.value})"


def _first_doc_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


@functools.cache
def entries() -> Registry:
    """Load the entry-point group once. A plugin that fails to import or names the wrong kind of
    object is skipped with a warning (and remembered in ``broken``), never breaking the others."""
    specs: dict[str, ModelSpec] = {}
    ready: dict[str, ModelPlugin] = {}
    broken: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = entry_point_source(ep)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            broken[ep.name] = (f"model plugin {ep.name!r} from {source} failed to import: "
                               f"{type(exc).__name__}: {exc}")
            warnings.warn(f"{broken[ep.name]}; it is skipped.", stacklevel=2)
            continue
        if isinstance(obj, ModelSpec):
            specs[ep.name] = dataclasses.replace(obj, name=ep.name, source=source)
        elif isinstance(obj, ModelPlugin):
            ready[ep.name] = dataclasses.replace(obj, name=ep.name, source=source,
                                                 description=obj.description or _first_doc_line(obj.factory))
        elif callable(obj):
            ready[ep.name] = ModelPlugin(name=ep.name, factory=obj, description=_first_doc_line(obj), source=source)
        else:
            broken[ep.name] = (f"model plugin {ep.name!r} from {source} names an object of type "
                               f"{type(obj).__name__}; the entry point must name a robust.models.ModelSpec (an "
                               "architecture to train), a robust.models.ModelPlugin or a callable returning a "
                               "ready Keras model")
            warnings.warn(f"{broken[ep.name]}; it is skipped.", stacklevel=2)
    return Registry(specs, ready, broken)


def registry() -> dict[str, ModelSpec]:
    """The zoo: architectures registered as :class:`ModelSpec`, by name (built-in and plugins)."""
    return entries().specs


def ready_models() -> dict[str, ModelPlugin]:
    """Ready (trained) models registered by plugins, by name."""
    return entries().ready


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``; an unknown name lists the known ones."""
    specs = registry()
    if name not in specs:
        if name in ready_models():
            raise RobustError(
                f"Model {name!r} is a ready, trained model from {ready_models()[name].source}, not an "
                f"architecture to train. Evaluate it with `robust eval {name} --dataset D`, or in a run spec "
                f"with [[models]] ref = \"{name}\"."
            )
        raise RobustError(
            f"Unknown model {name!r}. Known models: {known_names(specs)}. "
            "Run `robust models` to see what each one is."
        )
    return specs[name]


def format_shape(shape: Shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` of zoo model ``name`` against their declarations; return them as the builder takes them.

    Raises:
        RobustError: an unknown option, or a value of the wrong type or out of range,
            saying what was expected and what was received.
    """
    spec = get_spec(name)
    if not isinstance(options, dict):
        raise RobustError(f"Options of model {name!r} must be a table of KEY = VALUE; received {options!r}.")
    declared = spec.declared()
    unknown = set(options) - set(declared)
    if unknown:
        raise RobustError(
            f"Model {name!r} has no option {known_names(unknown)}. Its options are: "
            f"{', '.join(f'{k}={o.describe()}' for k, o in declared.items()) or 'none'}."
        )
    out = {}
    for key, value in options.items():
        try:
            out[key] = declared[key].check(value)
        except ValueError as exc:
            raise RobustError(f"Model {name!r} option {key} must be {exc}; received {value!r}.") from None
    return out


def check_buildable(name: str, input_shape: Shape, num_classes: int, options: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Everything :func:`build_model` checks, without building: the name, the input shape, the number of
    classes and every option. Returns the options as the builder takes them.

    Run it before any work starts (a spec with five models is checked whole
    before the first one trains).
    """
    spec = get_spec(name)
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise RobustError(
            f"Model {name!r} needs images of rank 3 (height, width, channels); received input shape "
            f"{input_shape} of rank {len(input_shape)}. Grayscale images need a channel axis of 1, e.g. 28x28x1."
        )
    if num_classes < 2:
        raise RobustError(f"Model {name!r} needs at least 2 classes; received num_classes={num_classes}.")
    reason = spec.check_input(input_shape, num_classes)
    if reason:
        raise RobustError(
            f"Model {name!r} cannot take images of shape {format_shape(input_shape)}: {reason} "
            f"It accepts {spec.input_shapes}."
        )
    options = validate_options(name, dict(options or {}))
    if spec.check_options is not None:
        spec.check_options(options, input_shape, num_classes)
    return options


def build_model(name: str, input_shape: Shape, num_classes: int, **options: Any):
    """Build the registered model ``name`` for images of ``input_shape`` (H, W, C).

    The input shape and the options are checked (:func:`check_buildable`)
    before Keras sees them, so a mismatch is explained in plain words instead
    of by a TensorFlow shape error deep in a layer.
    """
    options = check_buildable(name, input_shape, num_classes, options)
    return get_spec(name).build(tuple(int(d) for d in input_shape), num_classes, **options)


def check_model_input(model, input_shape: Shape, *, data_name: str = "the data") -> None:
    """Raise a readable error when ``model`` cannot take images of ``input_shape``.

    This is the check people most need in TensorFlow: feeding 32x32x3
    images to a 28x28x1 model. ``None`` dimensions in the model accept any size.
    """
    expected = tuple(model.input_shape[1:])
    got = tuple(int(d) for d in input_shape)
    ok = len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got))
    if not ok:
        exp = "x".join("?" if e is None else str(e) for e in expected)
        raise RobustError(
            f"Model {model.name!r} expects images of shape {exp} (height x width x channels) but "
            f"{data_name} has images of shape {format_shape(got)}. Use data of the shape the model "
            f"was built for, or build/train the model for {format_shape(got)} images."
        )


def count_params(model) -> int:
    """Number of weights and biases (trainable or not) of a built Keras model."""
    return int(model.count_params())
