"""The base every norm-bounded attack shares, and the result it returns.

:class:`Attack` owns what FGSM, PGD and later attacks have in common:
validating hyper-parameters and inputs, choosing the labels, refusing
models without a usable gradient, batching (with a progress bar), seeding,
the norm ball and the value range, and assembling the :class:`AttackResult`.
A subclass writes one method, :meth:`Attack._perturb`, with ``keras.ops``;
the base compiles it, together with the clean and adversarial predictions,
into one graph built once per model and attack configuration
(:mod:`robust.backend`) and reused for every batch and call.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import time
from typing import Any, ClassVar, Sequence

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.norms import Norm, get_norm
from robust.errors import RobustError
from robust.gradients import (
    Logits,
    batches,
    check_gradients,
    check_images,
    check_labels,
    check_value_range,
    model_logits,
)

LABELS_GIVEN = "given"
LABELS_PREDICTED = "model predictions"


@dataclasses.dataclass
class AttackResult:
    """What an attack returns: adversarial images and the predictions on both sides.

    Attributes:
        x_adv: adversarial images, float32, shaped like the input.
        labels: the labels attacked (given, or the model's clean predictions).
        labels_from: ``"given"`` or ``"model predictions"``.
        clean_pred, adv_pred: predicted classes on the clean and adversarial images.
        clean_confidence, adv_confidence: softmax probability of those predictions.
        perturbation: size of ``x_adv - x`` per image, in the attack's norm.
        target: the target class per image for a targeted attack, else ``None``.
        seconds: wall-clock time of the call (the first call also compiles).
        attack, norm, eps, params: what was run.
        logits_kind: how the model's logits were obtained (see :func:`robust.gradients.model_logits`).
    """

    x_adv: np.ndarray
    labels: np.ndarray
    labels_from: str
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    clean_confidence: np.ndarray
    adv_confidence: np.ndarray
    perturbation: np.ndarray
    seconds: float
    attack: str
    norm: str
    eps: float
    params: dict[str, Any]
    target: np.ndarray | None = None
    logits_kind: str = "logits"

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def success(self) -> np.ndarray:
        """Per image: classified as the target (targeted) or not as its label (untargeted)."""
        if self.target is not None:
            return self.adv_pred == self.target
        return self.adv_pred != self.labels

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean_pred == self.labels))

    @property
    def adversarial_accuracy(self) -> float:
        return float(np.mean(self.adv_pred == self.labels))


def _check_number(name: str, value, *, minimum: float | None = None, integer: bool = False,
                  allow_none: bool = False, positive: bool = False):
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RobustError(f"{name} must be {kind}; received {value!r} ({type(value).__name__}).")
    if integer and float(value) != int(value):
        raise RobustError(f"{name} must be {kind}; received {value!r}.")
    if not math.isfinite(float(value)):
        raise RobustError(f"{name} must be a finite number; received {value!r}.")
    if positive and value <= 0:
        raise RobustError(f"{name} must be greater than 0; received {value!r}.")
    if minimum is not None and value < minimum:
        raise RobustError(f"{name} must be at least {minimum:g}; received {value!r}.")
    return int(value) if integer else float(value)


class Attack:
    """Base of the norm-bounded evasion attacks: ``Attack(**hyper_parameters)(model, x, y)``.

    Subclasses set :attr:`name`, call ``super().__init__`` with the shared
    hyper-parameters and implement :meth:`_perturb` (and :meth:`_config`
    for hyper-parameters that shape the compiled graph).

    Args:
        eps: radius of the norm ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"`` (or a :class:`~robust.attacks.norms.Norm`).
        targeted: push towards a target class given at call time instead of
            away from the label.
        seed: seed of the random start (per batch, so results depend on batch_size).
    """

    name: ClassVar[str] = ""
    #: Whether the attack follows input gradients; a score-based attack (Square) sets False and is not
    #: refused on models without a usable gradient.
    needs_gradients: ClassVar[bool] = True

    def __init__(self, *, eps: float, norm: str | Norm = "inf", targeted: bool = False, seed: int = 0):
        self.eps = _check_number("eps", eps, minimum=0.0)
        self.norm = get_norm(norm)
        if not isinstance(targeted, (bool, np.bool_)):
            raise RobustError(f"targeted must be True or False; received {targeted!r}.")
        self.targeted = bool(targeted)
        self.seed = _check_number("seed", seed, integer=True, minimum=0)

    # ------------------------------------------------------------ subclass API

    def _config(self) -> tuple:
        """Hyper-parameters baked into the compiled graph (part of its cache key)."""
        return ()

    def _step_size(self) -> float:
        """Step size passed to :meth:`_perturb` at run time."""
        return self.eps

    def _starts_at_x(self) -> bool:
        """Whether :meth:`_perturb` evaluates the model on ``x`` itself first (and returns those logits)."""
        return False


    def _perturb(self, logits: Logits, x, goal, rng: backend.Rng, eps, step_size, low, high):
        """Adversarial images for one batch, written with ``keras.ops`` (runs compiled).

        Args:
            logits: the model as a function to logits.
            x: clean images of the batch.
            goal: the labels to move away from, or the targets to move to (``self.targeted``).
            rng: random numbers for this batch.
            eps, step_size, low, high: scalar tensors.

        Returns:
            ``(x_adv, clean_logits, adv_logits)``: images inside the ``eps`` ball around ``x``
            and inside ``[low, high]``, and the logits of ``x`` and ``x_adv`` when the attack
            computed them anyway (else ``None``; the base then runs the model once more).
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's hyper-parameters and their values (JSON-ready)."""
        out = {}
        for pname in inspect.signature(type(self).__init__).parameters:
            if pname == "self":
                continue
            value = getattr(self, pname)
            out[pname] = value.name if isinstance(value, Norm) else value
        return out

    @classmethod
    def describe(cls) -> str:
        """First line of the docstring."""
        return (inspect.getdoc(cls) or cls.__name__).splitlines()[0]

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """The constructor's keyword parameters and their defaults (``inspect.Parameter.empty`` if required)."""
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def check_eps(self, image_shape: tuple[int, ...], value_range: Sequence[float]) -> None:
        """Refuse an eps larger than the value range allows for images of ``image_shape``."""
        low, high = check_value_range(value_range)
        largest = self.norm.largest(tuple(image_shape), low, high)
        if self.eps > largest:
            raise RobustError(
                f"eps={self.eps:g} is larger than any {self.norm.label} distance between two images in "
                f"[{low:g}, {high:g}] of shape {tuple(image_shape)} ({largest:g}); such an attack could replace "
                f"the image entirely. Use eps in the units of the value range, e.g. 0.1 for images in [0, 1]."
            )

    def check_model(self, image_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse, before anything is compiled, a model this attack cannot run on (none by default).

        Raises:
            RobustError: e.g. too few classes for the attack's loss, or images of a shape it cannot handle.
        """

    def _check_target(self, target, n: int, num_classes: int) -> np.ndarray | None:
        if not self.targeted:
            if target is not None:
                raise RobustError(f"A target was given to an untargeted {type(self).__name__}. "
                                  f"Construct it with targeted=True (--targeted) to attack towards a class.")
            return None
        if target is None:
            raise RobustError(
                f"{type(self).__name__}(targeted=True) needs a target class: pass target=C (an int for all "
                f"images, or one per image; --target C on the command line)."
            )
        if np.ndim(target) == 0:
            target = np.full(n, target)
        return check_labels(target, n, num_classes, name="target")

    def _compiled(self, model, logits: Logits, image_shape: tuple[int, ...], labels_given: bool):
        key = (type(self).__name__, self.norm.name, self.targeted, self._config(), tuple(image_shape), labels_given)
        norm, targeted = self.norm, self.targeted
        # Labels are needed before the attack runs. Given labels (or a target) let an attack that
        # starts at x return the clean logits from its first gradient pass: one forward pass fewer.
        clean_pass = not (self._starts_at_x() and (labels_given or targeted))

        def build(proxy):
            def run(x, y, target, seed, eps, step_size, low, high):
                clean = logits(x) if clean_pass else None
                labels = y if labels_given else ops.cast(ops.argmax(clean, axis=-1), "int32")
                goal = target if targeted else labels
                x_adv, clean_seen, adv = self._perturb(logits, x, goal, backend.Rng(seed), eps, step_size, low, high)
                if clean is None:
                    clean = clean_seen
                    if not labels_given:
                        labels = ops.cast(ops.argmax(clean, axis=-1), "int32")
                if adv is None:
                    adv = logits(x_adv)
                return (x_adv, labels, ops.cast(ops.argmax(clean, axis=-1), "int32"),
                        ops.max(ops.softmax(clean, axis=-1), axis=-1), ops.cast(ops.argmax(adv, axis=-1), "int32"),
                        ops.max(ops.softmax(adv, axis=-1), axis=-1), norm.distance(x_adv - x))

            scalar = backend.spec(())
            signature = [backend.spec((None,) + tuple(image_shape)), backend.spec((None,), "int32"),
                         backend.spec((None,), "int32"), backend.spec((2,), "int32"), scalar, scalar, scalar, scalar]
            return backend.compile(run, signature)

        return backend.cached(model, key, build)

    # ------------------------------------------------------------------- call

    def __call__(self, model, x: np.ndarray, y: np.ndarray | None = None, *,
                 value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256,
                 target: int | np.ndarray | None = None, progress: bool = True) -> AttackResult:
        """Attack ``x`` (n images) on ``model``; arrays in, arrays out.

        Args:
            model: a Keras classifier mapping images in ``value_range`` to logits
                (a final softmax is detected and removed, with a warning).
            x: images shaped ``(n, *model input shape)`` inside ``value_range``.
            y: true labels ``(n,)`` (or one-hot); the model's predictions when ``None``.
            value_range: ``(low, high)`` of valid pixel values; adversarial images stay inside.
            batch_size: images per compiled call; memory does not grow with ``n`` beyond the result.
            target: targeted attacks only: one class for all images, or one per image.
            progress: show a progress bar over batches (only on a terminal).

        Returns:
            An :class:`AttackResult`.

        Raises:
            RobustError: bad images, labels, targets or eps, or a model without a usable gradient.
        """
        started = time.perf_counter()
        low, high = check_value_range(value_range)
        x = check_images(model, x, (low, high))
        n, image_shape = len(x), tuple(x.shape[1:])
        self.check_eps(image_shape, (low, high))
        spans = batches(n, batch_size)
        logits = model_logits(model, x)
        self.check_model(image_shape, logits.num_classes)
        y = check_labels(y, n, logits.num_classes)
        target = self._check_target(target, n, logits.num_classes)
        first = slice(*spans[0])
        if self.needs_gradients:
            check_gradients(model, x[first], None if y is None else y[first], value_range=(low, high))
        run = self._compiled(model, logits, image_shape, labels_given=y is not None)

        x_adv = np.empty_like(x)
        ints = {k: np.empty(n, np.int64) for k in ("labels", "clean_pred", "adv_pred")}
        floats = {k: np.empty(n, np.float32) for k in ("clean_confidence", "adv_confidence", "perturbation")}
        scalars = [backend.tensor(v) for v in (self.eps, self._step_size(), low, high)]
        no_labels = np.full(min(int(batch_size), n), -1, np.int32)
        for index, (s, e) in enumerate(_progress(spans, progress, type(self).__name__)):
            yb = y[s:e].astype(np.int32) if y is not None else no_labels[: e - s]
            tb = target[s:e].astype(np.int32) if target is not None else no_labels[: e - s]
            seed = backend.tensor([self.seed % (2**31 - 1), index], "int32")
            out = run(backend.tensor(x[s:e]), backend.tensor(yb, "int32"), backend.tensor(tb, "int32"),
                      seed, *scalars)
            x_adv[s:e] = backend.to_numpy(out[0])
            for k, v in zip(("labels", "clean_pred", "clean_confidence", "adv_pred", "adv_confidence",
                             "perturbation"), out[1:]):
                (ints if k in ints else floats)[k][s:e] = backend.to_numpy(v)
        return AttackResult(
            x_adv=x_adv, labels=ints["labels"], labels_from=LABELS_GIVEN if y is not None else LABELS_PREDICTED,
            clean_pred=ints["clean_pred"], adv_pred=ints["adv_pred"],
            clean_confidence=floats["clean_confidence"], adv_confidence=floats["adv_confidence"],
            perturbation=floats["perturbation"], seconds=time.perf_counter() - started, attack=self.name,
            norm=self.norm.name, eps=self.eps, params=self.params, target=target, logits_kind=logits.kind,
        )


def _progress(items, enabled: bool, desc: str):
    """A tqdm bar over batches on a terminal with more than one batch; the plain list otherwise."""
    if not enabled or len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)
