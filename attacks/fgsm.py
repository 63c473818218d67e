"""The fast gradient sign method (Goodfellow, Shlens, Szegedy 2015) and the L2 fast gradient method.

"Explaining and harnessing adversarial examples", ICLR 2015.
"""

from __future__ import annotations

from keras import ops

from robust import backend
from robust.attacks.base import Attack, Context
from robust.attacks.norms import Norm
from robust.gradients import check_loss, objective


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015); with ``norm="2"`` the fast gradient method.

    One step of size ``eps`` from the image along the norm's steepest-ascent
    direction of the loss: ``x + eps * sign(grad)`` for L-inf,
    ``x + eps * grad / ||grad||_2`` for L2, clipped to the value range: PGD's
    step, taken once from the image with no random start and no search over
    iterates.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: size of the step, in the units of the value range.
        norm: ``"inf"`` or ``"2"``.
        loss: ``"ce"`` (the paper's cross-entropy) or ``"margin"``.
        targeted: step towards the ``target`` class given at call time (``x - eps * sign(grad)``
            of the target's cross-entropy).
        seed: unused by the method (it is deterministic); kept so every attack takes one.

    Example:
        >>> result = FGSM(eps=0.1)(model, x_test, y_test)
        >>> result.success.mean()
    """

    name = "fgsm"
    strength = 1

    def __init__(self, *, eps: float = 0.1, norm: str | Norm = "inf", loss: str = "ce",
                 targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, seed=seed)
        self.loss = check_loss(loss)

    def perturb(self, ctx: Context):
        """One step of size ``eps`` from ``x``, inside the ball by construction: only the value range clips it."""
        def value(xt, goal):
            z = ctx.logits(xt)
            return objective(z, goal, loss=self.loss, targeted=self.targeted), z

        _, grad, _ = backend.value_and_grad(value)(ctx.x, ctx.goal)
        return ops.clip(ctx.x + ctx.eps * self.norm.normalize(grad), ctx.low, ctx.high)
