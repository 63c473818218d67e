"""Step attacks: an iterative attack written as a start and a step over named per-image state.

An attack that iterates (PGD, APGD, DeepFool, FMN, Carlini-Wagner) declares
its per-image state by name and kind in :attr:`StepAttack.state` and writes
four pure functions with ``keras.ops``, each reading the batch from a
:class:`~robust.attacks.base.Context`:

* :meth:`StepAttack.start` -- the state before the first step;
* :meth:`StepAttack.step` -- step number ``i``: state in, state out;
* :meth:`StepAttack.finish` -- after the last step (evaluate the last iterate, say);
* :meth:`StepAttack.outcome` -- what the run yields per image: ``(x_adv, found, rank)``.

Nothing else: the driver owns the rest. It compiles start, steps and finish
into one segment kernel (cached under :meth:`Attack.config`), runs the steps
in segments of :attr:`StepAttack.compact_every` on the points whose ``done``
flag is not yet set (compaction: a point's trajectory depends only on its own
state and random key, so it takes exactly the steps of one uninterrupted
loop), runs :meth:`Attack.runs` runs each on the points no earlier run broke,
and keeps per image the one worst case. Inside a compiled training step,
:meth:`StepAttack.perturb` runs the same functions as one loop.

Example -- basic iterative FGSM in L-inf, as a plugin would write it::

    class BIM(StepAttack):
        name = "bim"
        state = {"x": "image", "found": "flag", "loss": "vector"}

        def __init__(self, *, eps=0.1, steps=10, seed=0):
            super().__init__(eps=eps, seed=seed)
            self.steps = steps

        def start(self, ctx):
            n = ops.shape(ctx.x)[0]
            return {"x": ctx.x, "found": ops.zeros((n,), "bool"), "loss": ops.zeros((n,))}

        def step(self, ctx, i, s):
            loss, grad, z = ...                  # backend.value_and_grad of the loss at s["x"]
            moved = s["x"] + ctx.step_size * ops.sign(grad)
            x_new = ops.clip(ctx.x + ops.clip(moved - ctx.x, -ctx.eps, ctx.eps), ctx.low, ctx.high)
            return {"x": x_new, "found": success(z, ctx.goal), "loss": loss}

        def outcome(self, s):
            return s["x"], s["found"], s["loss"]
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.base import Attack, Context
from robust.attacks.compaction import Points, run_segments
from robust.errors import RobustError
from robust.gradients import Logits, cached

#: The kinds of per-image state, and the shape each has for a batch of ``n`` images.
KINDS = ("image", "vector", "flag", "logits", "classes")


class StepAttack(Attack):
    """Base of the iterative attacks: declare :attr:`state`, write :meth:`start`, :meth:`step`, :meth:`outcome`.

    Class attributes:
        state: per-image state, ``{name: kind}`` in a fixed order; kinds are ``"image"`` (shaped
            like an image), ``"vector"`` (a float per image), ``"flag"`` (a bool), ``"logits"``
            (a float per class) and ``"classes"`` (an int32 per image).
        done: the flag in :attr:`state` after which a point takes no more steps (``"found"``: a
            broken point is done); ``None`` for attacks that keep improving a broken point, such as
            the minimum-norm attacks, where every point takes every step.
        compact_every: steps per segment; between segments the done points are dropped from the
            batch (``None``: one segment of all steps).
        runtime: constructor parameters the segment kernel takes as arguments rather than constants
            (never part of the kernel's cache key; ``eps`` and ``seed`` always are).
    """

    state: ClassVar[dict[str, str]] = {}
    done: ClassVar[str | None] = "found"
    compact_every: ClassVar[int | None] = 10
    runtime: ClassVar[tuple[str, ...]] = ("eps", "seed")

    # --------------------------------------------------------- the step API

    def total_steps(self) -> int:
        """How many times :meth:`step` runs per run (``self.steps`` by default)."""
        return int(self.steps)

    def start(self, ctx: Context) -> dict:
        """The state before the first step (every entry of :attr:`state`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement start(ctx).")

    def step(self, ctx: Context, i, s: dict) -> dict:
        """Step number ``i`` (a scalar tensor, from 0): the new state."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(ctx, i, state).")

    def finish(self, ctx: Context, s: dict) -> dict:
        """The state after the last step (unchanged by default)."""
        return s

    def outcome(self, s: dict):
        """``(x_adv, found, rank)`` per image from a run's final state; ``rank`` orders the
        candidates of points no run broke (higher is closer to breaking)."""
        raise NotImplementedError(f"{type(self).__name__} must implement outcome(state).")

    # ------------------------------------------------------------- running

    def perturb(self, ctx: Context):
        """The whole run as one compiled loop (start, every step, finish): the adversarial images.

        Used where a run is part of a larger graph (adversarial training's step); the driver runs
        the same functions in segments instead.
        """
        s = self.start(ctx)
        s = ops.fori_loop(0, self.total_steps(), lambda i, s: self.step(ctx, i, s), s)
        return self.outcome(self.finish(ctx, s))[0]

    def _run(self, model, logits: Logits, points: Points, active: np.ndarray, extra: list, run: int,
             keys_from: np.ndarray, value_range, batch_size: int, progress: bool):
        """Run number ``run`` on the points ``active`` in segments: ``(x_adv, found, rank)``, numpy."""
        names = list(self.state)
        unknown = {k: v for k, v in self.state.items() if v not in KINDS}
        if unknown:
            raise RobustError(f"{type(self).__name__}.state: kinds must be one of {', '.join(KINDS)}; "
                              f"received {unknown}.")
        kernel = self._segment_kernel(model, logits, points.x.shape[1:], len(extra))
        carried = blank_state(self.state, len(active), points.x.shape[1:], logits.num_classes)
        steps = self.total_steps()
        every = self.compact_every or max(steps, 1)
        constants = [backend.tensor(run, "int32")] + [backend.tensor(v) for v in self._scalars(value_range)]
        run_segments(kernel, logits.state(), [(points.x[active], "float32"), (points.goal[active], "int32")]
                     + [(e, "int32") for e in extra], carried,
                     done=None if self.done is None else names.index(self.done), steps=steps, every=every,
                     constants=constants, seed=self.seed, indices=keys_from, batch_size=batch_size)
        out = self.outcome({k: backend.tensor(v, _dtype(self.state[k])) for k, v in zip(names, carried)})
        x_adv, found, rank = (backend.to_numpy(v) for v in out)
        return x_adv, found.astype(bool), rank.astype(np.float32)

    def _segment_kernel(self, model, logits: Logits, image_shape, extras: int):
        """Compiled: ``count`` steps from step ``first`` (from :meth:`start` when ``first`` is 0), then
        :meth:`finish` when ``last`` is 1. Arguments: weights, images, goals, extras, the state, keys,
        ``first, count, last, run`` and ``eps, step_size, low, high``."""
        key = ("steps", self.config(runtime=self.runtime), tuple(image_shape), extras)
        names = list(self.state)

        def build(proxy):
            def segment(weights, x, goal, *rest):
                extra, carried = rest[:extras], rest[extras:extras + len(names)]
                keys, first, count, last, run, eps, step_size, low, high = rest[extras + len(names):]
                ctx = Context(logits.bind(weights), x, goal, self.stream(backend.Rng(keys), run), eps, step_size,
                              low, high, run, tuple(extra), logits.num_classes)
                s = ops.cond(ops.equal(first, 0), lambda: self.start(ctx), lambda: dict(zip(names, carried)))
                s = ops.fori_loop(first, first + count, lambda i, s: self.step(ctx, i, s), s)
                s = ops.cond(ops.equal(last, 1), lambda: self.finish(ctx, s), lambda: s)
                return tuple(s[k] for k in names)

            shapes = {"image": backend.spec((None,) + tuple(image_shape)), "vector": backend.spec((None,)),
                      "flag": backend.spec((None,), "bool"), "logits": backend.spec((None, logits.num_classes)),
                      "classes": backend.spec((None,), "int32")}
            count, scalar = backend.spec((), "int32"), backend.spec(())
            signature = ([logits.state_signature(), shapes["image"], shapes["classes"]]
                         + [shapes["classes"]] * extras + [shapes[self.state[k]] for k in names]
                         + [backend.spec((None, 2), "int32")] + [count] * 4 + [scalar] * 4)
            return backend.compile(segment, signature)

        return cached(model, key, build)


def _dtype(kind: str) -> str:
    return {"flag": "bool", "classes": "int32"}.get(kind, "float32")


def blank_state(state: dict[str, str], n: int, image_shape, num_classes: int) -> list[np.ndarray]:
    """Arrays for a run's state before its first segment (which starts afresh and ignores them)."""
    shapes = {"image": (n,) + tuple(image_shape), "vector": (n,), "flag": (n,), "logits": (n, num_classes),
              "classes": (n,)}
    dtypes = {"flag": bool, "classes": np.int32}
    return [np.zeros(shapes[kind], dtypes.get(kind, np.float32)) for kind in state.values()]
