"""A plugin attack for robust: random sign noise, a gradient-free baseline.

An attack plugin is a subclass of ``robust.attacks.Attack`` registered in the
entry-point group ``robust.attacks``: hyper-parameters are keyword-only
constructor arguments (``eps``, ``norm``, ``targeted`` and ``seed`` handled
by the base), and the subclass writes ``perturb(ctx)`` with ``keras.ops``,
reading the batch from ``ctx`` (``robust.attacks.Context``: the model as
``ctx.logits``, the images, the goal classes, per-image random numbers,
eps and the value range) and returning the adversarial images. The base
does the rest: validation, labels, batching, restarts, the value range,
compiling, and the ``AttackResult``. An iterative attack subclasses
``robust.attacks.StepAttack`` instead and writes ``start``, ``step`` and
``outcome`` over named per-image state (see ``robust.attacks.steps``).
"""

from __future__ import annotations

from keras import ops

from robust.attacks import Attack
from robust.attacks.norms import Norm
from robust.errors import RobustError
from robust.gradients import objective


class RandomSignNoise(Attack):
    """Random noise on the eps sphere: the best of ``tries`` random draws (a gradient-free baseline).

    For L-inf each draw is a random corner of the eps ball, ``x + eps * s``
    with ``s`` in {-1, +1} per pixel; for L2 a random direction of length
    ``eps``. Per image the draw with the largest margin loss is kept (a
    positive margin is a misclassification). Gradient attacks such as PGD
    should do much better; when they do not, the gradient is masked
    (Athalye, Carlini, Wagner 2018, "Obfuscated gradients give a false sense
    of security").

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"``.
        tries: random draws per image.
        targeted: keep the draw closest to the target class given at call time.
        seed: seed of the draws.

    Example:
        >>> result = RandomSignNoise(eps=0.3, tries=20)(model, x_test, y_test)
    """

    name = "random_noise"

    def __init__(self, *, eps: float = 0.1, norm: str | Norm = "inf", tries: int = 10,
                 targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, seed=seed)
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise RobustError(f"tries must be a positive integer; received {tries!r}.")
        self.tries = tries

    def perturb(self, ctx):
        x, goal, rng = ctx.x, ctx.goal, ctx.rng
        best, best_value = x, objective(ctx.logits(x), goal, loss="margin", targeted=self.targeted)
        pick = lambda keep, a, b: ops.where(ops.reshape(keep, (-1,) + (1,) * (len(a.shape) - 1)), a, b)  # noqa: E731
        for _ in range(self.tries):
            # normalize() maps a Gaussian to a uniform random sign (L-inf) or direction (L2) of unit size.
            candidate = ops.clip(x + ctx.eps * self.norm.normalize(rng.normal(ops.shape(x))), ctx.low, ctx.high)
            value = objective(ctx.logits(candidate), goal, loss="margin", targeted=self.targeted)
            best = pick(value > best_value, candidate, best)
            best_value = ops.maximum(value, best_value)
        return best
