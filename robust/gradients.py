"""Input gradients of any Keras classifier: the code every attack runs on.

* :func:`model_logits` turns a model into a function returning logits,
  removing a final softmax (a saturated softmax has a zero gradient, so an
  attack through it would report false robustness);
* :func:`objective` is the per-example number attacks ascend: the
  cross-entropy or the margin (Carlini & Wagner 2017) loss, negated for
  targeted attacks;
* :func:`input_gradient` and :func:`saliency_map` (Simonyan et al. 2014,
  "Deep inside convolutional networks") expose the same gradient to users;
* :func:`check_gradients` refuses models whose input gradient is missing or
  zero (argmax or rounding layers): any robustness number measured on them
  would be meaningless (gradient masking, Athalye et al. 2018).
* ``check_*`` validate images, labels and value ranges with readable errors.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops

from robust import backend
from robust.errors import RobustError, known_names

LOSSES = ("ce", "margin", "dlr")


# ---------------------------------------------------------------- input checks

def check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` as floats, or a RobustError."""
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise RobustError(f"value_range must be two numbers (low, high) such as (0.0, 1.0); "
                          f"received {value_range!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise RobustError(f"value_range must be finite with low < high, such as (0.0, 1.0); "
                          f"received ({low}, {high}).")
    return low, high


def check_images(model, x, value_range: tuple[float, float], *, name: str = "x") -> np.ndarray:
    """``x`` as a float32 array of images the model accepts, inside ``value_range``, without NaN or inf.

    No full-size temporary is made: min and max propagate NaN and inf.
    """
    from robust.models import check_model_input

    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:
            raise RobustError(f"{name} must be an array of images; received {type(x).__name__}.") from None
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise RobustError(f"{name} must be a numeric array of images with a batch axis first, such as "
                          f"(n, 28, 28, 1); received an array of dtype {x.dtype} and shape {x.shape}.")
    if len(x) == 0:
        raise RobustError(f"{name} holds no images (shape {x.shape}); pass at least one image.")
    check_model_input(model, x.shape[1:], data_name=name)
    low, high = value_range
    lo_seen, hi_seen = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo_seen) and np.isfinite(hi_seen)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise RobustError(f"{name} contains {bad} NaN or infinite value(s). Attacks need finite images in "
                          f"[{low:g}, {high:g}]; remove or repair those images first.")
    tol = 1e-6 * (high - low)
    if lo_seen < low - tol or hi_seen > high + tol:
        raise RobustError(
            f"{name} has values in [{lo_seen:g}, {hi_seen:g}] but the model's value range is "
            f"[{low:g}, {high:g}]. Scale the images to the range the model was trained on (e.g. divide "
            f"0-255 pixels by 255), or pass the right value_range (--value-range is taken from the model card)."
        )
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def check_labels(labels, n: int, num_classes: int, *, name: str = "y") -> np.ndarray | None:
    """Integer class labels of shape (n,) (one-hot (n, classes) is accepted), or ``None`` when not given."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape == (n, num_classes) and y.dtype.kind in "fiub":
        y = np.argmax(y, axis=1)
    if y.ndim != 1 or len(y) != n:
        raise RobustError(
            f"{name} must hold one integer class label per image: shape ({n},) (or one-hot ({n}, "
            f"{num_classes})); received shape {y.shape}."
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise RobustError(f"{name} must hold integer class labels; received non-integer values such as "
                              f"{y[(~np.isfinite(y)) | (y != np.round(y))][:3].tolist()}.")
    elif y.dtype.kind not in "iub":
        raise RobustError(f"{name} must hold integer class labels; received dtype {y.dtype}.")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise RobustError(
            f"{name} has labels outside 0..{num_classes - 1} (the model has {num_classes} outputs), "
            f"e.g. {sorted(set(y[bad].tolist()))[:5]}. Pass labels of this model's classes."
        )
    return y


def batches(n: int, batch_size: int):
    """``(start, stop)`` pairs covering ``range(n)``."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise RobustError(f"batch_size must be a positive integer; received {batch_size!r}.")
    return [(s, min(s + int(batch_size), n)) for s in range(0, n, int(batch_size))]


# ------------------------------------------------------------- logits and loss

