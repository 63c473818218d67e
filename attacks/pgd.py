"""Projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018).

"Towards deep learning models resistant to adversarial attacks", ICLR 2018.
"""

from __future__ import annotations

from keras import ops

from robust import backend
from robust.attacks.base import Context, check_number
from robust.attacks.norms import Norm
from robust.attacks.steps import StepAttack
from robust.errors import RobustError
from robust.gradients import check_loss, objective, success


class PGD(StepAttack):
    """Projected gradient descent (Madry et al. 2018), L-inf or L2, with random start and restarts.

    From a random point in the eps-ball around each image, take ``steps``
    steps of size ``step_size`` along the norm's steepest-ascent direction
    of the loss (the sign of the gradient for L-inf, the unit gradient for
    L2), projecting back onto the ball and into the value range after each.
    Every iterate of every restart is a candidate; per image the worst case
    found is kept: misclassified (or at the target) first, otherwise the one
    with the highest loss. Written on the step API (:mod:`robust.attacks.steps`).

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range (0.3 is Madry et al.'s MNIST setting).
        norm: ``"inf"`` or ``"2"``.
        steps: gradient steps per restart (at least 1; 40 in the paper for MNIST).
        step_size: size of each step; ``None`` means ``2.5 * eps / steps``.
        random_start: start each restart at a uniform random point of the ball instead of the image
            (L2: every restart but the first, which starts at the image; see :meth:`start`).
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
    state = {"x": "image", "best_x": "image", "best_value": "vector", "found": "flag"}
    # The step count and step size are arguments, so PGD-20, PGD-40 and PGD-100 on one model (a
    # study's attack and its more-steps check) share one kernel: one trace, one XLA compile per bucket.
    runtime = ("eps", "seed", "steps", "step_size", "restarts")
    #: Whether every iterate is a candidate (the worst one is kept) or only the last one is returned.
    keep_best: bool = True

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

    def runs(self, num_classes: int) -> int:
        return self.restarts

    def effective_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def _objective(self, z, goal):
        """The per-example number each step ascends (a subclass may ascend another, e.g. TRADES's KL)."""
        return objective(z, goal, loss=self.loss, targeted=self.targeted)

    def start(self, ctx: Context) -> dict:
        """A uniform random point of the ball (Madry et al.), or ``x`` itself.

        L2: the first run starts at x, later ones at random points of the ball. A uniform point of
        the L2 ball lies almost on its surface (the radius is ``eps * u^(1/d)``), and starting there
        measured weaker than starting at x (README, "Measured targets"), so an L2 random start only
        ever adds runs to the one from x: never weaker than the plain attack.
        """
        x = ctx.x
        point = x
        if self.random_start:
            point = ops.clip(x + self.norm.random_start(x, ctx.eps, ctx.rng), ctx.low, ctx.high)
            if self.norm.name == "2":
                point = ops.where(ops.equal(ctx.run, 0), x, point)
        n = ops.shape(x)[0]
        return {"x": point, "best_x": x, "best_value": ops.full((n,), -float("inf")),
                "found": ops.zeros((n,), dtype="bool")}

    def _keep(self, ctx: Context, s: dict, value_, z) -> dict:
        """Per image, the current iterate if it succeeds where the best does not, or ties with a higher loss."""
        ok = success(z, ctx.goal, targeted=self.targeted)
        better = ops.logical_or(ops.logical_and(ok, ops.logical_not(s["found"])),
                                ops.logical_and(ops.equal(ok, s["found"]), value_ > s["best_value"]))
        column = (-1,) + (1,) * (len(s["x"].shape) - 1)
        return {**s, "best_x": ops.where(ops.reshape(better, column), s["x"], s["best_x"]),
                "best_value": ops.where(better, value_, s["best_value"]), "found": ops.logical_or(s["found"], ok)}

    def step(self, ctx: Context, i, s: dict) -> dict:
        """Evaluate the iterate (kept if it is the worst so far), then move along the norm's steepest ascent."""
        def value(xt, goal):
            z = ctx.logits(xt)
            return self._objective(z, goal), z

        value_, grad, z = backend.value_and_grad(value)(s["x"], ctx.goal)
        if self.keep_best:
            s = self._keep(ctx, s, value_, z)
        moved = s["x"] + ctx.step_size * self.norm.normalize(grad)
        return {**s, "x": ops.clip(ctx.x + self.norm.project(moved - ctx.x, ctx.eps), ctx.low, ctx.high)}

    def finish(self, ctx: Context, s: dict) -> dict:
        """The last iterate is a candidate too (evaluated once, here)."""
        if not self.keep_best:
            return s
        z = ctx.logits(s["x"])
        return self._keep(ctx, s, self._objective(z, ctx.goal), z)

    def outcome(self, s: dict):
        if not self.keep_best:
            return s["x"], s["found"], s["best_value"]
        return s["best_x"], s["found"], s["best_value"]
