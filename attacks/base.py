"""The base every norm-bounded attack shares, the driver that runs it, and the result it returns.

:class:`Attack` owns what every attack has in common: validating
hyper-parameters and inputs, choosing the labels, refusing models without a
usable gradient (for attacks that need one), masks of the points still to
attack, per-image random keys, the runs (restarts) and their one worst-case
merge, the norm ball and the value range, and assembling the
:class:`AttackResult`. A one-shot attack writes one public method,
:meth:`Attack.perturb`, reading the batch from a :class:`Context`; an
iterative one is a :class:`~robust.attacks.steps.StepAttack`. The base
compiles it into one kernel built once per model and attack configuration
(:meth:`Attack.config`). The kernel takes the model's weights as an
argument, so it never attacks stale weights, and it serves every batch size.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
import weakref
from typing import Any, Callable, ClassVar, Iterable, NamedTuple, Sequence

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.compaction import Points, clean_logits, driver_outputs, read_logits, standing_points
from robust.attacks.driver import Outcome, run_batches
from robust.attacks.norms import Norm, get_norm
from robust.errors import MAX_COUNT, RobustError
from robust.gradients import (
    Logits,
    cached,
    check_gradients,
    check_images,
    check_labels,
    check_value_range,
    margin,
    model_logits,
    success,
)

LABELS_GIVEN = "given"
LABELS_PREDICTED = "model predictions"


@dataclasses.dataclass
class AttackResult:
    """What an attack returns: adversarial images and the predictions on both sides, per image.

    Attributes:
        x_adv: adversarial images, float32, shaped like the input (the image itself where not attacked).
        labels: the labels attacked (given, or the model's clean predictions).
        labels_from: ``"given"`` or ``"model predictions"``.
        clean_pred, adv_pred: predicted classes on the clean and adversarial images.
        clean_confidence, adv_confidence: softmax probability of those predictions.
        perturbation: size of ``x_adv - x`` per image, in the attack's norm.
        score: how far each adversarial image is past the decision boundary: the margin of the
            best other class over the label (untargeted) or of the target over the best other
            class (targeted); positive exactly when the attack succeeded. :meth:`worst_of` ranks by it.
        seconds: wall-clock time of the call (the first call also compiles).
        attack, norm, eps, params: what was run.
        target: the target class per image for a targeted attack, else ``None``.
        logits_kind: how the model's logits were obtained (see :func:`robust.gradients.model_logits`).
        indices: each image's global index (its random key is ``(seed, index)``).
        attacked: which images the attack ran on (the mask it was given); others are unchanged.
        source: per image, which result of a :meth:`worst_of` merge it came from (0 otherwise).
        details: what an attack reports beyond the images (an ensemble: points broken by each part).
        radius: minimum-norm attacks only (:mod:`robust.attacks.minimum_norm`): per image the
            smallest adversarial perturbation found, in the attack's norm, whatever ``eps`` and the
            mask were (the search covers every image); 0 for a clean mistake, ``inf`` where none was found.
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
    score: np.ndarray | None = None
    indices: np.ndarray | None = None
    attacked: np.ndarray | None = None
    source: np.ndarray | None = None
    details: dict | None = None
    radius: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.labels)
        if self.indices is None:
            self.indices = np.arange(n)
        if self.attacked is None:
            self.attacked = np.ones(n, bool)
        if self.source is None:
            self.source = np.zeros(n, np.int64)
        if self.score is None:
            self.score = np.where(self.success, 1.0, -1.0).astype(np.float32)

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

    def worst_of(self, *others: "AttackResult") -> "AttackResult":
        """Per image, the worst case over this result and ``others`` (restarts, ensembles, sweeps).

        An image's entry comes from the first result in which the attack
        succeeded; where none succeeded, from the one with the highest
        :attr:`score` (closest to the boundary). All results must cover the
        same images with the same labels (and targets). ``source`` says which
        result each image came from (0 is this one); ``seconds`` add up.
        """
        merged = dataclasses.replace(self, source=np.zeros(len(self.labels), np.int64))
        for number, other in enumerate(others, start=1):
            if not (np.array_equal(other.indices, self.indices) and np.array_equal(other.labels, self.labels)):
                raise RobustError("worst_of: the results cover different images or labels; merge results of "
                                  "the same images only.")
            ok, best_ok = other.success, merged.success
            take = other.attacked & ((ok & ~best_ok) | ((ok == best_ok) & ~best_ok & (other.score > merged.score)))
            merged = _take(merged, other, take, number)
        return merged

    @classmethod
    def concatenate(cls, parts: Sequence["AttackResult"]) -> "AttackResult":
        """One result over the images of ``parts`` in order: shards of one attack run, merged exactly.

        Per-image fields are concatenated; ``seconds`` add up; counts in ``details`` add up and
        lists in it are united. The parts must come from the same attack at the same eps.
        """
        if not parts:
            raise RobustError("AttackResult.concatenate needs at least one result; received none.")
        first = parts[0]
        for part in parts[1:]:
            if (part.attack, part.norm, part.eps, part.labels_from) != (first.attack, first.norm, first.eps,
                                                                       first.labels_from):
                raise RobustError(f"AttackResult.concatenate: parts of one attack at one eps expected; received "
                                  f"{first.attack} eps={first.eps} and {part.attack} eps={part.eps}.")
        per_image = ("x_adv", "labels", "clean_pred", "adv_pred", "clean_confidence", "adv_confidence",
                     "perturbation", "score", "indices", "attacked", "source")
        joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in per_image}
        if first.target is not None:
            joined["target"] = np.concatenate([p.target for p in parts])
        if all(p.radius is not None for p in parts):
            joined["radius"] = np.concatenate([p.radius for p in parts])
        details = first.details
        for part in parts[1:]:
            details = _merge_details(details, part.details)
        return dataclasses.replace(first, **joined, seconds=float(sum(p.seconds for p in parts)), details=details)


