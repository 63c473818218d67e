"""Compaction: an iterative attack's steps in segments, each on the points still standing.

In one compiled loop over all steps, a point broken at step 3 takes every
remaining step for nothing. Run the loop instead in segments of a few steps
and, before each, drop the points already broken. A point's trajectory
depends only on its own state and its per-image random key (never on the
rest of the batch), so a point that stands takes exactly the steps of the
single loop, and the set of broken points is the single loop's; a broken
point keeps the adversarial iterate it had when it was dropped.

The attack driver (:meth:`robust.attacks.Attack._drive`) uses this module:
:func:`standing_points` before the runs, :func:`run_segments` for a step
attack's segment kernel (:mod:`robust.attacks.steps`), ``kernel(state,
*fixed, *carried, keys, first, count, last, *constants) -> carried``:
``count`` steps from step ``first`` (a fresh start when ``first`` is 0),
finishing when ``last`` is 1; and :func:`driver_outputs` after.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from robust import backend
from robust.attacks.driver import Outcome, run_batches
from robust.attacks.norms import Norm
from robust.gradients import Logits, batches, cached


def clean_logits(model, logits: Logits, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's logits on ``x``, batch by batch, from a compiled forward pass, as one numpy array.

    Compiled once per model and image shape: called eagerly, a Keras model took about five times
    as long on LeNet-5 (13% of a PGD-40 sweep's time went to these passes).
    """
    def build(proxy):
        def forward(state, images):
            return logits.bind(state)(images)

        return backend.compile(forward, [logits.state_signature(), backend.spec((None,) + tuple(x.shape[1:]))])

    kernel, state = cached(model, ("logits", tuple(x.shape[1:])), build), logits.state()
    parts = [backend.to_numpy(kernel(state, backend.tensor(x[s:e]))) for s, e in batches(len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, logits.num_classes), np.float32)


def read_logits(z: np.ndarray, y, target):
    """``(pred, confidence, score)`` per image from logits ``z``: the fields of an :class:`AttackResult`.

    ``score`` is the margin past the decision boundary (see ``AttackResult.score``): best other
    logit minus the label's (untargeted, label ``y`` or the prediction) or the target's logit minus
    the best other (targeted).
    """
    pred = z.argmax(axis=1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    conf = (p.max(axis=1) / p.sum(axis=1)).astype(np.float32)
    goal = (target if target is not None else (pred if y is None else y)).astype(np.int64)
    own = z[np.arange(len(z)), goal]
    others = np.where(np.eye(z.shape[1], dtype=bool)[goal], -np.inf, z).max(axis=1)
    score = (own - others) if target is not None else (others - own)
    return pred, conf, score.astype(np.float32)


@dataclasses.dataclass
class Points:
    """The images a compacted driver attacks, with what it knows of them before the first step."""

    x: np.ndarray
    labels: np.ndarray
    target: np.ndarray | None
    goal: np.ndarray
    logits: np.ndarray
    clean_pred: np.ndarray
    clean_confidence: np.ndarray

    @property
    def broken(self) -> np.ndarray:
        """Already adversarial before any step: a clean mistake (at the target, if targeted)."""
        return self.clean_pred == self.target if self.target is not None else self.clean_pred != self.labels


def standing_points(model, logits: Logits, x, y, target, todo: np.ndarray, batch_size: int) -> Points:
    """The images ``todo`` with their labels (given, or predicted), goal and clean predictions."""
    xs = x[todo]
    ys = None if y is None else y[todo]
    ts = None if target is None else target[todo]
    z = clean_logits(model, logits, xs, batch_size)
    pred, conf, _ = read_logits(z, ys, ts)
    labels = pred if ys is None else ys
    goal = (labels if ts is None else ts).astype(np.int32)
    return Points(xs, labels, ts, goal, z, pred, conf)


def driver_outputs(model, logits: Logits, norm: Norm, points: Points, x_adv: np.ndarray, batch_size: int) -> Outcome:
    """What :meth:`Attack._drive` returns: images, labels, clean and adversarial predictions, sizes, scores."""
    z = clean_logits(model, logits, x_adv, batch_size)
    adv_pred, adv_conf, score = read_logits(z, points.labels, points.target)
    size = backend.to_numpy(norm.distance(backend.tensor(x_adv - points.x)))
    return Outcome(x_adv=x_adv, labels=points.labels, clean_pred=points.clean_pred,
                   clean_confidence=points.clean_confidence, adv_pred=adv_pred, adv_confidence=adv_conf,
                   perturbation=size, score=score)


def run_segments(kernel: Callable, state: list, fixed: Sequence[tuple[np.ndarray, str]],
                 carried: Sequence[np.ndarray], *, done: int | None, steps: int, every: int, constants: Sequence,
                 seed: int, indices: np.ndarray, batch_size: int) -> None:
    """Run ``steps`` steps of ``kernel`` in segments of ``every``, each on the points not yet done.

    Args:
        kernel: compiled, ``(state, *fixed, *carried, keys, first, count, last, *constants)``, returning
            the new ``carried``.
        state: the model's weight values.
        fixed: ``(array, dtype)`` per image, the same in every segment (images, goals).
        carried: per-image arrays the kernel updates; updated here in place.
        done: which of ``carried`` is the boolean "done" flag; a point whose flag is set takes no
            more steps (``None``: every point takes every step).
        steps, every: steps in all; steps per segment.
        constants: tensors passed after the segment's ``first, count, last``.
        seed, indices: the images' random keys ``(seed, indices[i])``.
        batch_size: images per kernel call.
    """
    dtypes = [backend_dtype(c) for c in carried]
    for first in range(0, max(steps, 1), every):  # no steps: one segment that starts and finishes
        active = np.flatnonzero(~carried[done]) if done is not None else np.arange(len(carried[0]))
        if len(active) == 0:
            return
        count = min(every, steps - first)
        per_image = [(a[active], dtype) for a, dtype in fixed] + [(c[active], d) for c, d in zip(carried, dtypes)]
        segment = [backend.tensor(v, "int32") for v in (first, count, int(first + count == steps))]
        out = run_batches(kernel, state, per_image, segment + list(constants), seed=seed, indices=indices[active],
                          batch_size=batch_size)
        for array, values in zip(carried, out):
            array[active] = values


def backend_dtype(array: np.ndarray) -> str:
    """The dtype name a carried array travels to the kernel as."""
    return "bool" if array.dtype == bool else ("int32" if array.dtype.kind in "iu" else "float32")
