"""Auto-PGD: APGD with the cross-entropy or DLR loss, and APGD-T (Croce & Hein 2020).

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. The algorithmic details follow the
authors' reference implementation (``fra31/auto-attack``): a per-example step
size that starts at ``2 * eps`` and is halved at fixed checkpoints when the
loss stalls, momentum 0.75, a restart from the best point after each halving,
and any misclassified iterate (not the last one) as the result.

The pieces that decide the step size, :func:`checkpoints` and
:func:`halving`, are plain functions so they can be read and tested alone;
:func:`halving_decisions` replays them on a recorded loss trace.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.base import Context, check_number
from robust.attacks.norms import Norm
from robust.attacks.steps import StepAttack
from robust.errors import RobustError
from robust.gradients import check_classes, objective, success, targeted_dlr

#: Weight of the new step against the previous move (the paper's alpha); no momentum on the first step.
MOMENTUM = 0.75
#: Condition (a): halve when the loss rose in at most this fraction of the steps since the last checkpoint.
RHO = 0.75

APGD_LOSSES = ("ce", "dlr")


def checkpoints(steps: int) -> list[int]:
    """After how many steps APGD checks whether to halve its step size.

    The paper's fractions ``p0 = 0, p1 = 0.22, p(j+1) = p(j) + max(p(j) - p(j-1) - 0.03, 0.06)`` of
    ``steps``, computed in whole steps as the reference implementation does (first window
    ``int(0.22 * steps)``, each next one shorter by ``int(0.03 * steps)`` but at least
    ``int(0.06 * steps)``, every one at least 1), so rounding cannot move a checkpoint.

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    steps = int(steps)
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], window
    while at <= steps:
        out.append(at)
        window = max(window - shrink, shortest)
        at += window
    return out


def halving(rises, window, best_at_last, best_now, halved_last, rho: float = RHO):
    """Per example, whether APGD halves its step size at a checkpoint (written with ``keras.ops``).

    Args:
        rises: in how many of the steps since the last checkpoint the loss rose.
        window: how many steps that was.
        best_at_last: the best loss at the last checkpoint (at the start for the first one).
        best_now: the best loss now.
        halved_last: whether the step was halved at the last checkpoint (``True`` before the
            first one, so condition (b) never fires there).
        rho: the fraction of condition (a).

    Returns:
        Booleans: (a) ``rises <= rho * window``, or (b) not ``halved_last`` and no improvement
        of the best loss (``best_now <= best_at_last``).
    """
    oscillating = ops.less_equal(ops.cast(rises, "float32"), rho * ops.cast(window, "float32"))
    stalled = ops.logical_and(ops.logical_not(halved_last), ops.less_equal(best_now, best_at_last))
    return ops.logical_or(oscillating, stalled)


def halving_decisions(trace: Sequence[float], steps: int, rho: float = RHO) -> list[tuple[int, bool]]:
    """The ``(checkpoint, halved)`` decisions APGD takes on one example's loss trace.

    ``trace`` holds the loss at the start and after each of ``steps`` steps (``steps + 1``
    values), as observed, restarts included; the best loss is the running maximum.
    """
    trace = np.asarray(trace, dtype=np.float32)
    if trace.shape != (steps + 1,):
        raise RobustError(f"trace must hold the start loss and one loss per step, {steps + 1} values for "
                          f"steps={steps}; received shape {trace.shape}.")
    out, last, halved = [], 0, True
    for at in checkpoints(steps):
        rises = int(np.sum(trace[last + 1: at + 1] > trace[last:at]))
        decision = halving(rises, at - last, trace[: last + 1].max(), trace[: at + 1].max(), halved, rho)
        halved = bool(backend.to_numpy(decision))
        out.append((at, halved))
        last = at
    return out


def _windows(steps: int) -> np.ndarray:
    """``w[i]``: the length of the window ending with step ``i`` at a checkpoint, else 0."""
    w, last = np.zeros(steps + 1, np.float32), 0
    for at in checkpoints(steps):
        w[at], last = at - last, at
    return w


def _column(v, like):
    """A per-example vector shaped to broadcast over a batch like ``like``."""
    return ops.reshape(v, (-1,) + (1,) * (len(like.shape) - 1))


def _keep(mask, new, old):
    """Per example, ``new`` where ``mask`` is set, else ``old`` (images, logits and losses alike)."""
    return ops.where(_column(mask, new), new, old)


