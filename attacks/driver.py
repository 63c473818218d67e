"""The batching loop every compiled attack kernel runs under.

:func:`run_batches` feeds a compiled kernel slices of per-image arrays with
their random keys ``(seed, global image index)``, so an image gets the same
random numbers whatever the batch size or the other images of its batch,
and collects the outputs as numpy arrays. Norm-bounded attacks
(:class:`robust.attacks.Attack`) and fooling images share it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from robust import backend
from robust.gradients import batches


class Outcome(NamedTuple):
    """What an attack's driver returns for the images it attacked, one entry per image (see ``AttackResult``)."""

    x_adv: np.ndarray
    labels: np.ndarray
    clean_pred: np.ndarray
    clean_confidence: np.ndarray
    adv_pred: np.ndarray
    adv_confidence: np.ndarray
    perturbation: np.ndarray
    score: np.ndarray


def progress_bar(items: Sequence, enabled: bool, desc: str):
    """A tqdm bar over batches on a terminal with more than one batch; the plain sequence otherwise."""
    if not enabled or len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)


def run_batches(kernel: Callable, state: list, per_image: Sequence[tuple[np.ndarray, str]], constants: Sequence,
                *, seed: int, indices: np.ndarray, batch_size: int, progress: bool = False,
                desc: str = "") -> list[np.ndarray]:
    """Call ``kernel(state, *batch_arrays, keys, *constants)`` over batches and stitch its outputs.

    Args:
        kernel: a compiled function returning a tuple of per-image tensors.
        state: the model's weight values (its first argument).
        per_image: ``(array, dtype)`` pairs sliced along the first axis.
        constants: tensors passed unchanged to every call, after the keys.
        seed, indices: each image's random key is ``(seed, indices[i])``.
        batch_size: images per call.
        progress: a progress bar over batches (terminal only).
        desc: the bar's label.

    Returns:
        The kernel's outputs, each a numpy array over all ``len(indices)`` images.
    """
    n = len(indices)
    keys = backend.image_keys(seed, indices)
    out: list[Any] | None = None
    for s, e in progress_bar(batches(n, batch_size), progress, desc):
        args = [backend.tensor(a[s:e], dtype) for a, dtype in per_image]
        result = kernel(state, *args, backend.tensor(keys[s:e], "int32"), *constants)
        result = [backend.to_numpy(r) for r in result]
        if out is None:
            out = [np.empty((n,) + r.shape[1:], r.dtype) for r in result]
        for target, r in zip(out, result):
            target[s:e] = r
    return out or []
