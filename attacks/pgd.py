"""Projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018).

"Towards deep learning models resistant to adversarial attacks", ICLR 2018.
"""

from __future__ import annotations

import copy

from keras import ops

import numpy as np

from robust import backend
from robust.attacks.compaction import driver_outputs, run_segments, standing_points
from robust.attacks.base import Attack, check_number
from robust.attacks.norms import Norm
from robust.errors import RobustError
from robust.gradients import Logits, cached, check_loss, objective, success


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018), L-inf or L2, with random start and restarts.

    From a random point in the eps-ball around each image, take ``steps``
    steps of size ``step_size`` along the norm's steepest-ascent direction
    of the loss (the sign of the gradient for L-inf, the unit gradient for
    L2), projecting back onto the ball and into the value range after each.
    Every iterate of every restart is a candidate; per image the worst case
    found is kept: misclassified (or at the target) first, otherwise the one
    with the highest loss. The whole loop runs in one compiled graph.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range (0.3 is Madry et al.'s MNIST setting).
        norm: ``"inf"`` or ``"2"``.
        steps: gradient steps per restart (at least 1; 40 in the paper for MNIST).
        step_size: size of each step; ``None`` means ``2.5 * eps / steps``.
        random_start: start each restart at a uniform random point of the ball instead of the image
            (L2: every restart but the first, which starts at the image; see :meth:`_for_restart`).
        restarts: independent runs per image (at least 1); the worst case over all is kept.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (best other logit minus the label's
            logit, Carlini & Wagner 2017; does not vanish when the softmax saturates).
        targeted: move towards the ``target`` class given at call time.
        seed: seed of the random starts.

    Example:
        >>> result = PGD(eps=0.1, steps=40)(model, x_test, y_test)
        >>> (result.adv_pred == y_test).mean()      # adversarial accuracy
    """

    name = "pgd"
    strength = 2
    _keep_every_iterate = True
    #: Steps between compactions: every this many steps the batch drops the points already broken
    #: (None: one compiled loop over all steps). Per-image keys make the broken set the same either way.
    _compact_every: int | None = 10

    def __init__(self, *, eps: float = 0.3, norm: str | Norm = "inf", steps: int = 40,
                 step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                 loss: str = "ce", targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, seed=seed)
        self.steps = check_number("steps", steps, integer=True, minimum=1)
        self.step_size = check_number("step_size", step_size, allow_none=True, positive=True)
        self.random_start = bool(random_start)
        self.restarts = check_number("restarts", restarts, integer=True, minimum=1)
        self.loss = check_loss(loss)
        if self.restarts > 1 and not self.random_start:
            raise RobustError(f"restarts={self.restarts} needs random_start=True: without a random start every "
                              "restart is the same run. Use restarts=1 or turn the random start on.")

    def _restarts(self) -> int:
        return self.restarts

    def _for_restart(self, restart: int) -> "PGD":
        """L2: the first run starts at x, later ones at random points of the ball.

        A uniform point of the L2 ball lies almost on its surface (the radius is ``eps * u^(1/d)``),
        and starting there measured weaker than starting at x (README, "Measured targets"), so an L2
        random start only ever adds runs to the one from x: never weaker than the plain attack.
        """
        if restart == 0 and self.random_start and self.norm.name == "2":
            first = copy.copy(self)
            first.random_start = False
            return first
        return self

    def _step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def _starts_at_x(self) -> bool:
        return not self.random_start

    def _start(self, x, eps, rng, low, high):
        """Where a run starts: a uniform random point of the ball (Madry et al.), or ``x`` itself."""
        return ops.clip(x + self.norm.random_start(x, eps, rng), low, high) if self.random_start else x

    def _objective(self, z, goal):
        """The per-example number each step ascends (a subclass may ascend another, e.g. TRADES's KL)."""
        return objective(z, goal, loss=self.loss, targeted=self.targeted)

    def _keep_worse(self, goal, best, candidate, value_, z):
        """Per image, the candidate if it succeeds where the best does not, or ties with a higher loss."""
        best_x, best_value, best_ok, best_z = best
        ok = success(z, goal, targeted=self.targeted)
        better = ops.logical_or(ops.logical_and(ok, ops.logical_not(best_ok)),
                                ops.logical_and(ops.equal(ok, best_ok), value_ > best_value))
        column = (-1,) + (1,) * (len(candidate.shape) - 1)
        return (ops.where(ops.reshape(better, column), candidate, best_x), ops.where(better, value_, best_value),
                ops.logical_or(best_ok, ok), ops.where(better[:, None], z, best_z))

    def _loop(self, logits: Logits, x, goal, start, best, first_z, steps, eps, step_size, low, high):
        """``steps`` PGD steps from ``start``: ``(last iterate, best so far, logits of the first iterate)``."""
        norm, keep_all = self.norm, self._keep_every_iterate

        def value(xt, labels):
            z = logits(xt)
            return self._objective(z, labels), z

        value_and_grad = backend.value_and_grad(value)

        def step(i, state):
            current, best, first_z = state
            value_, grad, z = value_and_grad(current, goal)
            if keep_all:
                best = self._keep_worse(goal, best, current, value_, z)
            first_z = ops.where(ops.equal(i, 0), z, first_z)  # with no random start: the logits of x itself
            moved = current + step_size * norm.normalize(grad)
            return ops.clip(x + norm.project(moved - x, eps), low, high), best, first_z

        return ops.fori_loop(0, steps, step, (start, best, first_z))

    def _fresh_best(self, logits: Logits, x):
        batch = ops.shape(x)[0]
        no_logits = ops.zeros((batch, logits.num_classes))
        return (x, ops.full((batch,), -float("inf")), ops.zeros((batch,), dtype="bool"), no_logits), no_logits

    def _perturb(self, logits: Logits, x, goal, rng, eps, step_size, low, high):
        best, no_logits = self._fresh_best(logits, x)
        start = self._start(x, eps, rng, low, high)
        final, best, first_z = self._loop(logits, x, goal, start, best, no_logits, self.steps, eps, step_size, low,
                                          high)
        clean_z = None if self.random_start else first_z
        if not self._keep_every_iterate:
            return final, clean_z, None
        z = logits(final)
        best = self._keep_worse(goal, best, final, self._objective(z, goal), z)
        return best[0], clean_z, best[3]


    # ---------------------------------------------------------- compaction

    def _drive(self, model, logits, x, y, target, keys_from, todo, restart, value_range, batch_size, progress):
        """The base driver, or segments of ``_compact_every`` steps each on the points still standing.

        A point broken in a segment keeps its best broken iterate and takes no more steps; the others
        continue from their last iterate, so their trajectory, and the set of broken points, is the
        one of the single compiled loop (:mod:`robust.attacks.compaction`). Broken points may return
        an earlier adversarial image.
        """
        every = self._compact_every
        if not every or self.steps <= every or not self._keep_every_iterate:
            return super()._drive(model, logits, x, y, target, keys_from, todo, restart, value_range, batch_size,
                                  progress)
        low, high = value_range
        points = standing_points(model, logits, x, y, target, todo, batch_size)
        n = len(points.x)
        carried = [points.x.copy(), points.x.copy(), np.full(n, -np.inf, np.float32), np.zeros(n, bool)]
        constants = [backend.tensor(restart, "int32")] + [backend.tensor(v) for v in
                                                          (self.eps, self._step_size(), low, high)]
        run_segments(self._segment_kernel(model, logits, points.x.shape[1:]), logits.state(),
                     [(points.x, "float32"), (points.goal, "int32")], carried, done=3, steps=self.steps,
                     every=every, constants=constants, seed=self.seed, indices=keys_from, batch_size=batch_size)
        return driver_outputs(model, logits, self.norm, points, carried[1], batch_size)

    def _segment_kernel(self, model, logits: Logits, image_shape):
        """Compiled: ``count`` PGD steps from ``current`` (from the random start when ``first`` is 0), best kept.

        The iterate after a segment's last step is evaluated by the next segment's first step, or
        here when ``last`` is 1: every iterate is evaluated once, as in the single loop.
        """
        # The step count and step size are arguments, so PGD-20, PGD-40 and PGD-100 on one model (a
        # study's attack and its more-steps check) share one kernel: one trace, one XLA compile per bucket.
        key = ("pgd-segment", self.config(runtime=("eps", "seed", "steps", "step_size", "restarts")),
               tuple(image_shape))

        def build(proxy):
            def run(state, x, goal, current, best_x, best_value, best_ok, keys, first, count, last, restart, eps,
                    step_size, low, high):
                bound = logits.bind(state)
                rng = backend.Rng(keys).fold(restart)
                start = ops.cond(ops.equal(first, 0), lambda: self._start(x, eps, rng, low, high), lambda: current)
                no_logits = ops.zeros((ops.shape(x)[0], logits.num_classes))
                best = (best_x, best_value, best_ok, no_logits)
                final, best, _ = self._loop(bound, x, goal, start, best, no_logits, count, eps, step_size, low,
                                            high)

                def evaluate():
                    z = bound(final)
                    return self._keep_worse(goal, best, final, self._objective(z, goal), z)[:3]

                best = ops.cond(ops.equal(last, 1), evaluate, lambda: best[:3])
                return (final,) + tuple(best)

            image = backend.spec((None,) + tuple(image_shape))
            count = backend.spec((), "int32")
            scalar = backend.spec(())
            signature = [logits.state_signature(), image, backend.spec((None,), "int32"), image, image,
                         backend.spec((None,)), backend.spec((None,), "bool"), backend.spec((None, 2), "int32"),
                         count, count, count, count, scalar, scalar, scalar, scalar]
            return backend.compile(run, signature)

        return cached(model, key, build)