class Logits:
    """A model seen as a pure function of its weights and a batch of images to logits.

    Compiled kernels never capture the live weights: they take
    :meth:`state` as an argument and call :meth:`bind` on it, so one kernel
    serves every weight update (training, a reloaded checkpoint) and never
    attacks stale weights.

    Attributes:
        fn: ``fn(x) -> logits`` written with ``keras.ops`` (reads the model's variables).
        kind: ``"logits"``, ``"logits (the final softmax removed)"`` or
            ``"log-probabilities (the model outputs probabilities)"``.
        num_classes: number of outputs.
        variables: the model variables ``fn`` reads; their values are the state.
    """

    def __init__(self, fn: Callable, kind: str, num_classes: int, variables: Sequence, aliases: Sequence = ()):
        self.fn, self.kind, self.num_classes = fn, kind, num_classes
        self.variables = list(variables)
        # (a variable of a helper layer, the index of the model variable whose value it must read)
        self._aliases = list(aliases)

    def state(self) -> list:
        """The current weight values: the first argument of every compiled kernel."""
        return backend.model_state(self.variables)

    def state_signature(self) -> list:
        return [backend.spec(tuple(v.shape), v.dtype) for v in self.variables]

    def bind(self, state) -> Callable:
        """``x -> logits`` computed with the weight values ``state`` (inside compiled code).

        The returned function carries ``num_classes`` like the :class:`Logits` it came from.
        """
        variables = self.variables + [alias for alias, _ in self._aliases]
        values = list(state) + [state[index] for _, index in self._aliases]

        def call(x):
            with backend.stateless(variables, values):
                return self.fn(x)

        call.num_classes = self.num_classes
        return call

    def __call__(self, x):
        return self.fn(x)


