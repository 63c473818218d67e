"""The fast gradient sign method (Goodfellow, Shlens, Szegedy 2015) and the L2 fast gradient method.

"Explaining and harnessing adversarial examples", ICLR 2015.
"""

from __future__ import annotations

from keras import ops

from robust import backend
from robust.attacks.norms import Norm
from robust.attacks.pgd import PGD


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015); with ``norm="2"`` the fast gradient method.

    One step of size ``eps`` from the image along the norm's steepest-ascent
    direction of the loss: ``x + eps * sign(grad)`` for L-inf,
    ``x + eps * grad / ||grad||_2`` for L2, clipped to the value range. It is
    PGD with one step, no random start and no restarts, so the two share
    one implementation.

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
    # One step from the image: the result is that step, as in the paper (no search over iterates).
    _keep_every_iterate = False

    def __init__(self, *, eps: float = 0.1, norm: str | Norm = "inf", loss: str = "ce",
                 targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, steps=1, step_size=None, random_start=False, restarts=1,
                         loss=loss, targeted=targeted, seed=seed)

    def _step_size(self) -> float:
        return self.eps

    def _perturb(self, logits, x, goal, rng, eps, step_size, low, high):
        """One step of size ``eps`` from ``x``, inside the ball by construction: only the value range clips it.

        Written out rather than run as PGD's loop with one step: no projection, no search over
        iterates, the clean logits from the gradient pass (about 5% of FGSM's time on a small CNN).
        """
        def value(xt, labels):
            z = logits(xt)
            return self._objective(z, labels), z

        _, grad, clean = backend.value_and_grad(value)(x, goal)
        return ops.clip(x + eps * self.norm.normalize(grad), low, high), clean, None
