"""The worst-case ensemble of Croce & Hein 2020 ("AutoAttack"): APGD-CE, then APGD-T, then Square.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. Each attack runs only on the points that
every earlier attack left standing; the result is the per-image worst case
(:meth:`robust.attacks.AttackResult.worst_of`), and clean mistakes count as
broken from the start. The score-based Square attack closes the ensemble:
broken or hidden gradients cannot fool it, so a model that only masks its
gradients still loses its points there.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from robust.attacks.apgd import APGD, APGDT
from robust.attacks.base import Attack, AttackResult, check_number
from robust.attacks.norms import Norm
from robust.attacks.square import Square
from robust.errors import RobustError
from robust.gradients import check_gradients


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T and Square as one worst-case ensemble.

    Parameter-free: each part uses the reference's defaults. The record says
    how many points each part broke (``details["broken_by"]``). A model
    without a usable input gradient skips the gradient parts, says so in
    ``details["skipped"]``, and is still attacked by Square.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"``.
        steps: iterations of each APGD run (100 in the reference).
        n_target_classes: target classes of APGD-T (9 in the reference; at most classes - 1).
        queries: Square's query budget per image (5,000 in the reference).
        seed: seed of every part's random numbers (per image, see :class:`Attack`).

    Example:
        >>> result = AutoAttack(eps=0.3)(model, x_test, y_test)
        >>> result.adversarial_accuracy, result.details["broken_by"]
    """

    name = "auto"
    strength = 5
    needs_gradients = False  # the parts that need gradients check for themselves

    def __init__(self, *, eps: float = 0.3, norm: str | Norm = "inf", steps: int = 100, n_target_classes: int = 9,
                 queries: int = 5000, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        self.steps = check_number("steps", steps, integer=True, minimum=1)
        self.n_target_classes = check_number("n_target_classes", n_target_classes, integer=True, minimum=1)
        self.queries = check_number("queries", queries, integer=True, minimum=1)

    def parts(self) -> list[Attack]:
        """The ensemble's attacks, in the order they run."""
        shared = {"eps": self.eps, "norm": self.norm, "seed": self.seed}
        return [APGD(steps=self.steps, loss="ce", **shared),
                APGDT(steps=self.steps, n_target_classes=self.n_target_classes, **shared),
                Square(queries=self.queries, **shared)]

    def check_model(self, image_shape, num_classes: int) -> None:
        for part in self.parts():
            part.check_model(image_shape, num_classes)

    def __call__(self, model, x: np.ndarray, y: np.ndarray | None = None, *,
                 value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256,
                 target: int | np.ndarray | None = None, indices: np.ndarray | None = None,
                 mask: np.ndarray | None = None, progress: bool = True) -> AttackResult:
        """Run the parts in order, each on the points still standing; see :meth:`Attack.__call__`."""
        if target is not None:
            raise RobustError("AutoAttack is untargeted (APGD-T picks its own targets); remove the target.")
        started = time.perf_counter()
        gradients = self._gradients_usable(model, x, y, value_range, mask)
        result, broken_by, skipped = None, {}, []
        for part in self.parts():
            if part.needs_gradients and not gradients:
                skipped.append(part.name)
                continue
            standing = _standing(result, mask, len(x))
            found = part(model, x, y, value_range=value_range, batch_size=batch_size, indices=indices,
                         mask=standing, progress=progress)
            if result is None:  # clean mistakes count as broken before any attack
                standing &= found.clean_pred == found.labels
            broken_by[part.name] = int(np.sum(standing & found.success))
            result = found if result is None else result.worst_of(found)
        result = _relabel(result, self, broken_by, skipped)
        result.seconds = time.perf_counter() - started
        return result

    @staticmethod
    def _gradients_usable(model, x, y, value_range, mask) -> bool:
        pick = np.flatnonzero(np.ones(len(x), bool) if mask is None else np.asarray(mask))[:64]
        if len(pick) == 0:
            return True
        try:
            check_gradients(model, np.asarray(x)[pick], None if y is None else np.asarray(y)[pick],
                            value_range=value_range)
        except RobustError:
            return False
        return True


def _standing(result: AttackResult | None, mask, n: int) -> np.ndarray:
    """Points still to attack: inside the mask, correctly classified, not yet broken."""
    standing = np.ones(n, bool) if mask is None else np.array(mask, dtype=bool)
    if result is not None:
        standing &= (result.clean_pred == result.labels) & ~result.success
    return standing


def _relabel(result: AttackResult, attack: AutoAttack, broken_by: dict, skipped: list) -> AttackResult:
    result.attack, result.params = attack.name, attack.params
    result.details = {"broken_by": broken_by, "skipped": skipped}
    return result