def _squash(activation) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` when ``activation`` squashes scores into probabilities, else ``None``."""
    name = getattr(activation, "__name__", "")
    return name if name in ("softmax", "sigmoid") else None


def _squashing_head(model):
    """``(layer, "softmax" | "sigmoid")`` when the model's output comes from a squashing activation, else ``None``."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    try:
        head = outputs[0]._keras_history.operation
    except AttributeError:
        return None
    if isinstance(head, keras.layers.Softmax):
        return head, "softmax"
    kind = _squash(getattr(head, "activation", None))
    return (head, kind) if kind else None


def _logits_without_softmax(model, head) -> tuple[Callable, list]:
    """``(fn, aliases)``: the model up to its softmax head, then the head without its activation."""
    features = keras.Model(model.inputs, head.input)
    if isinstance(head, (keras.layers.Softmax, keras.layers.Activation)):
        return (lambda x: features(x, training=False)), []
    if isinstance(head, keras.layers.Dense):
        def dense_logits(x):
            z = ops.matmul(features(x, training=False), head.kernel)
            return z + head.bias if head.bias is not None else z
        return dense_logits, []
    # Any other layer with a softmax activation: a linear twin whose variables read the head's values.
    config = dict(head.get_config(), activation="linear", name=f"{head.name}_logits")
    twin = type(head).from_config(config)
    twin.build(head.input.shape)
    index = {id(v): i for i, v in enumerate(model.variables)}
    aliases = [(t, index[id(h)]) for t, h in zip(twin.variables, head.variables)]
    return (lambda x: twin(features(x, training=False))), aliases


def model_logits(model, sample: np.ndarray) -> Logits:
    """How to get logits from ``model``, detected once per model and cached.

    A final softmax or sigmoid layer (or activation) is removed; a model that
    cannot be looked into but outputs probabilities on ``sample`` is used
    through its log-probabilities (softmax) or log-odds (sigmoid). Each case
    warns: attacks must never differentiate a saturated softmax or sigmoid.
    """

    def build(proxy):
        found = _squashing_head(model)
        aliases = []
        if found is not None:
            head, squash = found
            fn, aliases = _logits_without_softmax(model, head)
            kind = f"logits (the final {squash} removed)"
            warnings.warn(
                f"Model {model.name!r} ends with a {squash} ({head.name!r}); attacks use the logits before it, "
                f"because the gradient of a saturated {squash} is zero and would make the model look robust.",
                stacklevel=4,
            )
        else:
            fn, kind = (lambda x: proxy(x, training=False)), "logits"
        out = backend.to_numpy(fn(backend.tensor(sample[:8])))
        if out.ndim != 2 or out.shape[1] < 2:
            raise RobustError(
                f"Model {model.name!r} must output one score per class, shape (batch, classes) with at least "
                f"2 classes; received output shape {out.shape}."
            )
        if found is None and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
            fn = _log_probabilities(fn)
            kind = "log-probabilities (the model outputs probabilities)"
            warnings.warn(
                f"Model {model.name!r} appears to output probabilities (non-negative, summing to 1); attacks "
                "use their logarithm. Prefer a model that outputs logits: a saturated softmax has no gradient.",
                stacklevel=4,
            )
        elif found is None and looks_like_sigmoid(out):
            fn = _log_odds(fn)
            kind = "log-odds (the model outputs independent sigmoid probabilities)"
            warnings.warn(
                f"Model {model.name!r} appears to output one sigmoid probability per class (each in (0, 1), rows "
                "not summing to 1); attacks use their log-odds, which rank the classes the same way. Prefer a "
                "model that outputs logits: a saturated sigmoid has no gradient.",
                stacklevel=4,
            )
        return Logits(fn, kind, int(out.shape[1]), model.variables, aliases)

    return cached(model, ("logits",), build)


# Compiled kernels are cached per model, keyed by their configuration. The model is a weak key and
# kernels reach it only through a weak proxy, so dropping a model frees its kernels. Kernels take the
# weights as an argument (Logits.bind), so a cached kernel is never stale.
_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def cached(model, key: tuple, build: Callable[[Any], Any]):
    """``build(model_proxy)`` once per ``(model, key)``; later calls return the same object."""
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build(weakref.proxy(model))
    return per_model[key]


def cache_size(model) -> int:
    """How many compiled kernels are cached for ``model`` (for tests and benchmarks)."""
    return len(_CACHE.get(model, {}))


def _log_probabilities(fn):
    return lambda x: ops.log(ops.maximum(fn(x), 1e-30))


def looks_like_sigmoid(scores: np.ndarray) -> bool:
    """Whether a model's scores on a few images look like independent sigmoid probabilities.

    Every score strictly inside (0, 1), rows not summing to 1 (a softmax), and not all equal: logits
    of a model with no signal (zero weights, an all-zero input) are all 0 and are not probabilities.
    """
    scores = np.asarray(scores, np.float64)
    return bool(scores.size and np.all((scores > 0) & (scores < 1)) and np.ptp(scores) > 0
                and not np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3))


def _log_odds(fn):
    """The logits behind sigmoid outputs: log(p) - log(1 - p), bounded where p is exactly 0 or 1."""
    def log_odds(x):
        p = fn(x)
        return ops.log(ops.maximum(p, 1e-30)) - ops.log(ops.maximum(1.0 - p, 1e-30))
    return log_odds


def cross_entropy(logits, labels):
    """Per-example cross-entropy of ``labels`` under softmax(``logits``)."""
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def margin(logits, labels):
    """Per-example margin loss: best other logit minus the label's logit (Carlini & Wagner 2017).

    Positive exactly when the example is misclassified; it does not saturate
    when the softmax does.
    """
    onehot = ops.one_hot(labels, ops.shape(logits)[-1], dtype=logits.dtype)
    own = ops.sum(logits * onehot, axis=-1)
    other = ops.max(ops.where(onehot > 0, ops.full_like(logits, -np.inf), logits), axis=-1)
    return other - own


#: The fewest classes each loss that reads the sorted logits needs.
MIN_CLASSES = {"dlr": 3, "targeted dlr": 4}


def check_classes(loss: str, num_classes: int | None) -> None:
    """Refuse a model with fewer classes than ``loss`` reads (``"dlr"``, ``"targeted dlr"``; others need 2)."""
    minimum = MIN_CLASSES.get(loss, 2)
    if num_classes is not None and int(num_classes) < minimum:
        raise RobustError(
            f"The {loss.replace('dlr', 'DLR')} loss compares the {minimum} largest logits, so it needs a model with "
            f"at least {minimum} classes; received logits with {int(num_classes)} classes. Use the cross-entropy "
            f"loss (loss='ce') instead."
        )


def dlr(logits, labels):
    """Per-example Difference of Logits Ratio loss (Croce & Hein 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", ICML 2020).

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted logits: the
    margin divided by a spread of the logits, so it is unchanged when the logits are scaled or shifted
    (``a * z + b``, ``a > 0``) and cannot be defeated by inflating them. Positive exactly when the
    example is misclassified. Needs at least 3 classes.
    """
    check_classes("dlr", logits.shape[-1])
    top = ops.top_k(logits, 3, sorted=True)[0]
    return margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits, labels, targets):
    """Per-example targeted DLR loss (Croce & Hein 2020), ascended to move ``labels`` towards ``targets``.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; invariant to ``a * z + b`` (``a > 0``).
    Needs at least 4 classes.
    """
    check_classes("targeted dlr", logits.shape[-1])
    top = ops.top_k(logits, 4, sorted=True)[0]
    classes = ops.shape(logits)[-1]
    own = ops.sum(logits * ops.one_hot(labels, classes, dtype=logits.dtype), axis=-1)
    aim = ops.sum(logits * ops.one_hot(targets, classes, dtype=logits.dtype), axis=-1)
    return (aim - own) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_divergence(reference_logits, logits):
    """Per-example KL(softmax(reference) || softmax(logits)), from log-probabilities (no clipping).

    The boundary term of TRADES (Zhang et al. 2019, "Theoretically principled
    trade-off between robustness and accuracy"): the adversarial example
    ascends it, and training weighs it by beta next to the clean cross-entropy.
    """
    reference = ops.log_softmax(reference_logits, axis=-1)
    return ops.sum(ops.exp(reference) * (reference - ops.log_softmax(logits, axis=-1)), axis=-1)


_LOSS_FNS = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def check_loss(loss: str) -> str:
    if loss not in _LOSS_FNS:
        raise RobustError(f"Unknown loss {loss!r}. Known losses: {known_names(_LOSS_FNS)} "
                          "(cross-entropy; the margin / C&W loss and the scale-invariant DLR loss resist a "
                          "saturated softmax).")
    return loss


def objective(logits, labels, *, loss: str = "ce", targeted: bool = False):
    """The per-example number an attack ascends.

    Untargeted: the loss of the true label (move away from it). Targeted:
    minus the loss of the target (move towards it).
    """
    value = _LOSS_FNS[loss](logits, labels)
    return -value if targeted else value


def success(logits, labels, *, targeted: bool = False):
    """Per-example success: misclassified (untargeted) or classified as the target (targeted)."""
    pred = ops.cast(ops.argmax(logits, axis=-1), labels.dtype)
    return ops.equal(pred, labels) if targeted else ops.not_equal(pred, labels)


# ------------------------------------------------------------------- gradients

def class_logit(logits, labels):
    """Per-example logit of ``labels`` (the score saliency maps differentiate)."""
    return ops.sum(logits * ops.one_hot(labels, ops.shape(logits)[-1], dtype=logits.dtype), axis=-1)


def _gradient_kernel(model, logits: Logits, image_shape, key: tuple, score: Callable):
    """Compiled ``(state, x, labels) -> (d score / dx, whether a gradient exists)``, cached per (model, key).

    ``score(logits, labels)`` gives one number per example. The gradient is
    zeros and "exists" False when the score does not depend differentiably
    on the input (known while tracing).
    """

    def build(proxy):
        def fn(state, x, labels):
            bound = logits.bind(state)
            _, grad, _ = backend.value_and_grad(lambda xt, yt: (score(bound(xt), yt), None))(x, labels)
            if grad is None:
                return ops.zeros_like(x), False
            return grad, True

        return backend.compile(fn, [logits.state_signature(), backend.spec((None,) + tuple(image_shape)),
                                    backend.spec((None,), "int32")])

    return cached(model, ("gradient", key, tuple(image_shape)), build)


def _gradients(model, logits: Logits, x: np.ndarray, y: np.ndarray | None, key: tuple, score: Callable,
               batch_size: int = 256) -> tuple[np.ndarray, bool]:
    """Per-example input gradients of ``score`` over ``x`` in batches; labels default to the predictions."""
    kernel = _gradient_kernel(model, logits, x.shape[1:], key, score)
    state = logits.state()
    out, exists = np.empty_like(x), True
    for s, e in batches(len(x), batch_size):
        xb = backend.tensor(x[s:e])
        yb = y[s:e] if y is not None else np.argmax(backend.to_numpy(logits(xb)), axis=1)
        grad, ok = kernel(state, xb, backend.tensor(yb, "int32"))
        out[s:e], exists = backend.to_numpy(grad), exists and bool(backend.to_numpy(ok))
    return out, exists


def check_gradients(model, x, y=None, *, value_range: Sequence[float] = (0.0, 1.0), limit: int = 64) -> None:
    """Refuse a model whose input gradient is missing or zero everywhere on ``x`` (its first ``limit`` images).

    The margin loss is used because it does not saturate, so a confident
    but honest model still has a non-zero gradient. Gradient attacks call
    this once per call, on the images they attack first; it runs compiled
    and costs about one gradient pass over ``limit`` images.

    Raises:
        RobustError: the gradient is ``None`` (an argmax, rounding or other
            non-differentiable layer), not finite, or zero for every image.
    """
    low, high = check_value_range(value_range)
    x = check_images(model, x, (low, high))
    logits = model_logits(model, x)
    y = check_labels(y, len(x), logits.num_classes)
    x, y = x[:limit], (None if y is None else y[:limit])
    refuse = ("Any robustness number measured this way would be meaningless: the attack would fail "
              "because it is blind, not because the model is robust (gradient masking, Athalye et al. 2018). "
              "Remove the non-differentiable layer (argmax, rounding, quantisation) for the attack, or "
              "evaluate with a gradient-free attack such as Square (--attack square).")
    try:
        grad, exists = _gradients(model, logits, x, y, ("margin",), margin)
    except backend.GRADIENT_ERRORS as exc:  # an operation without a registered gradient
        raise RobustError(f"Model {model.name!r} contains an operation without a gradient "
                          f"({str(exc).splitlines()[0]}). {refuse}") from None
    if not exists:
        raise RobustError(f"Model {model.name!r} has no gradient with respect to its input: the output does "
                          f"not depend differentiably on the image (e.g. an argmax or rounding layer). {refuse}")
    if not np.all(np.isfinite(grad)):
        raise RobustError(f"Model {model.name!r} has a NaN or infinite input gradient on these images. {refuse}")
    if not np.any(grad):
        raise RobustError(f"Model {model.name!r} has an input gradient of exactly zero on all {len(x)} images "
                          f"checked (e.g. a rounding or step layer). {refuse}")


def input_gradient(model, x, y=None, *, loss: str = "ce", targeted: bool = False,
                   value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256) -> np.ndarray:
    """The gradient of the attack objective with respect to each input image.

    The same compiled code the attacks step along: for ``loss="ce"`` and
    ``targeted=False`` it is the gradient of each example's cross-entropy.

    Args:
        model: a Keras classifier (logits; a final softmax is removed).
        x: images, shape (n, *model input), inside ``value_range``.
        y: labels (n,); the model's predictions when ``None``.
        loss: ``"ce"`` or ``"margin"``.
        targeted: gradient of minus the loss of ``y`` as targets.
        value_range: the images' (low, high).
        batch_size: images per compiled call.

    Returns:
        float32 array shaped like ``x``.

    Example:
        >>> g = input_gradient(model, x_test[:10], y_test[:10])
    """
    check_loss(loss)
    x = check_images(model, x, check_value_range(value_range))
    logits = model_logits(model, x)
    y = check_labels(y, len(x), logits.num_classes)
    grad, _ = _gradients(model, logits, x, y, ("objective", loss, targeted),
                         lambda z, t: objective(z, t, loss=loss, targeted=targeted), batch_size)
    return grad


def saliency_map(model, x, y=None, *, value_range: Sequence[float] = (0.0, 1.0),
                 batch_size: int = 256) -> np.ndarray:
    """Image-specific class saliency (Simonyan, Vedaldi, Zisserman 2014).

    The gradient of the class logit (``y``, or the predicted class) with
    respect to the image, its absolute value maximised over channels and
    scaled to [0, 1] per image.

    Returns:
        float32 array (n, H, W).

    Example:
        >>> s = saliency_map(model, x_test[:16])   # s[i].max() == 1 unless the gradient is 0
    """
    x = check_images(model, x, check_value_range(value_range))
    logits = model_logits(model, x)
    y = check_labels(y, len(x), logits.num_classes)
    grad, _ = _gradients(model, logits, x, y, ("class_logit",), class_logit, batch_size)
    g = np.abs(grad)
    if g.ndim == 4:
        g = g.max(axis=-1)
    top = g.reshape(len(g), -1).max(axis=1).reshape((-1,) + (1,) * (g.ndim - 1))
    out = np.where(top > 0, g / np.where(top > 0, top, 1), 0).astype(np.float32)
    return out