class APGD(StepAttack):
    """Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts per example.

    Each image starts at a random point on the surface of the eps-ball and
    ascends the loss with step size ``2 * eps``, momentum 0.75 (none on the
    first step), projecting onto the ball and the value range. At the
    checkpoints :func:`checkpoints` (22, 41, 57, 70, 80, 87, 93, 99 of 100
    steps) the step is halved where the loss rose in at most 75% of the
    steps since the last checkpoint, or where the step was not halved at the
    last checkpoint and the best loss has not improved since; a halved
    example restarts from its best point. Any misclassified iterate (at the
    target, if targeted) is returned; otherwise the highest-loss one. Images
    the model already gets wrong are returned unchanged. No step size to
    tune, and with the DLR loss no logit scale to hide behind.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range (0.3 for MNIST L-inf, 8/255 for CIFAR-10).
        norm: ``"inf"`` or ``"2"``.
        steps: gradient steps per run (default 100, as in AutoAttack).
        restarts: runs from independent random starts (default 1); the worst case is kept.
        loss: ``"ce"`` (cross-entropy, APGD-CE) or ``"dlr"`` (Difference of Logits Ratio, APGD-DLR;
            needs at least 3 classes).
        targeted: move towards the ``target`` class given at call time (minus the target's
            cross-entropy; needs ``loss="ce"``).
        seed: seed of the random starts.

    Example:
        >>> result = APGD(eps=0.3, loss="dlr")(model, x_test, y_test)
        >>> result.adversarial_accuracy
    """

    name = "apgd"
    strength = 3
    state = {"x": "image", "prev": "image", "grad": "image", "step": "vector", "found": "flag",
             "found_x": "image", "found_z": "logits", "best": "vector", "best_x": "image", "best_grad": "image",
             "best_z": "logits", "last": "vector", "rises": "vector", "best_at_check": "vector", "halved": "flag"}
    attacks_clean_mistakes = False  # the clean logits decide which images are already broken

    def __init__(self, *, eps: float = 0.3, norm: str | Norm = "inf", steps: int = 100, restarts: int = 1,
                 loss: str = "ce", targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, seed=seed)
        self.steps = check_number("steps", steps, integer=True, minimum=1)
        self.restarts = check_number("restarts", restarts, integer=True, minimum=1)
        if loss not in APGD_LOSSES:
            raise RobustError(f"APGD's loss must be 'ce' (cross-entropy, APGD-CE) or 'dlr' (Difference of Logits "
                              f"Ratio, APGD-DLR); received {loss!r}.")
        if targeted and loss == "dlr":
            raise RobustError("APGD(targeted=True) needs loss='ce': the DLR loss moves away from the label and "
                              "does not aim at a given target (APGD-T, --attack apgd-t, aims DLR at likely classes).")
        self.loss = loss

    def check_model(self, image_shape, num_classes: int) -> None:
        check_classes(self.loss, num_classes)

    def effective_step_size(self) -> float:
        return 2.0 * self.eps

    def runs(self, num_classes: int) -> int:
        """APGD repeats one objective ``restarts`` times; APGD-T changes the target class per run."""
        return self.restarts

    def stream(self, rng, run):
        return rng.fold(0).fold(run)  # the streams robust had before the step API: its numbers stay as they were

    def _value(self, z, goal, *extra):
        return objective(z, goal, loss=self.loss, targeted=self.targeted)

    def _value_and_grad(self, ctx: Context):
        def value(xt, goal_, *extra):
            z = ctx.logits(xt)
            return self._value(z, goal_, *extra), z

        return backend.value_and_grad(value)

    def start(self, ctx: Context) -> dict:
        """A random point on the surface of the ball, inside the value range, evaluated."""
        start = ops.clip(ctx.x + self.norm.random_surface(ctx.x, ctx.eps, ctx.rng), ctx.low, ctx.high)
        loss, grad, z = self._value_and_grad(ctx)(start, ctx.goal, *ctx.extra)
        ok = success(z, ctx.goal, targeted=self.targeted)
        batch = ops.shape(start)[0]
        return {"x": start, "prev": start, "grad": grad, "step": ops.ones((batch,)) * ctx.step_size, "found": ok,
                "found_x": start, "found_z": z, "best": loss, "best_x": start, "best_grad": grad, "best_z": z,
                "last": loss, "rises": ops.zeros((batch,)), "best_at_check": loss,
                "halved": ops.ones((batch,), dtype="bool")}

    def step(self, ctx: Context, i, s: dict) -> dict:
        """APGD's step number ``i``: momentum, checkpoints, halving, restarts from the best point."""
        norm, x, eps = self.norm, ctx.x, ctx.eps
        windows = backend.tensor(_windows(self.steps))

        def project(v):
            return ops.clip(x + norm.project(v - x, eps), ctx.low, ctx.high)

        a = ops.where(ops.equal(i, 0), 1.0, MOMENTUM)
        current = s["x"]
        plain = project(current + _column(s["step"], current) * norm.normalize(s["grad"]))
        new = project(current + a * (plain - current) + (1.0 - a) * (current - s["prev"]))
        loss, grad, z = self._value_and_grad(ctx)(new, ctx.goal, *ctx.extra)
        ok = success(z, ctx.goal, targeted=self.targeted)
        better = loss > s["best"]
        best = ops.where(better, loss, s["best"])
        rises = s["rises"] + ops.cast(loss > s["last"], "float32")
        window = ops.take(windows, i + 1)
        at_check = ops.broadcast_to(window > 0, ops.shape(ok))
        halve = ops.logical_and(at_check, halving(rises, window, s["best_at_check"], best, s["halved"]))
        best_x, best_grad = _keep(better, new, s["best_x"]), _keep(better, grad, s["best_grad"])
        return {"x": _keep(halve, best_x, new), "prev": current, "grad": _keep(halve, best_grad, grad),
                "step": ops.where(halve, s["step"] / 2.0, s["step"]),
                "found": ops.logical_or(s["found"], ok), "found_x": _keep(ok, new, s["found_x"]),
                "found_z": _keep(ok, z, s["found_z"]), "best": best, "best_x": best_x, "best_grad": best_grad,
                "best_z": _keep(better, z, s["best_z"]), "last": loss,
                "rises": ops.where(at_check, 0.0, rises),
                "best_at_check": ops.where(at_check, best, s["best_at_check"]),
                "halved": ops.where(at_check, halve, s["halved"])}

    def outcome(self, s: dict):
        """Any misclassified iterate, else the highest-loss one; ranked by that loss."""
        return _keep(s["found"], s["found_x"], s["best_x"]), s["found"], s["best"]


