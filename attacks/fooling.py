"""Fooling images (Nguyen, Yosinski, Clune 2015), with the regularisers of Yosinski et al. 2015.

Nguyen et al., "Deep neural networks are easily fooled: high confidence
predictions for unrecognizable images", CVPR 2015; Yosinski, Clune, Nguyen,
Fuchs, Lipson, "Understanding neural networks through deep visualization",
ICML Deep Learning Workshop 2015.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.base import check_number
from robust.attacks.driver import run_batches
from robust.errors import RobustError
from robust.gradients import (
    Logits,
    cached,
    check_gradients,
    check_images,
    check_labels,
    check_value_range,
    model_logits,
)


@dataclasses.dataclass
class FoolingResult:
    """Images the model assigns to a class with high confidence.

    Attributes:
        images: (n, H, W, C) float32 in the value range.
        target: (n,) the class each image was grown for (class-major: all seeds of the first class first).
        confidence: (n,) the model's softmax probability of ``target`` on the final image.
        predicted: (n,) the model's predicted class on the final image.
        steps: (n,) gradient steps taken until the threshold was reached (``max_steps`` if never).
        reached: (n,) whether ``confidence >= threshold``.
        threshold: the confidence asked for.
        seconds: wall-clock time of the call.
    """

    images: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    predicted: np.ndarray
    steps: np.ndarray
    reached: np.ndarray
    threshold: float
    seconds: float


def gaussian_kernel(sigma: float, channels: int) -> np.ndarray:
    radius = max(1, int(math.ceil(2 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    k = np.outer(g, g).astype(np.float32)
    return np.repeat(k[:, :, None, None], channels, axis=2)  # (k, k, C, 1) for a depthwise convolution


class FoolingImages:
    """Fooling images (Nguyen et al. 2015): grow an image the model calls class c with high confidence.

    Starting from uniform noise (or a given image), ascend the log-probability
    of the target class along the sign of its input gradient, for every
    requested class at once, until the model's softmax confidence reaches
    ``threshold``; images that reach it stop changing. The optional
    regularisers of Yosinski et al. 2015 (L2 decay towards the low end of
    the value range, periodic Gaussian blur, random jitter) give smoother,
    more recognisable images. The loop runs in one compiled graph and stops
    early when every image of a batch has reached the threshold.

    Distance measure: none (the images are unconstrained inside the value range).

    Args:
        threshold: confidence to reach, in (0, 1); 0.99 as in the paper's fooling criterion.
        max_steps: most gradient steps per image.
        step_size: change of each pixel per step; ``None`` means 1% of the value range.
        l2_decay: fraction by which the image shrinks towards the range's low end each step (0 = off).
        blur_every: blur with a Gaussian every this many steps (0 = off).
        blur_sigma: standard deviation of that blur, in pixels.
        jitter: shift the image by up to this many pixels at random before each gradient (0 = off).
        seed: seed of the noise, the jitter and nothing else.

    Example:
        >>> result = FoolingImages(threshold=0.99)(model, classes=[3, 7], seeds=4)
        >>> result.reached.all(), result.steps
        >>> smoother = FoolingImages(l2_decay=0.001, blur_every=10, blur_sigma=0.5, jitter=1)(model)

    Strong regularisers (e.g. ``blur_every=4, blur_sigma=1``) can keep an
    image below the threshold; ``reached`` says which images got there.
    """

    name = "fooling"

    def __init__(self, *, threshold: float = 0.99, max_steps: int = 1000, step_size: float | None = None,
                 l2_decay: float = 0.0, blur_every: int = 0, blur_sigma: float = 1.0, jitter: int = 0,
                 seed: int = 0):
        self.threshold = check_number("threshold", threshold, positive=True)
        if self.threshold >= 1:
            raise RobustError(f"threshold must be a confidence below 1, such as 0.99; received {threshold!r}.")
        self.max_steps = check_number("max_steps", max_steps, integer=True, minimum=1)
        self.step_size = check_number("step_size", step_size, allow_none=True, positive=True)
        self.l2_decay = check_number("l2_decay", l2_decay, minimum=0.0)
        if self.l2_decay >= 1:
            raise RobustError(f"l2_decay must be in [0, 1), such as 0.01; received {l2_decay!r}.")
        self.blur_every = check_number("blur_every", blur_every, integer=True, minimum=0)
        self.blur_sigma = check_number("blur_sigma", blur_sigma, positive=True)
        self.jitter = check_number("jitter", jitter, integer=True, minimum=0)
        self.seed = check_number("seed", seed, integer=True, minimum=0, maximum=2**32 - 1)

    @property
    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("threshold", "max_steps", "step_size", "l2_decay", "blur_every",
                                              "blur_sigma", "jitter", "seed")}

    def __repr__(self) -> str:
        return f"FoolingImages({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def _compiled(self, model, logits: Logits, image_shape: tuple[int, ...]):
        key = ("FoolingImages", self.blur_every, self.blur_sigma, self.jitter, tuple(image_shape))
        blur_every, jitter = self.blur_every, self.jitter
        kernel = gaussian_kernel(self.blur_sigma, image_shape[-1]) if blur_every and len(image_shape) == 3 else None

        def confidence(z, target):
            return ops.take_along_axis(ops.softmax(z, axis=-1), ops.expand_dims(target, -1), axis=-1)[:, 0]

        def build(proxy):
            def run(state, x, target, keys, threshold, step_size, l2_decay, max_steps, low, high):
                bound = logits.bind(state)
                rng = backend.Rng(keys)
                pick_shape = (-1,) + (1,) * len(image_shape)

                def value(xt, t):
                    z = bound(xt)
                    return ops.take_along_axis(ops.log_softmax(z, axis=-1), ops.expand_dims(t, -1), axis=-1)[:, 0], z

                value_and_grad = backend.value_and_grad(value)

                def body(i, images, steps, reached):
                    if jitter:
                        shift = rng.fold(i).integers((ops.shape(target)[0], 2), -jitter, jitter + 1)
                        _, grad, _ = value_and_grad(_roll(images, shift[:, 0], shift[:, 1]), target)
                        grad = _roll(grad, -shift[:, 0], -shift[:, 1])
                        z = bound(images)
                    else:
                        _, grad, z = value_and_grad(images, target)
                    now = ops.logical_or(reached, confidence(z, target) >= threshold)
                    steps = ops.where(ops.logical_and(now, ops.logical_not(reached)), i, steps)
                    updated = images + step_size * ops.sign(grad)
                    updated = low + (updated - low) * (1.0 - l2_decay)
                    if kernel is not None:
                        blurred = ops.depthwise_conv(updated, kernel, strides=1, padding="same")
                        updated = ops.where(ops.equal((i + 1) % blur_every, 0), blurred, updated)
                    updated = ops.clip(updated, low, high)
                    images = ops.where(ops.reshape(now, pick_shape), images, updated)
                    return i + 1, images, steps, now

                def cond(i, images, steps, reached):
                    return ops.logical_and(i < max_steps, ops.logical_not(ops.all(reached)))

                batch = ops.shape(target)[:1]
                state0 = (ops.convert_to_tensor(0, "int32"), x, ops.full(batch, max_steps, "int32"),
                          ops.zeros(batch, "bool"))
                _, images, steps, _ = ops.while_loop(cond, body, state0)
                z = bound(images)
                return images, confidence(z, target), ops.cast(ops.argmax(z, axis=-1), "int32"), steps

            scalar = backend.spec(())
            signature = [logits.state_signature(), backend.spec((None,) + tuple(image_shape)),
                         backend.spec((None,), "int32"), backend.spec((None, 2), "int32"), scalar, scalar, scalar,
                         backend.spec((), "int32"), scalar, scalar]
            return backend.compile(run, signature)

        return cached(model, key, build)

    def __call__(self, model, classes: Sequence[int] | None = None, seeds: int = 1, *,
                 start: np.ndarray | None = None, value_range: Sequence[float] = (0.0, 1.0),
                 batch_size: int = 256, progress: bool = True) -> FoolingResult:
        """Grow ``seeds`` fooling images for each class in ``classes`` (all classes when ``None``).

        Args:
            model: a Keras classifier of images in ``value_range``.
            classes: class indices to target; all of the model's classes when ``None``.
            seeds: images per class, each from its own noise.
            start: start image(s) instead of noise: one image (H, W, C) for all, or one per
                generated image (len(classes) * seeds, H, W, C).
            value_range: (low, high) of valid pixel values.
            batch_size: images per compiled call.
            progress: show a progress bar over batches (only on a terminal).

        Returns:
            A :class:`FoolingResult`.
        """
        started = time.perf_counter()
        low, high = check_value_range(value_range)
        seeds = check_number("seeds", seeds, integer=True, minimum=1)
        image_shape = tuple(int(d) for d in model.input_shape[1:])
        if any(d is None for d in model.input_shape[1:]):
            if start is None:
                raise RobustError(f"Model {model.name!r} accepts images of any size ({model.input_shape}); "
                                  "pass start images so the fooling images have a size.")
        probe = check_images(model, np.full((1,) + image_shape, low, np.float32) if start is None
                             else np.asarray(start, np.float32).reshape((-1,) + np.shape(start)[-3:])[:1],
                             (low, high), name="start")
        image_shape = probe.shape[1:]
        logits = model_logits(model, probe)
        if classes is None:
            classes = list(range(logits.num_classes))
        class_array = check_labels(np.asarray(list(classes)), len(list(classes)), logits.num_classes,
                                   name="classes")
        target = np.repeat(class_array, seeds).astype(np.int32)
        n = len(target)
        if start is not None:
            start = check_images(model, np.asarray(start, np.float32).reshape((-1,) + image_shape),
                                 (low, high), name="start")
            if len(start) not in (1, n):
                raise RobustError(f"start must be one image or one per fooling image ({n} = {len(class_array)} "
                                  f"classes x {seeds} seeds); received {len(start)} images.")
        step_size = self.step_size if self.step_size is not None else 0.01 * (high - low)
        if start is None:
            start = _noise(self.seed, n, image_shape, low, high)
        x0 = np.ascontiguousarray(np.broadcast_to(start, (n,) + image_shape), dtype=np.float32)
        check_gradients(model, x0[:64], target[:64], value_range=(low, high))
        scalars = [backend.tensor(self.threshold), backend.tensor(step_size), backend.tensor(self.l2_decay),
                   backend.tensor(self.max_steps, "int32"), backend.tensor(low), backend.tensor(high)]
        images, conf, pred, steps = run_batches(
            self._compiled(model, logits, image_shape), logits.state(), [(x0, "float32"), (target, "int32")],
            scalars, seed=self.seed, indices=np.arange(n), batch_size=batch_size, progress=progress,
            desc="FoolingImages")
        out = {"images": images, "confidence": conf, "predicted": pred.astype(np.int64),
               "steps": steps.astype(np.int64)}
        return FoolingResult(images=out["images"], target=target.astype(np.int64), confidence=out["confidence"],
                             predicted=out["predicted"], steps=out["steps"],
                             reached=out["confidence"] >= self.threshold, threshold=self.threshold,
                             seconds=time.perf_counter() - started)


def _noise(seed: int, n: int, image_shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """Uniform start images, image ``i`` drawn from its own stream ``(seed, i)``."""
    return np.stack([np.random.default_rng([seed, i]).uniform(low, high, size=image_shape)
                     for i in range(n)]).astype(np.float32)


def _roll(images, rows, cols):
    """Each image shifted cyclically by its own ``(rows[i], cols[i])`` pixels (``np.roll`` per image)."""
    height, width = images.shape[1], images.shape[2]
    shape = ops.shape(images)
    r = ops.mod(ops.arange(height)[None, :] - rows[:, None], height)
    c = ops.mod(ops.arange(width)[None, :] - cols[:, None], width)
    out = ops.take_along_axis(images, ops.broadcast_to(r[:, :, None, None], shape), axis=1)
    return ops.take_along_axis(out, ops.broadcast_to(c[:, None, :, None], shape), axis=2)