def _merge_details(a, b):
    """Two shards' ``details``: numbers add up, lists are united in order, dicts merge key by key."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, dict):
        return {k: _merge_details(a.get(k), b.get(k)) for k in {**a, **b}}
    if isinstance(a, list):
        return a + [v for v in b if v not in a]
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return a + b
    return a


_PER_IMAGE = ("x_adv", "adv_pred", "adv_confidence", "perturbation", "score")


def _take(base: AttackResult, other: AttackResult, take: np.ndarray, number: int) -> AttackResult:
    """``base`` with the per-image adversarial fields of ``other`` where ``take`` is set."""
    changes = {}
    for name in _PER_IMAGE:
        mine, theirs = getattr(base, name), getattr(other, name)
        column = take.reshape((-1,) + (1,) * (np.ndim(mine) - 1))
        changes[name] = np.where(column, theirs, mine).astype(mine.dtype)
    return dataclasses.replace(base, **changes, attacked=base.attacked | other.attacked,
                               source=np.where(take, number, base.source), seconds=base.seconds + other.seconds)


def _freeze(value):
    """A hashable, comparable form of a hyper-parameter value, for a kernel cache key."""
    if isinstance(value, Norm):
        return ("norm", value.name)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    try:
        hash(value)
    except TypeError:
        raise RobustError(f"An attack hyper-parameter of type {type(value).__name__} ({value!r}) cannot be part of "
                          "a kernel's cache key; use numbers, strings, booleans, tuples, lists, dicts or "
                          "arrays.") from None
    return value


def check_number(name: str, value, *, minimum: float | None = None, integer: bool = False,
                  allow_none: bool = False, positive: bool = False, maximum: float | None = None):
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RobustError(f"{name} must be {kind}; received {value!r} ({type(value).__name__}).")
    if not isinstance(value, (int, np.integer)) and not math.isfinite(float(value)):  # before int(): inf, nan
        raise RobustError(f"{name} must be a finite {kind[3:] if integer else 'number'}; received {value!r}.")
    if integer and not isinstance(value, (int, np.integer)) and float(value) != int(value):
        raise RobustError(f"{name} must be {kind}; received {value!r}.")
    if maximum is None and integer:
        maximum = MAX_COUNT
    if maximum is not None and value > maximum:
        raise RobustError(f"{name} must be at most {maximum:,}; received {value!r}.")
    if positive and value <= 0:
        raise RobustError(f"{name} must be greater than 0; received {value!r}.")
    if minimum is not None and value < minimum:
        raise RobustError(f"{name} must be at least {minimum:g}; received {value!r}.")
    return int(value) if integer else float(value)


class Context(NamedTuple):
    """What an attack's compiled code sees for one batch of images (all tensors but ``logits``).

    Attributes:
        logits: the model as a function ``images -> logits``, on the weights the kernel was given.
        x: the clean images of the batch.
        goal: per image, the label to move away from, or the target to reach (``targeted``).
        rng: the run's per-image random numbers (:class:`robust.backend.Rng`, keyed by
            ``(seed, image index)``); draw with a leading batch axis.
        eps: the radius of the ball (``inf`` for a minimum-norm attack without a bound).
        step_size: :meth:`Attack.effective_step_size`.
        low, high: the value range.
        run: which run this is (an int32 scalar; see :meth:`Attack.runs`).
        extra: the run's per-image inputs from :meth:`Attack.run_inputs`.
        classes: how many classes the model has (a Python int).
    """

    logits: Callable
    x: Any
    goal: Any
    rng: Any
    eps: Any
    step_size: Any
    low: Any
    high: Any
    run: Any = 0
    extra: tuple = ()
    classes: int = 0


class Attack:
    """Base of the norm-bounded evasion attacks: ``Attack(**hyper_parameters)(model, x, y)``.

    Subclasses set :attr:`name`, call ``super().__init__`` with the shared
    hyper-parameters, keep every constructor parameter under its own name
    (``self.tries = tries``: :attr:`params` and the kernel cache key,
    :meth:`config`, read them from there) and implement :meth:`perturb` (or subclass
    :class:`~robust.attacks.steps.StepAttack`).

    Args:
        eps: radius of the norm ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"`` (or a :class:`~robust.attacks.norms.Norm`).
        targeted: push towards a target class given at call time instead of
            away from the label.
        seed: seed of the random numbers; image ``i`` draws from ``(seed, index of i)``, so results
            do not depend on the batch size or on which other images are attacked.

    Class attributes a subclass may set:
        name: the registered name.
        needs_gradients: False for attacks that use model outputs only (score-based, black-box);
            they are never refused for a model without a usable gradient.
        strength: rank of the attack's thoroughness; the study's masking checks and example
            images use the strongest attack of a spec (the highest, the last one among ties).
        norms: the norms the attack supports (``"inf"``, ``"2"``, ``"1"``).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    strength: ClassVar[int] = 0
    norms: ClassVar[tuple[str, ...]] = ("inf", "2")

    def __init__(self, *, eps: float, norm: str | Norm = "inf", targeted: bool = False, seed: int = 0):
        self.eps = check_number("eps", eps, minimum=0.0)
        self.norm = get_norm(norm)
        if self.norm.name not in self.norms:
            labels = " and ".join(get_norm(n).label for n in self.norms)
            raise RobustError(f"{type(self).__name__} measures perturbations in {labels}; received norm "
                              f"{self.norm.label} ({norm!r}). Use norm={' or norm='.join(map(repr, self.norms))}.")
        if not isinstance(targeted, (bool, np.bool_)):
            raise RobustError(f"targeted must be True or False; received {targeted!r}.")
        self.targeted = bool(targeted)
        self.seed = check_number("seed", seed, integer=True, minimum=0, maximum=2**32 - 1)

    # ------------------------------------------------------------ subclass API

    def config(self, runtime: Iterable[str] = ("eps", "seed")) -> tuple:
        """The frozen hyper-parameter config this attack's compiled kernels are cached under.

        It holds the attack's class (the class object: two classes of one name never share a
        kernel) and the value of every constructor parameter (:attr:`params`) except ``runtime``,
        the ones a kernel takes as arguments at call time. Nothing is opt-in: a hyper-parameter
        the attack's code reads from ``self`` is in the key whether or not anyone remembered it,
        so ``Attack(scale=0)`` after ``Attack(scale=1)`` on one model gets its own kernel.
        Leaving a parameter out of ``runtime`` costs a compile at most; never a wrong kernel.

        Args:
            runtime: parameters the kernel receives as arguments (the base kernel: ``eps`` as a
                tensor and ``seed`` through the per-image keys); a kernel that also takes, say,
                the step count as an argument names it here to be shared across step counts.
        """
        runtime = set(runtime)
        return (type(self), tuple((k, _freeze(v)) for k, v in sorted(self.params.items()) if k not in runtime))

    def effective_step_size(self) -> float:
        """The step size every kernel of this attack receives as ``ctx.step_size`` (eps by default)."""
        return self.eps

    #: Whether images the model already gets wrong are attacked too (else returned unchanged).
    attacks_clean_mistakes: ClassVar[bool] = True
    #: Whether later runs attack broken points again (a minimum-norm attack's next run may find a
    #: smaller perturbation; its rank is minus the perturbation's size) or only the points still standing.
    improves_broken: ClassVar[bool] = False

    def runs(self, num_classes: int) -> int:
        """Independent runs per image (restarts, or APGD-T's target classes); each runs on the points
        no earlier run broke, and the driver keeps the worst case (broken first, then highest rank)."""
        return 1

    def run_inputs(self, clean_logits: np.ndarray, run: int) -> tuple[np.ndarray, ...]:
        """Per-image int32 arrays run number ``run`` receives as ``ctx.extra`` (computed from the clean
        logits of the points, e.g. APGD-T's target class); none by default."""
        return ()

    def stream(self, rng: "backend.Rng", run) -> "backend.Rng":
        """The random numbers of run ``run`` (a tensor) from the per-image stream ``rng`` of ``(seed, index)``."""
        return rng.fold(run)

    def perturb(self, ctx: Context):
        """Adversarial images for one batch, written with ``keras.ops`` (runs compiled).

        The one method an attack that is not a :class:`~robust.attacks.steps.StepAttack` writes.
        It reads everything from ``ctx`` (see :class:`Context`) and returns images inside the
        ``ctx.eps`` ball around ``ctx.x`` and inside ``[ctx.low, ctx.high]``. The driver scores
        them, merges runs and assembles the result.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement perturb(ctx).")

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
        if self.eps is not None and self.eps > largest:
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

    # ----------------------------------------------------------------- kernel

    def _kernel(self, model, logits: Logits, image_shape: tuple[int, ...], extras: int):
        """Compiled: ``(weights, x, goal, *extra, keys, run, eps, step_size, low, high) -> (x_adv, found, rank)``."""
        key = ("attack", self.config(), tuple(image_shape), extras)
        targeted = self.targeted

        def build(proxy):
            def run(weights, x, goal, *rest):
                extra, (keys, number, eps, step_size, low, high) = rest[:extras], rest[extras:]
                bound = logits.bind(weights)
                ctx = Context(bound, x, goal, self.stream(backend.Rng(keys), number), eps, step_size, low, high,
                              number, tuple(extra), logits.num_classes)
                x_adv = self.perturb(ctx)
                adv = bound(x_adv)
                score = -margin(adv, goal) if targeted else margin(adv, goal)
                return x_adv, success(adv, goal, targeted=targeted), score

            scalar, classes = backend.spec(()), backend.spec((None,), "int32")
            signature = ([logits.state_signature(), backend.spec((None,) + tuple(image_shape)), classes]
                         + [classes] * extras + [backend.spec((None, 2), "int32"), backend.spec((), "int32")]
                         + [scalar] * 4)
            return backend.compile(run, signature)

        return cached(model, key, build)

    def _run(self, model, logits: Logits, points: Points, active: np.ndarray, extra: list, run: int,
             keys_from: np.ndarray, value_range, batch_size: int, progress: bool):
        """Run number ``run`` on the points ``active``: ``(x_adv, found, rank)`` per point, numpy.

        ``rank`` orders the candidates of points no run broke (higher is closer to breaking); for an
        attack written with :meth:`perturb` it is the margin past the boundary (``AttackResult.score``).
        """
        kernel = self._kernel(model, logits, points.x.shape[1:], len(extra))
        per_image = [(points.x[active], "float32"), (points.goal[active], "int32")] + [(e, "int32") for e in extra]
        constants = [backend.tensor(run, "int32")] + [backend.tensor(v) for v in self._scalars(value_range)]
        return run_batches(kernel, logits.state(), per_image, constants, seed=self.seed, indices=keys_from,
                           batch_size=batch_size, progress=progress, desc=type(self).__name__)

    def _scalars(self, value_range) -> tuple[float, float, float, float]:
        """``(eps, step_size, low, high)`` as every kernel receives them."""
        eps = float("inf") if self.eps is None else self.eps  # a minimum-norm search without a bound
        return (eps, self.effective_step_size()) + tuple(float(v) for v in value_range)

    # ------------------------------------------------------------------- call

    def __call__(self, model, x: np.ndarray, y: np.ndarray | None = None, *,
                 value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256,
                 target: int | np.ndarray | None = None, indices: np.ndarray | None = None,
                 mask: np.ndarray | None = None, progress: bool = True) -> AttackResult:
        """Attack ``x`` (n images) on ``model``; arrays in, arrays out.

        Args:
            model: a Keras classifier mapping images in ``value_range`` to logits
                (a final softmax is detected and removed, with a warning).
            x: images shaped ``(n, *model input shape)`` inside ``value_range``.
            y: true labels ``(n,)`` (or one-hot); the model's predictions when ``None``.
            value_range: ``(low, high)`` of valid pixel values; adversarial images stay inside.
            batch_size: images per compiled call; results do not depend on it.
            target: targeted attacks only: one class for all images, or one per image.
            indices: each image's global index (default ``0..n-1``); image ``i`` draws its random
                numbers from ``(seed, indices[i])``, so a subset or a shard of a data set gets
                exactly the numbers it gets in the whole.
            mask: which images to attack (default all); the others are returned unchanged, with
                their clean predictions.
            progress: show a progress bar over batches (only on a terminal).

        Returns:
            An :class:`AttackResult`.

        Raises:
            RobustError: bad images, labels, targets, indices, mask or eps, or (for attacks that
                need gradients) a model without a usable gradient.
        """
        started = time.perf_counter()
        low, high = check_value_range(value_range)
        x = check_images(model, x, (low, high))
        n = len(x)
        self.check_eps(x.shape[1:], (low, high))
        logits = model_logits(model, x)
        self.check_model(x.shape[1:], logits.num_classes)
        y = check_labels(y, n, logits.num_classes)
        target = self._check_target(target, n, logits.num_classes)
        indices, mask = _check_indices(indices, n), _check_mask(mask, n)
        if self.eps == 0:  # the ball is {x}: nothing to search, only the predictions to make
            mask[:] = False
        if self.needs_gradients and mask.any():
            _check_gradients_once(model, logits, x, y, mask, (low, high))
        todo = np.flatnonzero(mask)
        out = (self._drive(model, logits, x, y, target, indices, todo, (low, high), batch_size, progress)
               if len(todo) else None)
        result = self._assemble_result(model, logits, x, y, target, indices, batch_size, todo, out)
        result.seconds = time.perf_counter() - started
        return result

    def _drive(self, model, logits, x, y, target, indices, todo, value_range, batch_size, progress) -> Outcome:
        """Every run of the attack over the images ``todo``, merged into one worst case per image.

        The one driver of every attack: run ``r`` (:meth:`runs`) attacks the points no earlier run
        broke (every point, if :attr:`improves_broken`; clean mistakes too, unless
        :attr:`attacks_clean_mistakes` is off); per point a broken candidate beats an unbroken one,
        and among equals the one of higher rank wins. Step attacks run in segments
        on the points still standing (:meth:`robust.attacks.steps.StepAttack._run`).
        """
        points = standing_points(model, logits, x, y, target, todo, batch_size)
        n, keys_from = len(points.x), indices[todo]
        skip = np.zeros(n, bool) if self.attacks_clean_mistakes else points.broken.copy()
        found, adv, rank = skip.copy(), points.x.copy(), np.full(n, -np.inf, np.float32)
        for number in range(self.runs(logits.num_classes)):
            active = np.flatnonzero(~skip if self.improves_broken else ~found)
            if len(active) == 0:
                break
            extra = [np.asarray(e, np.int32)[active] for e in self.run_inputs(points.logits, number)]
            x_run, ok, score = self._run(model, logits, points, active, extra, number, keys_from[active],
                                         value_range, batch_size, progress)
            had = found[active]
            take = (ok & ~had) | ((ok == had) & (score > rank[active]))  # broken first, then the higher rank
            adv[active[take]], rank[active[take]] = x_run[take], score[take]
            found[active] |= ok
        return driver_outputs(model, logits, self.norm, points, adv, batch_size)

    def _assemble_result(self, model, logits, x, y, target, indices, batch_size, todo, out):
        """A result over all images: the driver's outputs on ``todo``, every other image unchanged
        (its clean predictions from one forward pass over just those images)."""
        n = len(x)
        fields = {"x_adv": x.copy(), "labels": np.full(n, -1, np.int64), "clean_pred": np.zeros(n, np.int64),
                  "clean_confidence": np.zeros(n, np.float32), "adv_pred": np.zeros(n, np.int64),
                  "adv_confidence": np.zeros(n, np.float32), "perturbation": np.zeros(n, np.float32),
                  "score": np.zeros(n, np.float32)}
        rest = np.ones(n, bool)
        rest[todo] = False
        if rest.any():
            pred, conf, score = _predict(model, logits, x[rest], None if y is None else y[rest],
                                         None if target is None else target[rest], batch_size)
            fields["labels"][rest] = pred if y is None else y[rest]
            fields["clean_pred"][rest] = fields["adv_pred"][rest] = pred
            fields["clean_confidence"][rest] = fields["adv_confidence"][rest] = conf
            fields["score"][rest] = score
        for name, values in (out._asdict().items() if out is not None else ()):
            fields[name][todo] = values
        attacked = np.zeros(n, bool)
        attacked[todo] = True
        return AttackResult(
            **fields, labels_from=LABELS_GIVEN if y is not None else LABELS_PREDICTED, seconds=0.0,
            attack=self.name, norm=self.norm.name, eps=self.eps, params=self.params, target=target,
            logits_kind=logits.kind, indices=indices, attacked=attacked,
        )


#: Per model, the fingerprints of the weights whose input gradient passed :func:`check_gradients`.
_GRADIENTS_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _check_gradients_once(model, logits: Logits, x, y, mask, value_range) -> None:
    """:func:`check_gradients` on the first 64 images of ``mask``, once per model and weight values.

    A sweep, an ensemble or a study calls attacks many times on one model; whether its input
    gradient is usable depends on the model and its weights, so a pass is remembered per weight
    fingerprint (per tensor: its shape and sum) and retraining checks again. On a
    small CNN the check cost about 6% of an FGSM call over 1,000 images.
    """
    fingerprint = weights_fingerprint(model, logits)
    if fingerprint in _GRADIENTS_CHECKED.get(model, ()):
        return
    first = np.flatnonzero(mask)[:64]
    check_gradients(model, x[first], None if y is None else y[first], value_range=value_range)
    _GRADIENTS_CHECKED.setdefault(model, set()).add(fingerprint)


def weights_fingerprint(model, logits: Logits) -> tuple:
    """Per weight tensor its shape and sum, computed where the weights live (one compiled call): cheap
    enough to call per attack, and it changes when the model is trained further."""
    def build(proxy):
        return backend.compile(lambda state: ops.stack([ops.sum(ops.cast(v, "float32")) for v in state] or [0.0]),
                               [logits.state_signature()])

    state = logits.state()
    sums = backend.to_numpy(cached(model, ("weight-sums",), build)(state))
    return tuple(zip((tuple(v.shape) for v in state), map(float, sums)))


def _predict(model, logits: Logits, x: np.ndarray, y, target, batch_size: int):
    """Clean predictions, confidences and boundary scores of images that are not attacked."""
    return read_logits(clean_logits(model, logits, x, batch_size), y, target)


def _check_indices(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n)
    idx = np.asarray(indices)
    if idx.shape != (n,) or idx.dtype.kind not in "iu" or (n and idx.min() < 0):
        raise RobustError(f"indices must hold one non-negative integer image index per image, shape ({n},); "
                          f"received dtype {idx.dtype} and shape {idx.shape}.")
    return idx.astype(np.int64)


def _check_mask(mask, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, bool)
    m = np.asarray(mask)
    if m.shape != (n,) or m.dtype != bool:
        raise RobustError(f"mask must be a boolean array with one entry per image, shape ({n},); "
                          f"received dtype {m.dtype} and shape {m.shape}.")
    return m.copy()