class APGDT(APGD):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, once per likely target class.

    An untargeted attack: for each of the ``n_target_classes`` classes with
    the highest clean logits after the top one (the 2nd, 3rd, ... most
    likely), one APGD run ascends the targeted DLR loss
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. An image counts as
    broken when any iterate of any run is misclassified; runs after the
    first keep what earlier runs found. Needs at least 4 classes; with
    fewer than ``n_target_classes + 1`` classes every other class is a target.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``).

    Args:
        eps: radius of the ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"``.
        steps: gradient steps per run (default 100).
        n_target_classes: how many target classes to try (default 9, as in AutoAttack).
        restarts: random starts per target class (default 1).
        seed: seed of the random starts.

    Example:
        >>> result = APGDT(eps=0.3)(model, x_test, y_test)
        >>> result.adversarial_accuracy
    """

    name = "apgd-t"
    strength = 4

    def __init__(self, *, eps: float = 0.3, norm: str | Norm = "inf", steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1, seed: int = 0):
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, loss="dlr", targeted=False, seed=seed)
        self.n_target_classes = check_number("n_target_classes", n_target_classes, integer=True, minimum=1)

    def check_model(self, image_shape, num_classes: int) -> None:
        check_classes("targeted dlr", num_classes)

    def runs(self, num_classes: int) -> int:
        return self.restarts * min(self.n_target_classes, num_classes - 1)

    def run_inputs(self, clean_logits: np.ndarray, run: int) -> tuple[np.ndarray]:
        """The run's target class per image: the ``1 + run // restarts``-th most likely clean class."""
        rank = 1 + run // self.restarts  # 0 is the top class; targets are the next ones
        return (np.argsort(-clean_logits, axis=1, kind="stable")[:, rank].astype(np.int32),)

    def _value(self, z, goal, target):
        return targeted_dlr(z, goal, target)
